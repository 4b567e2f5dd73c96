/**
 * The commands a simulated container answers to `kubectl exec` (ExecCapability), so the kubelet
 * API's streams, exit codes and refusals can be tested end to end without a real device:
 *
 * | command               | does                                                            |
 * | --------------------- | --------------------------------------------------------------- |
 * | `echo [-n] ARGS…`     | ARGS joined by spaces on stdout                                 |
 * | `cat [FILE…]`         | stdin to stdout until stdin ends; or the app's mounted files    |
 * | `env`                 | the container's environment, `NAME=value` per line              |
 * | `hostname`            | the pod's name                                                  |
 * | `true` / `false`      | exit 0 / exit 1                                                 |
 * | `printf FORMAT ARGS…` | `%s %d %%` and `\n \t \\` escapes                               |
 * | `sleep SECONDS`       | waits on the provider's clock; ended early when the client goes |
 * | `sh -c SCRIPT`        | its commands, joined by `;` `&&` `||`; `exit N` exits with N    |
 * | `sh` (no `-c`)        | reads command lines from stdin; with a terminal, prompts `$ `   |
 * | `stty size`           | the terminal's `rows columns` (with a terminal only)            |
 * | anything else         | `<cmd>: command not found` on stderr, exit 127                  |
 *
 * Paths are ignored (`/bin/echo` is `echo`). With a terminal (`tty`), stderr goes to stdout, every
 * `\n` written becomes `\r\n`, and input is echoed as it is read, as a terminal's line discipline
 * does.
 */
import type { Clock } from "../../src/base/clock.ts";
import type { AppSpec, ExecIO, TerminalSize } from "../../src/provider/types.ts";

export interface ExecContext {
  readonly app: AppSpec;
  /** What `hostname` prints: the pod's name, as the kubelet sets a container's hostname. */
  readonly hostname: string;
  readonly io: ExecIO;
  readonly clock: Clock;
}

/** Exit code of a command ended because the client went away (as after SIGINT). */
const ABORTED = 130;

/**
 * Runs `command` and resolves with its exit code once all output was written. Never rejects for
 * what the command does (a failing command is an exit code); ends promptly when `io.signal` aborts.
 */
export async function runSimulatedCommand(command: readonly string[], context: ExecContext): Promise<number> {
  const session = new Session(context);
  try {
    return await session.run(command);
  } finally {
    session.close();
  }
}

const encoder = new TextEncoder();

class Session {
  readonly #context: ExecContext;
  readonly #stdin: LineReader | undefined;
  #size: TerminalSize | undefined;
  readonly #stopResize = new AbortController();

  constructor(context: ExecContext) {
    this.#context = context;
    const { io } = context;
    // A terminal echoes what is typed as the command reads it, as a line discipline in cooked mode.
    const echo = io.tty ? (text: string) => this.#write("out", text.replace(/\r\n?/g, "\n")) : undefined;
    this.#stdin = io.stdin && new LineReader(io.stdin, io.signal, echo);
    if (io.tty && io.resize) void this.#watchResize(io.resize);
  }

  close(): void {
    this.#stopResize.abort();
  }

