import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { down, readState, running, up } from "../../src/testing/controlplane/controlplane.ts";
import { isOurs } from "../../src/testing/controlplane/process.ts";

// A second, private control plane in its own folder, to prove up/down on their own terms without
// touching the one the other tests share.
describe("testenv up and down", () => {
  it("are idempotent and stop exactly the processes up started", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-testenv-"));
    const log = () => {};
    const first = await up({ dir, log });
    expect(first.daemons.map((d) => d.name)).toEqual([
      "etcd",
      "kube-apiserver",
      "kube-controller-manager",
      "kube-scheduler",
    ]);
    expect(first.daemons.every(isOurs)).toBe(true);

    const second = await up({ dir, log });
    expect(second.server).toBe(first.server);
    expect(second.daemons.map((d) => d.pid)).toEqual(first.daemons.map((d) => d.pid));
    expect(await running(dir)).toBeDefined();

    expect(await down({ dir, log })).toBe(true);
    expect(first.daemons.some(isOurs)).toBe(false);
    expect(readState(dir)).toBeUndefined();
    expect(await down({ dir, log })).toBe(false);
  });
});
