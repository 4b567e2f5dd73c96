import { describe, expect, it } from "vitest";
import type { DeviceInfo, DeviceSync } from "../provider/types.ts";
import { buildNodeStatus, inSyncLabel, nodeStatusChanged, type NodeStatusOptions } from "./build.ts";
import { writeTransportTaint } from "./status-writer.ts";

const t0 = new Date("2026-11-01T10:00:00.000Z");
const device: DeviceInfo = {
  id: "gw-1",
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  labels: {},
  capacity: { cpu: "1" },
  addresses: [],
  connected: true,
};
const GRACE = 30_000;

const statusAt = (now: Date, state: DeviceSync | undefined, previous?: NodeStatusOptions["previous"]) =>
  buildNodeStatus(device, {
    ready: true,
    readyMessage: "",
    now,
    kubeletPort: 10250,
    kubeletAddress: "192.0.2.10",
    version: "0.1.0",
    sync: { state, pendingGraceMs: GRACE },
    previous,
  });
const inSync = (s: ReturnType<typeof statusAt>) => s.conditions?.find((c) => c.type === "DeviceInSync");
const after = (ms: number) => new Date(t0.getTime() + ms);

describe("the DeviceInSync condition", () => {
  it("is Unknown before the device reported, True once it applied the desired generation", () => {
    expect(inSync(statusAt(t0, undefined))).toMatchObject({ status: "Unknown", reason: "NeverReported" });
    expect(inSyncLabel(statusAt(t0, undefined))).toBeUndefined();
    const ok = statusAt(t0, { desiredGeneration: 4, appliedGeneration: 4 });
    expect(inSync(ok)).toMatchObject({ status: "True", reason: "InSync" });
    expect(inSync(ok)?.message).toContain("generation 4");
    expect(inSyncLabel(ok)).toBe("true");
  });

  it("stays True while a change is on its way, then goes False ApplyPending since it fell behind", () => {
    const behind = { desiredGeneration: 5, appliedGeneration: 4, behindSince: t0 };
    const first = statusAt(
      after(GRACE - 1),
      behind,
      statusAt(t0, { desiredGeneration: 4, appliedGeneration: 4 }),
    );
    expect(inSync(first)).toMatchObject({ status: "True", reason: "InSync" });
    const late = statusAt(after(GRACE + 5_000), behind, first);
    expect(inSync(late)).toMatchObject({ status: "False", reason: "ApplyPending", lastTransitionTime: t0 });
    expect(inSync(late)?.message).toBe(
      "the device applied generation 4 of 5; behind since 2026-11-01T10:00:00.000Z",
    );
    expect(inSyncLabel(late)).toBe("false");
    // Still behind later: the transition time stays when it fell behind.
    expect(inSync(statusAt(after(600_000), behind, late))?.lastTransitionTime).toEqual(t0);
  });

  it("is False Rejected at once, with the device's reason", () => {
    const rejected: DeviceSync = {
      desiredGeneration: 7,
      appliedGeneration: 6,
      behindSince: t0,
      rejected: { generation: 7, reason: "InsufficientMemory", message: "64Mi free" },
    };
    const c = inSync(statusAt(after(1_000), rejected));
    expect(c).toMatchObject({ status: "False", reason: "Rejected", lastTransitionTime: t0 });
    expect(c?.message).toContain("rejected generation 7: InsufficientMemory: 64Mi free");
  });

  it("costs a status write when it changes status or reason, not when only its generations move", () => {
    const a = statusAt(t0, { desiredGeneration: 4, appliedGeneration: 4 });
    const b = statusAt(after(1_000), { desiredGeneration: 5, appliedGeneration: 5 }, a);
    expect(inSync(b)?.message).not.toBe(inSync(a)?.message);
    expect(nodeStatusChanged(a, b)).toBe(false);
    const c = statusAt(
      after(GRACE + 1_000),
      { desiredGeneration: 6, appliedGeneration: 5, behindSince: t0 },
      b,
    );
    expect(nodeStatusChanged(b, c)).toBe(true);
  });

  it("is absent when the provider reports no sync", () => {
    const s = buildNodeStatus(device, {
      ready: true,
      readyMessage: "",
      now: t0,
      kubeletPort: 10250,
      kubeletAddress: "",
      version: "0.1.0",
    });
    expect(inSync(s)).toBeUndefined();
  });
});

describe("the devicelet.dev/in-sync label", () => {
  const patches: object[] = [];
  const kube = {
    patchNode: (_name: string, patch: object) => {
      patches.push(patch);
      return Promise.resolve({});
    },
  };
  const node = (labels: Record<string, string>) => ({ metadata: { labels, resourceVersion: "7" }, spec: {} });

  it("is patched with the taint, only when it differs, and removed for Unknown", async () => {
    patches.length = 0;
    const connected = { connected: true, message: "" };
    await writeTransportTaint({
      kube,
      name: "n",
      node: node({}),
      transport: connected,
      inSync: { value: "false" },
    });
    await writeTransportTaint({
      kube,
      name: "n",
      node: node({ "devicelet.dev/in-sync": "false" }),
      transport: connected,
      inSync: { value: "false" },
    });
    await writeTransportTaint({
      kube,
      name: "n",
      node: node({ "devicelet.dev/in-sync": "true" }),
      transport: connected,
      inSync: { value: undefined },
    });
    await writeTransportTaint({
      kube,
      name: "n",
      node: node({ "devicelet.dev/in-sync": "true" }),
      transport: connected,
    });
    expect(patches).toEqual([
      { metadata: { labels: { "devicelet.dev/in-sync": "false" } } },
      { metadata: { labels: { "devicelet.dev/in-sync": null } } },
    ]);
  });
});
