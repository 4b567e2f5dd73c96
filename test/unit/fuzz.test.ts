/**
 * The fixed-seed fuzz run of `npm test`: every target of test/fuzz gets 2,000 generated and mutated
 * inputs (the config loader 200: YAML is slower). Nothing may crash, no promise rejection may go
 * unhandled, and every input is accepted or rejected with a reason. `npm run bench -- fuzz` runs
 * the same targets with 100,000 inputs and any seed.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { runFuzz } from "../fuzz/run.ts";
import { accepted, rejected, type FuzzTarget } from "../fuzz/target.ts";

const SEED = 20_260_101;

describe("fuzz (fixed seed)", () => {
  it(
    "no target crashes or leaves a rejection unhandled; every input gets a verdict",
    { timeout: 120_000 },
    async () => {
      const report = await runFuzz({
        seed: SEED,
        casesPerTarget: (name) => (name.startsWith("config.") ? 200 : 2_000),
      });
      expect(report.targets.map((t) => t.name)).toEqual(
        expect.arrayContaining([
          "codec.decodeFromDevice",
          "codec.decodeToDevice",
          "codec.decodeBridge",
          "mqtt.Inbound.handle",
          "workload.translatePod+checkSupported+toDesiredPod",
          "mqtt.workloadStatusFor",
          "pod.buildPodStatus",
          "config.parseConfig",
        ]),
      );
      for (const t of report.targets) {
        // Crash samples first: they say what broke.
        expect({ target: t.name, samples: t.samples }).toEqual({ target: t.name, samples: [] });
        expect(t.crashes).toBe(0);
        expect(t.unhandledRejections).toBe(0);
        const rejected = Object.values(t.rejected).reduce((a, b) => a + b, 0);
        expect(t.accepted + rejected).toBe(t.cases);
        expect(t.cases).toBeGreaterThanOrEqual(200);
      }
      // The mutations reach past the first checks: some inputs of every decoder are accepted.
      for (const t of report.targets.filter(
        (r) => r.name.startsWith("codec.") || r.name.startsWith("config."),
      ))
        expect(t.accepted).toBeGreaterThan(0);
    },
  );
});

describe("the fuzz runner", () => {
  it("counts a throw as a crash, with its input, and a promise rejection nobody handles", async () => {
    const fragile: FuzzTarget<number> = {
      name: "fragile",
      input: fc.integer({ min: 0, max: 99 }),
      run: (n) => {
        if (n % 10 === 3) return (undefined as unknown as { x: () => never }).x();
        if (n % 10 === 4) void Promise.reject(new Error(`lost ${n}`));
        return n % 2 === 0 ? accepted : rejected("odd");
      },
    };
    const report = await runFuzz({ seed: 1, casesPerTarget: 300, targets: [fragile] });
    const [t] = report.targets;
    expect(t?.crashes).toBeGreaterThan(0);
    expect(t?.unhandledRejections).toBeGreaterThan(0);
    expect(t?.samples[0]?.error).toMatch(/TypeError/);
    expect((t?.accepted ?? 0) + (t?.rejected.odd ?? 0) + (t?.crashes ?? 0)).toBe(300);
  });
});
