import { describe, expect, it } from "vitest";
import { workloadHash } from "../workload/translate.ts";
import { testContext } from "./context.ts";
import { appNames, workload } from "./workload.ts";

describe("the kit's workload builder", () => {
  const base = { name: "web", deviceId: "gw-1", image: "example/app:1" };

  it("hashes as the engine does: the uid does not count, the content does", () => {
    const a = workload({ ...base, uid: "u-1" });
    const b = workload({ ...base, uid: "u-2" });
    expect(a.hash).toBe(b.hash);
    expect(a.hash).toBe(workloadHash(a));
    const v2 = workload({ ...base, uid: "u-1", version: 2 });
    expect(v2.hash).not.toBe(a.hash);
    expect(v2.apps.map((app) => app.name)).toEqual(appNames(2));
    expect(workload({ ...base, labels: { tier: "edge" } }).hash).not.toBe(a.hash);
  });
});

describe("testContext", () => {
  it("keeps events and fatal errors, and shares a store when asked", async () => {
    const context = testContext();
    context.recordEvent({
      involved: { kind: "Device", deviceId: "gw-1" },
      type: "Normal",
      reason: "R",
      message: "m",
    });
    context.fail(new Error("boom"));
    expect(context.events).toHaveLength(1);
    expect(context.failures.map((e) => e.message)).toEqual(["boom"]);
    await context.store.update("k", () => "v");
    expect(await testContext({ store: context.store }).store.get("k")).toBe("v");
    expect(await testContext().store.get("k")).toBeUndefined();
  });
});
