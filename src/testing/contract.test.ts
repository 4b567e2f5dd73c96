/**
 * The kit can fail: each contract scenario run against a mock provider broken in one way the
 * scenario is about (a wrapper that lies, forgets or calls back too often), expecting the
 * ContractViolation that names the rule. providers/mock/conformance.test.ts is the other half:
 * the unbroken mock passes every scenario.
 */
import { mkdtempSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createMockProvider, type MockProvider } from "../../providers/mock/index.ts";
import type {
  DeviceStats,
  DeviceWatcher,
  ExecIO,
  LogOptions,
  LogStream,
  PodRef,
  Workload,
  WorkloadStatus,
} from "../provider/types.ts";
import { contractScenarios, type ContractScenarioId } from "./contract.ts";
import type { ProviderTarget } from "./target.ts";

// Each scenario has at least one broken provider below; some rules (statuses, fatal errors) that
// every scenario checks are shown on one scenario each.

const dir = mkdtempSync(join(tmpdir(), "devicelet-contract-negative-"));
afterAll(() => rm(dir, { recursive: true, force: true }));
let files = 0;

type Overrides = Partial<Record<keyof MockProvider, unknown>>;

/**
 * A mock target whose provider is the real mock seen through `break_`: the properties it returns
 * replace the mock's (each call of `create` gets a fresh mock and fresh overrides).
 */
function brokenMock(
  break_: (real: MockProvider) => Overrides,
  options: { stateFile?: "shared" | "none" } = {},
): ProviderTarget<MockProvider> {
  const stateFile = join(dir, `state-${++files}.json`);
  return {
    name: "broken mock",
    devices: ["kit-0", "kit-1"],
    image: "example/app:1",
    // Short: every broken provider makes a wait time out.
    patienceMs: 1_000,
    create: (context) => {
      const real = createMockProvider(
        {
          devices: { count: 2, idPrefix: "kit-" },
          appStartDelayMs: 20,
          appStopDelayMs: 20,
          ...(options.stateFile === "none" ? {} : { stateFile }),
        },
        context,
      );
      const overrides = break_(real);
      return new Proxy(real, {
        get(target, key) {
          if (Object.hasOwn(overrides, key)) return overrides[key as keyof MockProvider];
          const value: unknown = Reflect.get(target, key, target);
          return typeof value === "function" ? (value as () => unknown).bind(target) : value;
        },
      });
    },
    setDeviceOnline: (provider, deviceId, online) => {
      provider.setConnected(deviceId, online);
      return Promise.resolve();
    },
  };
}

/** A notifyStatus that passes each status through `rewrite` (which may return several). */
const rewriteStatuses =
  (real: MockProvider, rewrite: (s: WorkloadStatus) => WorkloadStatus[]) =>
  (callback: (s: WorkloadStatus) => void) => {
    real.notifyStatus((s) => {
      for (const out of rewrite(s)) callback(out);
    });
  };

const running = (s: WorkloadStatus): WorkloadStatus => ({
  ...s,
  phase: "Running",
  apps: s.apps.map((a) => ({ ...a, ready: true, state: { kind: "running", startedAt: new Date() } })),
});

/** A broken mock that also names the exec commands the mock answers. */
const withExec = (target: ProviderTarget<MockProvider>): ProviderTarget<MockProvider> => ({
  ...target,
  capabilities: { exec: { ok: ["true"], failing: { command: ["sh", "-c", "exit 3"], exitCode: 3 } } },
});

/** The log stream of `stream` with each chunk cut in two, so no chunk but the last ends a line. */
const cutInHalves = (stream: LogStream): LogStream => ({
  chunks: (async function* () {
    for await (const chunk of stream.chunks) {
      const half = Math.ceil(chunk.length / 2);
      yield chunk.slice(0, half);
      yield chunk.slice(half);
    }
  })(),
});

