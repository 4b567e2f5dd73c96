/**
 * Twin documents: JSON merge patches where `null` deletes a key, and the limits IoT Hub enforces on
 * each section (tags, desired, reported): nesting depth 10 (the section object is level 1), key names
 * of at most 1 KB without `.`, `$` or spaces, string values of at most 4 KB, and a section size of
 * 32 KB (8 KB for tags), measured as its compact JSON in UTF-8 without `$` metadata.
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export const TWIN_LIMITS = {
  depth: 10,
  keyBytes: 1024,
  stringBytes: 4096,
  sectionBytes: 32 * 1024,
  tagsBytes: 8 * 1024,
} as const;

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Applies a merge patch to a copy of `target`: objects merge, `null` deletes, anything else replaces. */
export function mergePatch(target: JsonObject, patch: JsonObject): JsonObject {
  const out = new Map(Object.entries(target));
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) {
      out.delete(key);
    } else if (isObject(value)) {
      const current = out.get(key);
      out.set(key, mergePatch(isObject(current) ? current : {}, value));
    } else {
      out.set(key, value);
    }
  }
  return Object.fromEntries(out);
}

/** Why a section breaks a limit, or undefined when it keeps them all. */
export function sectionViolation(section: JsonObject, maxBytes: number): string | undefined {
  const walk = (value: Json, depth: number): string | undefined => {
    if (typeof value === "string" && Buffer.byteLength(value) > TWIN_LIMITS.stringBytes) {
      return `a string value is longer than ${TWIN_LIMITS.stringBytes} bytes`;
    }
    if (!isObject(value)) return undefined;
    if (depth > TWIN_LIMITS.depth) return `nesting is deeper than ${TWIN_LIMITS.depth} levels`;
    for (const [key, child] of Object.entries(value)) {
      if (Buffer.byteLength(key) > TWIN_LIMITS.keyBytes)
        return `a key is longer than ${TWIN_LIMITS.keyBytes} bytes`;
      if (/[.$ ]/.test(key)) return `key '${key}' contains '.', '$' or a space`;
      const why = walk(child, depth + 1);
      if (why !== undefined) return why;
    }
    return undefined;
  };
  const why = walk(section, 1);
  if (why !== undefined) return why;
  const bytes = Buffer.byteLength(JSON.stringify(section));
  return bytes > maxBytes ? `the section is ${bytes} bytes, over the ${maxBytes}-byte limit` : undefined;
}

/** A patch as sent, without the `$version`/`$metadata` keys a client may echo back. */
export function withoutMetadata(patch: JsonObject): JsonObject {
  return Object.fromEntries(Object.entries(patch).filter(([key]) => !key.startsWith("$")));
}
