/**
 * The fuzz runner shared by `npm run bench -- fuzz` (many cases, any seed) and the unit test in
 * `npm test` (few cases, fixed seed). For each target it feeds `cases` inputs from fast-check with
 * the given seed and counts what happened: accepted, rejected by reason, crashes (the module threw,
 * or answered with a rejection that wraps an exception) and unhandled promise rejections seen
 * while the target ran (a process listener is installed for the run and removed after it).
 *
 * ```ts
 * const report = await runFuzz({ seed: 42, casesPerTarget: 2_000 });
 * report.targets.every((t) => t.crashes === 0 && t.unhandledRejections === 0);
 * ```
 */
import fc from "fast-check";
import { preview, type FuzzTarget } from "./target.ts";
import { configTarget } from "./targets-config.ts";
import { protocolTargets } from "./targets-protocol.ts";
import { workloadTargets } from "./targets-workload.ts";

export interface CrashSample {
  readonly input: string;
  readonly error: string;
}

export interface TargetReport {
  readonly name: string;
  readonly cases: number;
  readonly accepted: number;
  readonly rejected: Readonly<Record<string, number>>;
  readonly crashes: number;
  readonly unhandledRejections: number;
  /** The first few crashes, with the input that caused each. */
  readonly samples: readonly CrashSample[];
  readonly ms: number;
}

export interface FuzzReport {
  readonly seed: number;
  readonly targets: readonly TargetReport[];
}

/** Every target, freshly built (targets with state start empty). */
export const allTargets = (): FuzzTarget[] => [...protocolTargets(), ...workloadTargets(), configTarget()];

const MAX_SAMPLES = 5;

/** Lets pending microtasks and timers of zero delay run, so their rejections surface. */
const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 5));

export async function runFuzz(o: {
  readonly seed: number;
  /** Inputs per target: one number for all, or by target name. */
  readonly casesPerTarget: number | ((name: string) => number);
  /** Only targets whose name includes this. */
  readonly only?: string;
  readonly onTarget?: (report: TargetReport) => void;
  /** Targets to run instead of {@link allTargets} (the runner's own tests). */
  readonly targets?: readonly FuzzTarget[];
}): Promise<FuzzReport> {
  const reports: TargetReport[] = [];
  let unhandled = 0;
  const unhandledSamples: CrashSample[] = [];
  const onUnhandled = (reason: unknown) => {
    unhandled++;
    if (unhandledSamples.length < MAX_SAMPLES)
      unhandledSamples.push({
        input: "(async)",
        error: reason instanceof Error ? (reason.stack ?? reason.message) : String(reason),
      });
  };
  process.on("unhandledRejection", onUnhandled);
  try {
    const targets = o.targets ?? allTargets();
    for (const target of targets.filter((t) => o.only === undefined || t.name.includes(o.only))) {
      const started = performance.now();
      const rejected: Record<string, number> = {};
      const samples: CrashSample[] = [];
      let [cases, accepted, crashes] = [0, 0, 0];
      unhandled = 0;
      unhandledSamples.length = 0;
      const property = fc.property(target.input, (input: unknown) => {
        cases++;
        try {
          const verdict = target.run(input);
          if (verdict.accepted) accepted++;
          else if (verdict.reason === "") throw new Error("rejected without a reason");
          else rejected[verdict.reason] = (rejected[verdict.reason] ?? 0) + 1;
        } catch (err) {
          crashes++;
          if (samples.length < MAX_SAMPLES)
            samples.push({
              input: preview(input),
              error: err instanceof Error ? (err.stack ?? err.message) : String(err),
            });
        }
        return true;
      });
      const numRuns = typeof o.casesPerTarget === "number" ? o.casesPerTarget : o.casesPerTarget(target.name);
      fc.assert(property, { seed: o.seed, numRuns, endOnFailure: true });
      await settle();
      target.dispose?.();
      await settle();
      const report: TargetReport = {
        name: target.name,
        cases,
        accepted,
        rejected,
        crashes,
        unhandledRejections: unhandled,
        samples: [...samples, ...unhandledSamples],
        ms: Math.round(performance.now() - started),
      };
      reports.push(report);
      o.onTarget?.(report);
    }
  } finally {
    process.off("unhandledRejection", onUnhandled);
  }
  return { seed: o.seed, targets: reports };
}
