/**
 * SIGTERM at any moment of start-up ends `devicelet run` cleanly: a rolling update or a
 * `helm upgrade` stops a replica whenever it likes. (A stop that landed while the node controller
 * waited for its first reconciles once left the process running for good.)
 */
import { afterAll, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";

const id = uniqueName("stop");
let devicelet: RunningDevicelet | undefined;

afterAll(async () => {
  await devicelet?.kill();
  await kubectl(["delete", "namespace", id, "--wait=false"]);
});

/** Start-up milestones in the order they are logged, each with how long after it to stop. */
const stopPoints: [RegExp, number][] = [
  [/^health endpoints on/, 0],
  [/^listed$/, 0], // the node informer's first list: the node controller's reconciles start
  [/^listed$/, 30],
  [/^listed$/, 80],
  [/^nodes are heartbeating/, 0],
  [/^pod controller started$/, 0],
  [/^devicelet is running$/, 500],
];

it("exits 0 on SIGTERM at every stage of start-up", async () => {
  await kubectl(["create", "namespace", id]);
  const d = (devicelet = await startDevicelet({
    id,
    provider: { devices: { count: 3, idPrefix: id }, appStartDelayMs: 100 },
    core: { lease: { renewIntervalSeconds: 2 }, nodeStatus: { maxIntervalSeconds: 3 } },
    expectNodes: 3,
  }));
  expect(await d.stop()).toBe(0);
  const outcomes: string[] = [];
  for (const [milestone, delayMs] of stopPoints) {
    const seen = d.logLines().length;
    await d.restart({ waitForRunning: false });
    await eventually(
      () =>
        expect(
          d
            .logLines()
            .slice(seen)
            .some((l) => milestone.test(String(l.msg))),
        ).toBe(true),
      { timeoutMs: 60_000, intervalMs: 10 },
    );
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    const code = await Promise.race([
      d.stop(),
      new Promise((resolve) => setTimeout(() => resolve("still running 30 s after SIGTERM"), 30_000)),
    ]);
    if (typeof code === "string") await d.kill();
    outcomes.push(`${String(milestone)} +${delayMs} ms: ${String(code)}`);
  }
  expect(outcomes).toEqual(stopPoints.map(([m, delayMs]) => `${String(m)} +${delayMs} ms: 0`));
}, 600_000);