  get #signal(): AbortSignal {
    return this.#context.io.signal;
  }

  #write(stream: "out" | "err", text: string): void {
    const { io } = this.#context;
    const sink = io.tty ? io.stdout : stream === "out" ? io.stdout : io.stderr;
    if (!sink || text === "" || this.#signal.aborted) return;
    sink(encoder.encode(io.tty ? text.replace(/\r?\n/g, "\r\n") : text));
  }

  async run(argv: readonly string[]): Promise<number> {
    const [first, ...args] = argv;
    if (first === undefined) return 0;
    const name = first.slice(first.lastIndexOf("/") + 1);
    switch (name) {
      case "echo": {
        const noNewline = args[0] === "-n";
        const words = noNewline ? args.slice(1) : args;
        this.#write("out", words.join(" ") + (noNewline ? "" : "\n"));
        return 0;
      }
      case "cat":
        return args.length === 0 ? this.#catStdin() : this.#catFiles(args);
      case "env":
        this.#write(
          "out",
          Object.entries(this.#context.app.env)
            .map(([k, v]) => `${k}=${v}\n`)
            .join(""),
        );
        return 0;
      case "hostname":
        this.#write("out", `${this.#context.hostname}\n`);
        return 0;
      case "true":
        return 0;
      case "false":
        return 1;
      case "printf":
        if (args[0] === undefined) {
          this.#write("err", "printf: usage: printf format [arguments]\n");
          return 2;
        }
        this.#write("out", printf(args[0], args.slice(1)));
        return 0;
      case "sleep":
        return this.#sleep(args[0]);
      case "exit":
        return exitStatus(args[0]);
      case "stty":
        return this.#stty(args);
      case "sh":
      case "bash":
      case "ash":
        if (args[0] === "-c") {
          if (args[1] === undefined) {
            this.#write("err", `${name}: -c: option requires an argument\n`);
            return 2;
          }
          return (await this.#runLine(args[1])).status;
        }
        return this.#shell();
      default:
        this.#write("err", `${first}: command not found\n`);
        return 127;
    }
  }

  async #catStdin(): Promise<number> {
    if (!this.#stdin) return 0;
    for (let chunk = await this.#stdin.chunk(); chunk !== undefined; chunk = await this.#stdin.chunk())
      this.#write("out", chunk);
    return this.#signal.aborted ? ABORTED : 0;
  }

  #catFiles(paths: readonly string[]): number {
    let status = 0;
    for (const path of paths) {
      const file = this.#context.app.files.find((f) => f.path === path);
      if (!file) {
        this.#write("err", `cat: ${path}: No such file or directory\n`);
        status = 1;
        continue;
      }
      this.#write(
        "out",
        file.encoding === "base64" ? Buffer.from(file.content, "base64").toString("utf8") : file.content,
      );
    }
    return status;
  }

  async #sleep(arg: string | undefined): Promise<number> {
    const seconds = Number(arg);
    if (arg === undefined || !Number.isFinite(seconds) || seconds < 0) {
      this.#write("err", `sleep: invalid time interval '${arg ?? ""}'\n`);
      return 1;
    }
    const { clock } = this.#context;
    const ended = await new Promise<boolean>((resolve) => {
      const onAbort = () => {
        clock.clearTimeout(timer);
        resolve(false);
      };
      const timer = clock.setTimeout(() => {
        this.#signal.removeEventListener("abort", onAbort);
        resolve(true);
      }, seconds * 1000);
      if (this.#signal.aborted) onAbort();
      else this.#signal.addEventListener("abort", onAbort, { once: true });
    });
    return ended ? 0 : ABORTED;
  }

  #stty(args: readonly string[]): number {
    if (!this.#context.io.tty) {
      this.#write("err", "stty: 'standard input': Inappropriate ioctl for device\n");
      return 1;
    }
    if (args[0] === "size") {
      const size = this.#size ?? { width: 80, height: 24 };
      this.#write("out", `${size.height} ${size.width}\n`);
    }
    return 0;
  }

  /** A shell reading command lines from stdin; with a terminal it prompts. */
  async #shell(): Promise<number> {
    const tty = this.#context.io.tty;
    let status = 0;
    if (tty) this.#write("out", "$ ");
    for (let line = await this.#stdin?.line(); line !== undefined; line = await this.#stdin?.line()) {
      const outcome = await this.#runLine(line);
      if (outcome.exited) return outcome.status;
      status = outcome.status;
      if (this.#signal.aborted) return ABORTED;
      if (tty) this.#write("out", "$ ");
    }
    return this.#signal.aborted ? ABORTED : status;
  }

  /** One command line: commands joined by `;`, `&&` and `||`; `exit` ends the shell. */
  async #runLine(line: string): Promise<{ status: number; exited: boolean }> {
    let status = 0;
    for (const { words, after } of parseCommandLine(line)) {
      if ((after === "&&" && status !== 0) || (after === "||" && status === 0)) continue;
      if (words[0] === "exit") return { status: exitStatus(words[1]), exited: true };
      status = await this.run(words);
      if (this.#signal.aborted) break;
    }
    return { status, exited: false };
  }

  async #watchResize(resize: AsyncIterable<TerminalSize>): Promise<void> {
    const stop = AbortSignal.any([this.#signal, this.#stopResize.signal]);
    try {
      for await (const size of untilAborted(resize, stop)) this.#size = size;
    } catch {
      // The client's resize stream failed: the size stays as it was.
    }
  }
}

/** `exit N` status: N modulo 256 as a shell does; not a number → 2. */
const exitStatus = (arg: string | undefined): number => {
  if (arg === undefined) return 0;
  const n = Number(arg);
  return Number.isInteger(n) ? ((n % 256) + 256) % 256 : 2;
};

/**
 * The commands of a shell command line: words split on whitespace, with '…' and "…" quoting (no
 * expansion), joined by `;`, `&&` or `||` (`after`: the operator before the command).
 */