const cases: readonly [ContractScenarioId, string, ProviderTarget<MockProvider>, RegExp][] = [
  [
    "idempotentCreate",
    "restarts the pod when created again",
    brokenMock((real) => ({
      createPod: async (w: Workload) => {
        if ((await real.listPods()).some((p) => p.pod.uid === w.pod.uid))
          await real.deletePod(w.pod, { gracePeriodSeconds: 0 });
        await real.createPod(w);
      },
    })),
    /same hash again/,
  ],
  [
    "update",
    "ignores updates",
    brokenMock(() => ({ updatePod: () => Promise.resolve() })),
    /after updatePod, listPods says hash/,
  ],
  [
    "updateUnknownCreates",
    "refuses updates of pods it does not hold",
    brokenMock((real) => ({
      updatePod: async (w: Workload) => {
        if (!(await real.listPods()).some((p) => p.pod.uid === w.pod.uid)) throw new Error("no such pod");
        await real.updatePod(w);
      },
    })),
    /no such pod/,
  ],
  [
    "deleteWithGrace",
    "reports a deletion twice",
    brokenMock((real) => ({
      notifyDeleted: (callback: (p: PodRef) => void) => {
        real.notifyDeleted((p) => {
          callback(p);
          callback(p);
        });
      },
    })),
    /reported the deletion of .* twice/,
  ],
  [
    "unknownPods",
    "throws deleting an unknown pod",
    brokenMock((real) => ({
      deletePod: async (ref: PodRef, o: { gracePeriodSeconds: number }) => {
        if (!(await real.listPods()).some((p) => p.pod.uid === ref.uid)) throw new Error("NotFound");
        await real.deletePod(ref, o);
      },
    })),
    /deletePod of an unknown pod threw/,
  ],
  [
    "durableDelete",
    "keeps a delete for an away device only in memory",
    brokenMock((real) => {
      const pending: PodRef[] = [];
      const away = new Set<string>();
      return {
        deletePod: async (ref: PodRef, o: { gracePeriodSeconds: number }) => {
          const held = (await real.listPods()).find((p) => p.pod.uid === ref.uid);
          if (held && away.has(held.nodeName)) pending.push(ref);
          else await real.deletePod(ref, o);
        },
        setConnected: (id: string, online: boolean) => {
          real.setConnected(id, online);
          if (online) {
            away.delete(id);
            for (const ref of pending.splice(0)) void real.deletePod(ref, { gracePeriodSeconds: 0 });
          } else away.add(id);
        },
      };
    }),
    /deleted: not within/,
  ],
  [
    "durableCreate",
    "keeps what it was given only in memory",
    brokenMock(() => ({}), { stateFile: "none" }),
    /after a restart listPods lacks/,
  ],
  [
    "restartKeepsPods",
    "forgets its pods on restart",
    brokenMock(() => ({}), { stateFile: "none" }),
    /after a restart listPods lacks/,
  ],
  [
    "restartKeepsHash",
    "lists the first hash it was given after a restart",
    brokenMock((real) => {
      const first = new Map<string, string>();
      return {
        createPod: async (w: Workload) => {
          if (!first.has(w.pod.uid)) first.set(w.pod.uid, w.hash);
          await real.createPod(w);
        },
        listPods: async () =>
          (await real.listPods()).map((p) => ({ ...p, hash: first.get(p.pod.uid) ?? "lost" })),
      };
    }),
    /after a restart listPods says hash/,
  ],
  [
    "offlineCreate",
    "reports Running while the device is away",
    brokenMock((real) => ({
      notifyStatus: rewriteStatuses(real, (s) => [s.deviceConnected ? s : running(s)]),
      getPodStatus: async (ref: PodRef) => {
        const s = await real.getPodStatus(ref);
        return s && (s.deviceConnected ? s : running(s));
      },
    })),
    /reported as waiting for its device/,
  ],
  [
    "offlineCreate",
    "pushes Running while the device is away (getPodStatus right)",
    brokenMock((real) => ({
      notifyStatus: rewriteStatuses(real, (s) => (s.deviceConnected ? [s] : [s, running(s)])),
    })),
    /a status pushed while the device was away says Running/,
  ],
  [
    "idempotentCreate",
    "sends statuses under a uid it was never given",
    brokenMock((real) => ({
      notifyStatus: rewriteStatuses(real, (s) => [s, { ...s, pod: { ...s.pod, uid: `${s.pod.uid}-x` } }]),
    })),
    /a uid the kit never gave it/,
  ],
  [
    "update",
    "sends a pod's status under another pod's name",
    brokenMock((real) => ({
      notifyStatus: rewriteStatuses(real, (s) => [s, { ...s, pod: { ...s.pod, name: "someone-else" } }]),
    })),
    /but uid .* is kit\//,
  ],
  [
    "lifecycle",
    "reports a fatal error",
    {
      ...brokenMock(() => ({})),
      create: (context) => {
        context.fail(new Error("credentials revoked"));
        return brokenMock(() => ({})).create(context);
      },
    },
    /fatal error with context.fail: credentials revoked/,
  ],
  [
    "offlineLatestWins",
    "runs the intermediate version on reconnect",
    brokenMock((real) => ({
      notifyStatus: rewriteStatuses(real, (s) =>
        s.apps.some((a) => a.name === "app-v3" && a.state.kind === "running")
          ? [{ ...s, apps: s.apps.map((a) => ({ ...a, name: "app-v2" })) }, s]
          : [s],
      ),
    })),
    /the intermediate version ran/,
  ],
  [
    "offlineDelete",
    "reports a delete while the device is away at once",
    brokenMock((real) => {
      const callbacks: ((p: PodRef) => void)[] = [];
      return {
        notifyDeleted: (callback: (p: PodRef) => void) => {
          callbacks.push(callback);
          real.notifyDeleted(callback);
        },
        deletePod: async (ref: PodRef, o: { gracePeriodSeconds: number }) => {
          await real.deletePod(ref, o);
          for (const c of callbacks) c(ref);
        },
      };
    }),
    /was reported while its device was away/,
  ],
  [
    "quietAfterStop",
    "calls back after stop resolved",
    brokenMock((real) => {
      let last: WorkloadStatus | undefined;
      const callbacks: ((s: WorkloadStatus) => void)[] = [];
      return {
        notifyStatus: (callback: (s: WorkloadStatus) => void) => {
          callbacks.push(callback);
          real.notifyStatus((s) => {
            last = s;
            callback(s);
          });
        },
        stop: async () => {
          await real.stop();
          setImmediate(() => {
            if (last) for (const c of callbacks) c(last);
          });
        },
      };
    }),
    /after stop resolved/,
  ],
  [
    "concurrentPods",
    "refuses a create while another is in flight",
    brokenMock((real) => {
      let busy = false;
      return {
        createPod: async (w: Workload) => {
          if (busy) throw new Error("busy");
          busy = true;
          await new Promise((resolve) => setImmediate(resolve));
          busy = false;
          await real.createPod(w);
        },
      };
    }),
    /busy/,
  ],
  [
    "onePodSequences",
    "drops deletes of pods that do not run yet",
    brokenMock((real) => ({
      deletePod: async (ref: PodRef, o: { gracePeriodSeconds: number }) => {
        if ((await real.getPodStatus(ref))?.phase === "Running") await real.deletePod(ref, o);
      },
    })),
    /deleted: not within/,
  ],
  [
    "deviceInventory",
    "does not report presence changes",
    brokenMock(() => ({ watchDevices: (_watcher: DeviceWatcher) => undefined })),
    /reported away: not within .* watchDevices said undefined/,
  ],
  [
    "lifecycle",
    "throws when stopped twice",
    brokenMock((real) => {
      let stopped = false;
      return {
        stop: async () => {
          if (stopped) throw new Error("already stopped");
          stopped = true;
          await real.stop();
        },
      };
    }),
    /already stopped/,
  ],
  [
    "logs",
    "sends a log in pieces of lines",
    brokenMock((real) => ({
      getContainerLogs: async (ref: PodRef, c: string, o: LogOptions) =>
        cutInHalves(await real.getContainerLogs(ref, c, o)),
    })),
    /not whole lines ending in a newline/,
  ],
  [
    "logs",
    "answers an unknown pod with an empty log",
    brokenMock((real) => ({
      getContainerLogs: async (ref: PodRef, c: string, o: LogOptions) => {
        if (!(await real.listPods()).some((p) => p.pod.uid === ref.uid))
          return { chunks: (async function* () {})() };
        return real.getContainerLogs(ref, c, o);
      },
    })),
    /logs of an unknown pod: resolved, but it must reject/,
  ],
  [
    "logsFollow",
    "keeps following after the client went",
    brokenMock((real) => ({
      getContainerLogs: (ref: PodRef, c: string, o: LogOptions) =>
        real.getContainerLogs(ref, c, { ...o, signal: new AbortController().signal }),
    })),
    /the client gone while it waits for lines: the stream must end/,
  ],
  [
    "exec",
    "reports every command as succeeded",
    withExec(
      brokenMock((real) => ({
        execInContainer: async (ref: PodRef, c: string, command: readonly string[], io: ExecIO) => {
          await real.execInContainer(ref, c, command, io);
          return { exitCode: 0 };
        },
      })),
    ),
    /exit code 0, not 3/,
  ],
  [
    "exec",
    "throws a plain error for an unknown pod",
    brokenMock(() => ({
      execInContainer: () => Promise.reject(new Error("no such pod")),
    })),
    /exec in an unknown pod: rejected with Error: no such pod, not NotFound/,
  ],
  [
    "stats",
    "reports a negative working set",
    brokenMock((real) => ({
      getStats: async (id: string): Promise<DeviceStats> => {
        const stats = await real.getStats(id);
        return { ...stats, node: { time: new Date(), memory: { workingSetBytes: -1 } } };
      },
    })),
    /workingSetBytes is -1, not a non-negative number/,
  ],
  [
    "stats",
    "answers an unknown device with empty stats",
    brokenMock((real) => ({
      getStats: (id: string) => real.getStats(id).catch(() => ({ pods: [] })),
    })),
    /getStats of an unknown device: resolved, but it must reject/,
  ],
  [
    "capabilitiesAway",
    "waits for an away device to come back before answering stats",
    brokenMock((real) => ({
      getStats: async (id: string): Promise<DeviceStats> => {
        const device = (await real.listDevices()).find((d) => d.id === id);
        if (device?.connected === false) return new Promise<DeviceStats>(() => undefined);
        return real.getStats(id);
      },
    })),
    /getStats\(kit-0\) while it is away: no answer within/,
  ],
];

describe("the contract kit against broken providers", () => {
  it("has a broken provider for every scenario", () => {
    expect(new Set(cases.map(([id]) => id))).toEqual(new Set(Object.keys(contractScenarios)));
  });

  for (const [id, what, target, message] of cases) {
    it(`${id}: fails a provider that ${what}`, async () => {
      await expect(contractScenarios[id].run(target)).rejects.toThrow(message);
    });
  }
});
