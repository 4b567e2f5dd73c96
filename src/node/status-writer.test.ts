import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import type { Node, NodeStatus } from "../kube/index.ts";
import { testNodeConfig } from "../../test/support/node-config.ts";
import { newEntry } from "./controller-types.ts";
import { writeNodeStatus } from "./status-writer.ts";
import type { DeviceInfo } from "../provider/types.ts";

/** Status is due every 60 s: the writes below, 20 s apart in all, are for other reasons. */
const config = testNodeConfig;

/** An API client that keeps every node status patched and answers with the node as patched. */
function recordingKube() {
  const written: NodeStatus[] = [];
  const kube = {
    patchNodeStatus: (name: string, status: NodeStatus) => {
      written.push(status);
      return Promise.resolve({ metadata: { name }, status } as Node);
    },
  };
  return { kube, written };
}

describe("writeNodeStatus", () => {
  it("writes again at once when the node lifecycle controller marked a condition Unknown, not when next due", async () => {
    const clock = new FakeClock(Date.parse("2026-12-04T00:00:00Z"));
    const { kube, written } = recordingKube();
    const entry = newEntry({ name: "gw-1", device: undefined, problems: [], ownership: "owned" });
    const write = (node: Node) =>
      writeNodeStatus({ kube, config, version: "test", transport: undefined, entry, node, clock });

    const first = await write({ metadata: { name: "gw-1" }, status: {} });
    expect(written).toHaveLength(1);
    const ready = first?.status?.conditions?.find((c) => c.type === "Ready");
    expect(ready?.status).toBe("True");

    // The server's copy as devicelet wrote it, or one not caught up yet: nothing to write.
    clock.advance(10_000);
    expect(await write({ metadata: { name: "gw-1" }, status: first?.status ?? {} })).toBeUndefined();
    expect(await write({ metadata: { name: "gw-1" }, status: {} })).toBeUndefined();
    expect(written).toHaveLength(1);

    // The controller judged the Lease stale during an outage and marked the node Unknown.
    clock.advance(10_000);
    const unknown: Node = {
      metadata: { name: "gw-1" },
      status: {
        conditions: (first?.status?.conditions ?? []).map((c) =>
          c.type === "Ready"
            ? {
                ...c,
                status: "Unknown",
                reason: "NodeStatusUnknown",
                message: "Kubelet stopped posting node status.",
              }
            : c,
        ),
      },
    };
    await write(unknown);
    expect(written).toHaveLength(2);
    expect(written[1]?.conditions?.find((c) => c.type === "Ready")?.status).toBe("True");
  });

  it("writes a device's status once, and again only when something in it changed or it is due", async () => {
    const clock = new FakeClock(Date.parse("2026-12-04T00:00:00.400Z"));
    const { kube, written } = recordingKube();
    const device: DeviceInfo = {
      id: "gw-2",
      deviceClass: "gateway",
      os: "linux",
      arch: "arm64",
      labels: {},
      capacity: { cpu: "4", memory: "1Gi" },
      addresses: [{ type: "InternalIP", address: "10.0.0.2" }],
      connected: true,
      lastSeen: new Date("2026-12-04T00:00:00.700Z"),
    };
    const entry = newEntry({ name: "gw-2", device, problems: [], ownership: "owned" });
    const node: Node = { metadata: { name: "gw-2" }, status: {} };
    const write = () =>
      writeNodeStatus({ kube, config, version: "test", transport: undefined, entry, node, clock });

    await write();
    expect(written).toHaveLength(1);
    // Heartbeats with nothing new: the status built (Dates) matches the one written (strings).
    for (let i = 0; i < 4; i++) {
      clock.advance(10_000);
      expect(await write()).toBeUndefined();
    }
    expect(written).toHaveLength(1);
    entry.device = { ...device, connected: false };
    clock.advance(1_000);
    await write();
    expect(written).toHaveLength(2);
    expect(written[1]?.conditions?.find((c) => c.type === "DeviceConnected")?.status).toBe("False");
    // Due (testNodeConfig: every 60 s) with nothing new: written again.
    clock.advance(60_000);
    await write();
    expect(written).toHaveLength(3);
  });
});
