/**
 * What a fuzz target is: a named module entry point, the inputs to feed it, and how to read its
 * answer as accepted, or rejected with a reason. A target throws when the module crashed: either
 * the module itself threw, or it answered with a rejection that only wraps an exception it caught
 * (the codec's "could not be checked", the translator's "cannot translate pod").
 */
import type fc from "fast-check";

export type Verdict = { readonly accepted: true } | { readonly accepted: false; readonly reason: string };

export const accepted: Verdict = { accepted: true };
export const rejected = (reason: string): Verdict => ({ accepted: false, reason });

export interface FuzzTarget<I = unknown> {
  readonly name: string;
  /** Inputs, generated and mutated; reproducible from fast-check's seed. */
  readonly input: fc.Arbitrary<I>;
  /** Feeds one input. Returns the verdict; throws (anything) when the module crashed. */
  run(input: I): Verdict;
  /** Releases timers and the like after the last input. */
  dispose?(): void;
}

/** A module answered, but its answer betrays an exception it caught: still a crash. */
export class HiddenCrash extends Error {
  override name = "HiddenCrash";
}

const printable: (value: unknown, replacer: (key: string, value: unknown) => unknown) => string | undefined =
  JSON.stringify;

/** Short printable form of an input for a crash report. */
export const preview = (input: unknown): string => {
  let text: string;
  try {
    text =
      input instanceof Uint8Array
        ? `bytes(${input.byteLength}) ${Buffer.from(input.subarray(0, 200)).toString("utf8")}`
        : (printable(input, (_k, v: unknown) => (v instanceof Uint8Array ? `bytes(${v.byteLength})` : v)) ??
          typeof input);
  } catch (err) {
    text = `<unprintable: ${(err as Error).message}>`;
  }
  return text.length > 400 ? `${text.slice(0, 400)}… (${text.length} chars)` : text;
};
