/**
 * `npm run bench -- fuzz [--seed N] [--cases N] [--only NAME]`: the fuzz targets of test/fuzz
 * (device-facing decoders, the MQTT inbound handler, pod translation, the status mappers, config
 * loading) fed at least 100,000 generated and mutated inputs in total. Prints per target the cases,
 * how many were accepted, rejected by reason, crashes and unhandled rejections, and the time; shows
 * the first crashing inputs. Exits non-zero when anything crashed or a promise rejection went
 * unhandled. The seed defaults to the time, and is printed so a failing run can be replayed.
 */
import { parseArgs } from "node:util";
import { allTargets, runFuzz, type TargetReport } from "../test/fuzz/run.ts";

/** Cases in all, at the least; config loading (YAML, milliseconds each) gets a fixed share. */
const TOTAL_CASES = 100_000;
const CONFIG_CASES = 4_000;

const line = (t: TargetReport) => {
  const reasons = Object.entries(t.rejected)
    .sort((a, b) => b[1] - a[1])
    .map(([reason, n]) => `${reason} ${n}`)
    .join(", ");
  return [
    t.name.padEnd(52),
    String(t.cases).padStart(7),
    String(t.accepted).padStart(9),
    String(t.cases - t.accepted - t.crashes).padStart(9),
    String(t.crashes).padStart(8),
    String(t.unhandledRejections).padStart(10),
    `${(t.ms / 1000).toFixed(1)}s`.padStart(8),
    `  ${reasons}`,
  ].join("");
};

export async function benchFuzz(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: { seed: { type: "string" }, cases: { type: "string" }, only: { type: "string" } },
  });
  const seed = values.seed === undefined ? Date.now() % 2 ** 31 : Number(values.seed);
  const cases = values.cases === undefined ? undefined : Number(values.cases);
  console.log(`fuzz: seed ${seed} (replay with --seed ${seed})`);
  console.log(
    `${"target".padEnd(52)}${"cases".padStart(7)}${"accepted".padStart(9)}${"rejected".padStart(9)}${"crashes".padStart(8)}${"unhandled".padStart(10)}${"time".padStart(8)}  rejected by reason`,
  );
  const others = allTargets().filter((t) => !t.name.startsWith("config.")).length;
  const perTarget = Math.ceil((TOTAL_CASES - CONFIG_CASES) / others);
  const started = performance.now();
  const report = await runFuzz({
    seed,
    casesPerTarget: (name) => cases ?? (name.startsWith("config.") ? CONFIG_CASES : perTarget),
    ...(values.only === undefined ? {} : { only: values.only }),
    onTarget: (t) => console.log(line(t)),
  });
  const total = report.targets.reduce((n, t) => n + t.cases, 0);
  const crashes = report.targets.reduce((n, t) => n + t.crashes, 0);
  const unhandled = report.targets.reduce((n, t) => n + t.unhandledRejections, 0);
  console.log(
    `total: ${total} cases, ${crashes} crashes, ${unhandled} unhandled rejections, ${((performance.now() - started) / 1000).toFixed(1)}s`,
  );
  for (const t of report.targets)
    for (const s of t.samples) console.log(`\n${t.name} crashed on ${s.input}\n${s.error}`);
  if (crashes > 0 || unhandled > 0) process.exitCode = 1;
}
