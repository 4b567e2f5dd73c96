/**
 * Runs the real `devicelet run` command as a child process against the harness control plane,
 * with devicelet's own least-privilege kubeconfig, so integration tests exercise exactly what a
 * user starts. Each instance gets a unique test label on its nodes and its own folder.
 *
 *   const d = await startDevicelet({ id, provider: { devices: { count: 10, idPrefix: id } } });
 *   await d.stop();   // SIGTERM, as a user would; d.kill() is SIGKILL
 *
 * `runDevicelet` is the provider-neutral part; `startDevicelet` runs the mock provider and
 * `startMqttDevicelet` (mqtt.ts) the MQTT one.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { stringify } from "yaml";
import { eventually } from "./eventually.ts";
import { getJson } from "./kubectl.ts";
import { deviceletKubeconfig } from "./testenv.ts";

const repoRoot = path.resolve(import.meta.dirname, "../..");

export interface DeviceletProcess {
  readonly dir: string;
  readonly configFile: string;
  readonly logFile: string;
  /** `devicelet.dev/test=<id>`: selects this instance's nodes. */
  readonly nodeSelector: string;
  /** SIGTERM and wait for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
  /** SIGSTOP: the process is frozen (no timer, no request) until {@link resume}. */
  pause(): void;
  /** SIGCONT after {@link pause}. */
  resume(): void;
  /** Sends `signal` to the running process (e.g. SIGUSR2 for a heap snapshot, with `nodeFlags`). */
  signal(signal: NodeJS.Signals): void;
  /** Resolves with the exit code once the current run has exited by itself or been stopped. */
  exited(): Promise<number | null>;
  /**
   * Starts the same configuration again; resolves as the first start did, or, with
   * `waitForRunning: false`, as soon as the process is spawned.
   */
  restart(options?: { readonly waitForRunning?: boolean }): Promise<void>;
  /** Log lines (parsed pino JSON) of every run so far. */
  logLines(): Record<string, unknown>[];
}

/**
 * Writes `config` (devicelet's kubeconfig, the test label and debug logs filled in under it) and
 * starts `devicelet run` with it. Resolves once `expectNodes` nodes carry the test label and, with
 * `waitForRunning`, once this process has logged that it is running.
 */
export async function runDevicelet(options: {
  readonly id: string;
  readonly config: (dir: string) => Record<string, unknown>;
  readonly expectNodes?: number;
  readonly waitForRunning?: boolean;
  /** Node.js flags for the devicelet process (e.g. `--heapsnapshot-signal=SIGUSR2`). */
  readonly nodeFlags?: readonly string[];
}): Promise<DeviceletProcess> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `devicelet-${options.id}-`));
  const configFile = path.join(dir, "config.yaml");
  const logFile = path.join(dir, "devicelet.log");
  writeFileSync(
    configFile,
    stringify({
      kubeconfig: deviceletKubeconfig(),
      nodes: { extraLabels: { "devicelet.dev/test": options.id } },
      log: { level: "debug" },
      // The kubelet API needs a serving certificate and a port range: only tests that ask for it.
      kubelet: { serve: false },
      // Health endpoints on a free loopback port, so devicelets running side by side never clash.
      health: { port: 0, bindAddress: "127.0.0.1" },
      metrics: { port: 0, bindAddress: "127.0.0.1" },
      ...options.config(dir),
    }),
  );
  const nodeSelector = `devicelet.dev/test=${options.id}`;
  const logLines = () =>
    readFileSync(logFile, "utf8")
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  let child: ChildProcess | undefined;
  let exited: Promise<number | null> = Promise.resolve(null);
  const launch = async (o: { readonly waitForRunning?: boolean } = {}) => {
    const waitForRunning = o.waitForRunning ?? options.waitForRunning;
    const out = openSync(logFile, "a");
    child = spawn(
      process.execPath,
      [...(options.nodeFlags ?? []), path.join(repoRoot, "bin/devicelet.js"), "run", "--config", configFile],
      {
        stdio: ["ignore", out, out],
      },
    );
    const c = child;
    exited = new Promise((resolve) => c.once("exit", (code) => resolve(code)));
    if (!options.expectNodes && !waitForRunning) return;
    await eventually(
      async () => {
        if (c.exitCode !== null) throw new Error(`devicelet exited early (${c.exitCode}); see ${logFile}`);
        if (waitForRunning && !logLines().some((l) => l.msg === "devicelet is running" && l.pid === c.pid))
          throw new Error("devicelet is not running yet");
        if (options.expectNodes) {
          const nodes = await getJson<{ items: unknown[] }>(["nodes", "-l", nodeSelector]);
          if (nodes.items.length < options.expectNodes) throw new Error(`only ${nodes.items.length} nodes`);
        }
      },
      { timeoutMs: 60_000 },
    );
  };
  await launch();
  const signalAndWait = async (signal: NodeJS.Signals) => {
    if (child?.exitCode === null && child.pid !== undefined) child.kill(signal);
    return exited;
  };
  return {
    dir,
    configFile,
    logFile,
    nodeSelector,
    stop: () => signalAndWait("SIGTERM"),
    kill: async () => {
      await signalAndWait("SIGKILL");
    },
    pause: () => {
      if (child?.exitCode === null) child.kill("SIGSTOP");
    },
    resume: () => {
      if (child?.exitCode === null) child.kill("SIGCONT");
    },
    signal: (signal) => {
      if (child?.exitCode === null) child.kill(signal);
    },
    restart: launch,
    exited: () => exited,
    logLines,
  };
}

export interface DeviceletOptions {
  /** Unique per test: the node label `devicelet.dev/test=<id>` and the log/state folder. */
  readonly id: string;
  /** The mock provider's `config` section. `stateFile` is filled in. */
  readonly provider: Record<string, unknown>;
  /** Extra core config merged over the defaults here. */
  readonly core?: Record<string, unknown>;
  /** Nodes expected to register before start() resolves (default: none awaited). */
  readonly expectNodes?: number;
  /** Node.js flags for the devicelet process. */
  readonly nodeFlags?: readonly string[];
}

export interface RunningDevicelet extends DeviceletProcess {
  readonly stateFile: string;
  /** The mock provider's persisted state (what the "devices" run). */
  mockState(): MockState;
}

export interface MockState {
  pods: {
    workload: { pod: { namespace: string; name: string; uid: string } };
    running?: unknown;
    tombstone?: unknown;
  }[];
  createsByUid: Record<string, number>;
}

export async function startDevicelet(options: DeviceletOptions): Promise<RunningDevicelet> {
  let stateFile = "";
  const process_ = await runDevicelet({
    id: options.id,
    expectNodes: options.expectNodes,
    ...(options.nodeFlags ? { nodeFlags: options.nodeFlags } : {}),
    config: (dir) => {
      stateFile = path.join(dir, "mock-state.json");
      return { ...options.core, provider: { type: "mock", config: { ...options.provider, stateFile } } };
    },
  });
  return {
    ...process_,
    stateFile,
    mockState: () => JSON.parse(readFileSync(stateFile, "utf8")) as MockState,
  };
}