export function parseCommandLine(line: string): { words: string[]; after: ";" | "&&" | "||" }[] {
  const commands: { words: string[]; after: ";" | "&&" | "||" }[] = [];
  let command: { words: string[]; after: ";" | "&&" | "||" } = { words: [], after: ";" };
  const re = /'([^']*)'|"((?:[^"\\]|\\.)*)"|(;|&&|\|\|)|([^\s'";&|]+|[&|])/g;
  let word: string | undefined;
  let end = -1;
  const endWord = () => {
    if (word !== undefined) command.words.push(word);
    word = undefined;
  };
  for (let m = re.exec(line); m !== null; m = re.exec(line)) {
    const operator = m[3] as ";" | "&&" | "||" | undefined;
    if (operator !== undefined) {
      endWord();
      if (command.words.length > 0) commands.push(command);
      command = { words: [], after: operator };
    } else {
      const part = m[1] ?? m[2]?.replace(/\\(.)/g, "$1") ?? m[4] ?? "";
      if (m.index !== end) endWord();
      word = (word ?? "") + part;
    }
    end = m.index + m[0].length;
  }
  endWord();
  if (command.words.length > 0) commands.push(command);
  return commands;
}

/** The shell's printf for `%s`, `%d`, `%%` and the `\n`, `\t`, `\\` escapes. */
export function printf(format: string, args: readonly string[]): string {
  let i = 0;
  const next = () => args[i++] ?? "";
  return format.replace(/%([sd%])|\\([nt\\])/g, (_, conversion?: string, escape?: string) => {
    if (escape !== undefined) return escape === "n" ? "\n" : escape === "t" ? "\t" : "\\";
    if (conversion === "%") return "%";
    if (conversion === "d") return String(Math.trunc(Number(next())) || 0);
    return next();
  });
}

/** Ends iterating `source` as soon as `signal` aborts, even while a `next()` is pending. */
export async function* untilAborted<T>(source: AsyncIterable<T>, signal: AbortSignal): AsyncGenerator<T> {
  const iterator = source[Symbol.asyncIterator]();
  const aborted = new Promise<"aborted">((resolve) => {
    if (signal.aborted) resolve("aborted");
    else signal.addEventListener("abort", () => resolve("aborted"), { once: true });
  });
  try {
    for (;;) {
      const next = await Promise.race([iterator.next(), aborted]);
      if (next === "aborted" || next.done === true) return;
      yield next.value;
    }
  } finally {
    // Not awaited: a source stuck in its own `next()` would hold us too.
    void Promise.resolve(iterator.return?.()).catch(() => undefined);
  }
}

/** The client's stdin as text chunks or lines, ending when stdin ends or the client goes. */
class LineReader {
  readonly #chunks: AsyncIterator<Uint8Array>;
  readonly #decoder = new TextDecoder();
  #buffer = "";
  #done = false;

  readonly #echo: ((text: string) => void) | undefined;

  constructor(source: AsyncIterable<Uint8Array>, signal: AbortSignal, echo?: (text: string) => void) {
    this.#chunks = untilAborted(source, signal);
    this.#echo = echo;
  }

  /** The next piece of input as it came (what is buffered first), or undefined at the end. */
  async chunk(): Promise<string | undefined> {
    if (this.#buffer !== "") {
      const text = this.#buffer;
      this.#buffer = "";
      return text;
    }
    return this.#read();
  }

  /** The next line without its end (`\n`, `\r\n` or a terminal's `\r`), or undefined at the end. */
  async line(): Promise<string | undefined> {
    for (;;) {
      const end = this.#buffer.search(/\r\n|\r|\n/);
      if (end !== -1) {
        const line = this.#buffer.slice(0, end);
        const width = this.#buffer.startsWith("\r\n", end) ? 2 : 1;
        this.#buffer = this.#buffer.slice(end + width);
        return line;
      }
      const more = await this.#read();
      if (more === undefined) {
        const rest = this.#buffer;
        this.#buffer = "";
        return rest === "" ? undefined : rest;
      }
      this.#buffer += more;
    }
  }

  async #read(): Promise<string | undefined> {
    if (this.#done) return undefined;
    const next = await this.#chunks.next();
    if (next.done === true) {
      this.#done = true;
      const tail = this.#decoder.decode();
      return tail === "" ? undefined : tail;
    }
    const text = this.#decoder.decode(next.value, { stream: true });
    this.#echo?.(text);
    return text;
  }
}
