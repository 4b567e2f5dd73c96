/**
 * `$(VAR)` expansion exactly as the kubelet does it for env values, command, args and
 * `subPathExpr` (k8s.io/kubernetes third_party/forked/golang/expansion):
 *
 * - `$(NAME)` becomes the value of NAME when `lookup` knows it, and stays `$(NAME)` otherwise;
 * - `$$` becomes a literal `$`, so `$$(NAME)` gives `$(NAME)` unexpanded;
 * - a `$` followed by anything else, or an unterminated `$(`, is kept as written.
 */
export function expandVars(input: string, lookup: (name: string) => string | undefined): string {
  let out = "";
  let checkpoint = 0;
  for (let cursor = 0; cursor < input.length; cursor++) {
    if (input[cursor] !== "$" || cursor + 1 >= input.length) continue;
    out += input.slice(checkpoint, cursor);
    const next = input[cursor + 1];
    let advance = 1;
    if (next === "$") {
      out += "$";
    } else if (next === "(") {
      const close = input.indexOf(")", cursor + 2);
      if (close === -1) {
        out += "$(";
      } else {
        const name = input.slice(cursor + 2, close);
        out += lookup(name) ?? `$(${name})`;
        advance = close - cursor;
      }
    } else {
      out += `$${next ?? ""}`;
    }
    cursor += advance;
    checkpoint = cursor + 1;
  }
  return out + input.slice(checkpoint);
}

/** The names `$(NAME)` references in `input` would look up (escapes honoured). */
export function referencedVars(input: string): string[] {
  const names: string[] = [];
  expandVars(input, (name) => {
    names.push(name);
    return undefined;
  });
  return names;
}
