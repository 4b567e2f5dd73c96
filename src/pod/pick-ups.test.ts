/**
 * NodePickUps (pick-ups.ts): names served one at a time are listed one at a time; names that come
 * while a list runs wait for it and go together, as lists of their own when few, as one list of
 * every bound pod when many.
 */
import { describe, expect, it } from "vitest";
import { NodePickUps } from "./pick-ups.ts";
import type { PodSelectors } from "./shared-pods.ts";

/** A pickUp whose lists finish when the test says. */
function lists() {
  const running: { selectors: PodSelectors; finish: () => void }[] = [];
  const started: string[] = [];
  const pickUp = (selectors: PodSelectors) =>
    new Promise<void>((resolve) => {
      started.push(selectors.fieldSelector ?? "all");
      running.push({ selectors, finish: resolve });
    });
  const finishAll = async () => {
    for (const r of running.splice(0)) r.finish();
    await new Promise((r) => setImmediate(r));
  };
  return { pickUp, started, running, finishAll };
}

describe("NodePickUps", () => {
  it("lists a name alone at once, and the names that came meanwhile together after it", async () => {
    const l = lists();
    const pickUps = new NodePickUps({ pickUp: l.pickUp, perNodeMax: 3 });
    pickUps.add("n-1");
    expect(l.started).toEqual(["spec.nodeName=n-1"]);
    pickUps.add("n-2");
    pickUps.add("n-3");
    pickUps.add("n-2"); // twice before its list: listed once
    expect(l.started).toHaveLength(1); // waiting for the running list
    await l.finishAll();
    expect(l.started).toEqual(["spec.nodeName=n-1", "spec.nodeName=n-2", "spec.nodeName=n-3"]);
    expect(l.running).toHaveLength(2); // the two at once

    for (let i = 4; i <= 10; i++) pickUps.add(`n-${i}`);
    await l.finishAll();
    expect(l.started.slice(3)).toEqual(["all"]); // seven names: one list of every bound pod
    let idle = false;
    void pickUps.idle().then(() => (idle = true));
    await new Promise((r) => setImmediate(r));
    expect(idle).toBe(false);
    await l.finishAll();
    expect(idle).toBe(true);
    expect(l.started).toHaveLength(4);

    pickUps.add("n-11"); // nothing running: at once again
    expect(l.started.at(-1)).toBe("spec.nodeName=n-11");
    await l.finishAll();
  });
});
