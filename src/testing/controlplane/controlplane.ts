/**
 * The harness control plane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler built
 * by hack/control-plane/build.sh (cached by version outside the repository), all on loopback with
 * free ports, state kept in `dir`. devicelet's own tests and benchmarks use it, and so does the
 * conformance kit (`devicelet/provider/testing`), which is why it lives under src/ and ships.
 *
 *   const state = await up({ dir: ".testenv" });   // idempotent: reuses a healthy running one
 *   await stopApiServer({ dir: ".testenv", signal: "SIGKILL" });   // an API-server outage…
 *   await startApiServer({ dir: ".testenv" });     // …ended: same flags, same port, ready again
 *   await down({ dir: ".testenv" });               // stops exactly the processes `up` started
 *
 * With `network`, every process runs inside an existing network namespace (`ip netns exec`) and the
 * API server listens on and advertises that namespace's address; this process cannot reach it, so
 * health checks run curl inside the namespace. The kubelet API tests use it (test/support/lab.ts):
 * the API server's node proxy refuses loopback node addresses.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import {
  freePort,
  httpsGet,
  isOurs,
  netnsProbe,
  startDaemon,
  stopDaemon,
  waitFor,
  type Daemon,
  type Probe,
} from "./process.ts";
import { apiServerArgs, auditPolicy } from "./apiserver-flags.ts";
import { ensurePki, type Pki } from "./pki.ts";
import { harnessRbac } from "./rbac.ts";

/**
 * The package root (where hack/control-plane and charts/ are): three folders up from the
 * sources, four from the build in dist/. Found by its package.json rather than counted, so both work.
 */
const packageRoot = findPackageRoot(import.meta.dirname);

function findPackageRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const manifest = path.join(dir, "package.json");
    if (
      existsSync(manifest) &&
      (JSON.parse(readFileSync(manifest, "utf8")) as { name?: unknown }).name === "devicelet"
    )
      return dir;
    if (path.dirname(dir) === dir) throw new Error(`no devicelet package.json above ${from}`);
  }
}

export interface ControlPlaneState {
  readonly version: 1;
  readonly binDir: string;
  readonly server: string;
  readonly daemons: readonly Daemon[];
  readonly ports: Readonly<Record<string, number>>;
  readonly startedAt: string;
  /** Set when it runs inside a network namespace. */
  readonly network?: NetworkNamespace;
  /**
   * The API server runs with the aggregation layer's front-proxy flags. A control plane recorded
   * without it was started by an older harness and is restarted by `up`.
   */
  readonly aggregation?: true;
}

/** An existing network namespace, and the address on its loopback the API server uses. */
export interface NetworkNamespace {
  readonly namespace: string;
  readonly address: string;
}

/** How to reach the control plane's processes: directly, or through curl inside its namespace. */
const probeFor = (network: NetworkNamespace | undefined): Probe =>
  network ? netnsProbe(network.namespace) : httpsGet;

type Log = (message: string) => void;

const identities = [
  { stem: "admin", commonName: "admin", organization: "system:masters" },
  { stem: "controller-manager", commonName: "system:kube-controller-manager" },
  { stem: "scheduler", commonName: "system:kube-scheduler" },
  {
    stem: "apiserver-kubelet-client",
    commonName: "kube-apiserver-kubelet-client",
    organization: "system:masters",
  },
  { stem: "devicelet", commonName: "devicelet", organization: "devicelet" },
  // KWOK in the benchmarks: its own name so its API calls can be counted apart.
  { stem: "kwok", commonName: "kwok", organization: "system:masters" },
] as const;

const statePath = (dir: string) => path.join(dir, "state.json");

/** `--node-monitor-grace-period` of the harness controller-manager; tests that outlast it read it here. */
export const nodeMonitorGraceSeconds = 30;

export function readState(dir: string): ControlPlaneState | undefined {
  try {
    return JSON.parse(readFileSync(statePath(dir), "utf8")) as ControlPlaneState;
  } catch {
    return undefined;
  }
}

/** The running control plane recorded in `dir`, when every process is ours and the API server is ready. */
export async function running(dir: string): Promise<ControlPlaneState | undefined> {
  const state = readState(dir);
  if (!state?.aggregation || !state.daemons.every(isOurs)) return undefined;
  const pki = path.join(dir, "pki");
  const ready = await probeFor(state.network)(`${state.server}/readyz`, {
    ca: path.join(pki, "ca.crt"),
    cert: path.join(pki, "admin.crt"),
    key: path.join(pki, "admin.key"),
  });
  return ready.status === 200 ? state : undefined;
}

/** The folder holding the control-plane binaries, building them first when the cache is cold. */
export function controlPlaneBinDir(log: Log): string {
  log("control plane binaries: hack/control-plane/build.sh (cached by version; a cold build takes a while)");
  const out = execFileSync("bash", [path.join(packageRoot, "hack/control-plane/build.sh")], {
    stdio: ["ignore", "pipe", "inherit"],
    encoding: "utf8",
  });
  return out.trim().split("\n").at(-1) ?? "";
}

function kubeconfig(server: string, pki: Pki, stem: string, user: string): string {
  const { cert, key } = pki.cert(stem);
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: testenv",
    "  cluster:",
    `    server: ${server}`,
    `    certificate-authority: ${pki.caCert}`,
    "users:",
    `- name: ${user}`,
    "  user:",
    `    client-certificate: ${cert}`,
    `    client-key: ${key}`,
    "contexts:",
    `- name: ${user}@testenv`,
    "  context:",
    "    cluster: testenv",
    `    user: ${user}`,
    `current-context: ${user}@testenv`,
    "",
  ].join("\n");
}

export async function up(options: {
  dir: string;
  log?: Log;
  /** The controller-manager's `--node-monitor-grace-period`; default {@link nodeMonitorGraceSeconds}. */
  nodeMonitorGraceSeconds?: number;
  /** Run every process inside this network namespace (created by the caller), on its address. */
  network?: NetworkNamespace;
}): Promise<ControlPlaneState> {
  const log = options.log ?? ((m: string) => console.error(`[testenv] ${m}`));
  const dir = path.resolve(options.dir);
  const existing = await running(dir);
  if (existing) {
    log(`control plane already running at ${existing.server}`);
    // The chart's RBAC may have changed since it was started; applying it again is cheap.
    applyRbac(dir, existing.binDir, existing.network);
    writeEnvFiles(dir, existing);
    return existing;
  }
  const stale = readState(dir);
  if (stale) await stopAll(stale.daemons);
  const binDir = controlPlaneBinDir(log);
  mkdirSync(path.join(dir, "logs"), { recursive: true });
  rmSync(path.join(dir, "etcd"), { recursive: true, force: true });
  const { network } = options;
  const netns = network?.namespace;
  const probe = probeFor(network);
  const host = network?.address ?? "127.0.0.1";
  const pki = ensurePki(path.join(dir, "pki"), identities, { apiServerIps: network ? [host] : [] });
  const [etcdClient, etcdPeer, apiserverPort, kcmPort, schedulerPort] = (await Promise.all(
    Array.from({ length: 5 }, () => freePort()),
  )) as [number, number, number, number, number];
  const server = `https://${host}:${apiserverPort}`;
  const bin = (name: string) => path.join(binDir, name);
  const logFile = (name: string) => path.join(dir, "logs", `${name}.log`);
  const daemons: Daemon[] = [];
  const save = () =>
    writeFileSync(
      statePath(dir),
      JSON.stringify(
        {
          version: 1,
          binDir,
          server,
          daemons,
          ports: {
            etcd: etcdClient,
            apiserver: apiserverPort,
            controllerManager: kcmPort,
            scheduler: schedulerPort,
          },
          startedAt: new Date().toISOString(),
          ...(network ? { network } : {}),
          aggregation: true,
        } satisfies ControlPlaneState,
        null,
        2,
      ),
    );

  try {
    const etcdUrl = `http://127.0.0.1:${etcdClient}`;
    const peerUrl = `http://127.0.0.1:${etcdPeer}`;
    daemons.push(
      startDaemon(
        "etcd",
        bin("etcd"),
        [
          "--name=testenv",
          `--data-dir=${path.join(dir, "etcd")}`,
          `--listen-client-urls=${etcdUrl}`,
          `--advertise-client-urls=${etcdUrl}`,
          `--listen-peer-urls=${peerUrl}`,
          `--initial-advertise-peer-urls=${peerUrl}`,
          `--initial-cluster=testenv=${peerUrl}`,
          "--unsafe-no-fsync=true",
          "--quota-backend-bytes=4294967296",
          "--log-level=warn",
        ],
        logFile("etcd"),
        netns,
      ),
    );
    save();
    await waitFor(
      "etcd",
      async () =>
        network
          ? (await probe(`${etcdUrl}/health`, {})).status === 200
          : await fetch(`${etcdUrl}/health`)
              .then((r) => r.ok)
              .catch(() => false),
      30_000,
      logFile("etcd"),
    );

    writeFileSync(path.join(dir, "audit-policy.yaml"), auditPolicy);
    daemons.push(
      startDaemon(
        "kube-apiserver",
        bin("kube-apiserver"),
        apiServerArgs({ dir, pki, etcdPort: etcdClient, port: apiserverPort, address: host }),
        logFile("kube-apiserver"),
        netns,
      ),
    );
    save();
    const adminTls = { ca: pki.caCert, ...pki.cert("admin") };
    await waitFor(
      "kube-apiserver /readyz",
      async () => (await probe(`${server}/readyz`, adminTls)).status === 200,
      120_000,
      logFile("kube-apiserver"),
    );

    writeFileSync(path.join(dir, "kubeconfig"), kubeconfig(server, pki, "admin", "admin"));
    writeFileSync(path.join(dir, "devicelet.kubeconfig"), kubeconfig(server, pki, "devicelet", "devicelet"));
    writeFileSync(path.join(dir, "kwok.kubeconfig"), kubeconfig(server, pki, "kwok", "kwok"));
    writeFileSync(
      path.join(dir, "controller-manager.kubeconfig"),
      kubeconfig(server, pki, "controller-manager", "kube-controller-manager"),
    );
    writeFileSync(
      path.join(dir, "scheduler.kubeconfig"),
      kubeconfig(server, pki, "scheduler", "kube-scheduler"),
    );
    applyRbac(dir, binDir, network);

    const kcmConfig = path.join(dir, "controller-manager.kubeconfig");
    daemons.push(
      startDaemon(
        "kube-controller-manager",
        bin("kube-controller-manager"),
        [
          `--kubeconfig=${kcmConfig}`,
          `--authentication-kubeconfig=${kcmConfig}`,
          `--authorization-kubeconfig=${kcmConfig}`,
          "--bind-address=127.0.0.1",
          `--secure-port=${kcmPort}`,
          `--service-account-private-key-file=${path.join(pki.dir, "sa.key")}`,
          `--root-ca-file=${pki.caCert}`,
          `--cluster-signing-cert-file=${pki.caCert}`,
          `--cluster-signing-key-file=${pki.caKey}`,
          "--use-service-account-credentials=true",
          "--leader-elect=false",
          "--kube-api-qps=200",
          "--kube-api-burst=400",
          "--concurrent-replicaset-syncs=10",
          "--concurrent-deployment-syncs=10",
          // The node-lifecycle controller marks a node Unknown (and taints it) once its Lease is
          // this old. Kubernetes 1.36 defaults to 50 s; 30 s is still three renew intervals of
          // devicelet's default 10 s, and keeps the outage tests (which must outlast it) short.
          `--node-monitor-grace-period=${options.nodeMonitorGraceSeconds ?? nodeMonitorGraceSeconds}s`,
        ],
        logFile("kube-controller-manager"),
        netns,
      ),
    );
    const schedConfig = path.join(dir, "scheduler.kubeconfig");
    daemons.push(
      startDaemon(
        "kube-scheduler",
        bin("kube-scheduler"),
        [
          `--kubeconfig=${schedConfig}`,
          `--authentication-kubeconfig=${schedConfig}`,
          `--authorization-kubeconfig=${schedConfig}`,
          "--bind-address=127.0.0.1",
          `--secure-port=${schedulerPort}`,
          "--leader-elect=false",
        ],
        logFile("kube-scheduler"),
        netns,
      ),
    );
    save();
    await waitFor(
      "kube-controller-manager /healthz",
      async () => (await probe(`https://127.0.0.1:${kcmPort}/healthz`, {})).body === "ok",
      60_000,
      logFile("kube-controller-manager"),
    );
    await waitFor(
      "kube-scheduler /healthz",
      async () => (await probe(`https://127.0.0.1:${schedulerPort}/healthz`, {})).body === "ok",
      60_000,
      logFile("kube-scheduler"),
    );
    await waitFor(
      "the default ServiceAccount",
      async () =>
        (await probe(`${server}/api/v1/namespaces/default/serviceaccounts/default`, adminTls)).status === 200,
      60_000,
      logFile("kube-controller-manager"),
    );
  } catch (err) {
    await stopAll(daemons);
    rmSync(statePath(dir), { force: true });
    throw err;
  }
  const state = readState(dir);
  if (!state) throw new Error("testenv state vanished");
  writeEnvFiles(dir, state);
  log(`control plane ready at ${server}; source ${path.join(dir, "env")}`);
  return state;
}

/** Grants the harness user `devicelet` exactly the Helm chart's RBAC (rbac.ts). */
function applyRbac(dir: string, binDir: string, network?: NetworkNamespace) {
  const kubectl = [path.join(binDir, "kubectl"), `--kubeconfig=${path.join(dir, "kubeconfig")}`];
  const argv = network ? ["ip", "netns", "exec", network.namespace, ...kubectl] : kubectl;
  execFileSync(argv[0] ?? "", [...argv.slice(1), "apply", "-f", "-"], {
    input: harnessRbac({ packageRoot, user: "devicelet" }),
    encoding: "utf8",
  });
}

function writeEnvFiles(dir: string, state: ControlPlaneState) {
  writeFileSync(
    path.join(dir, "env"),
    `# written by \`npm run testenv -- up\`; source it to use the harness control plane\nexport KUBECONFIG=${path.join(dir, "kubeconfig")}\nexport PATH=${state.binDir}:$PATH\n`,
  );
}

async function stopAll(daemons: readonly Daemon[]) {
  // Reverse start order: clients before the API server, the API server before etcd.
  for (const d of [...daemons].reverse()) await stopDaemon(d);
}

/** Stops what `up` recorded in `dir`; true when something was stopped. Safe to call twice. */
export async function down(options: { dir: string; log?: Log }): Promise<boolean> {
  const log = options.log ?? ((m: string) => console.error(`[testenv] ${m}`));
  const dir = path.resolve(options.dir);
  const state = readState(dir);
  if (!state) {
    log("nothing to stop");
    return false;
  }
  await stopAll(state.daemons);
  rmSync(statePath(dir), { force: true });
  if (existsSync(path.join(dir, "env"))) rmSync(path.join(dir, "env"));
  log(`stopped ${state.daemons.map((d) => `${d.name} (${d.pid})`).join(", ")}`);
  return true;
}

/** The recorded kube-apiserver of `dir`'s control plane, with the state it belongs to. */
function recordedApiServer(dir: string): { state: ControlPlaneState; daemon: Daemon } {
  const state = readState(dir);
  if (!state) throw new Error(`no harness control plane recorded in ${dir}`);
  const daemon = state.daemons.find((d) => d.name === "kube-apiserver");
  if (!daemon) throw new Error(`no kube-apiserver recorded in ${statePath(dir)}`);
  return { state, daemon };
}

/**
 * An API-server outage: stops only the kube-apiserver recorded in `dir`'s state.json, by pid, and
 * resolves once it is gone. SIGKILL is a crash (no graceful shutdown of watches); SIGTERM (the
 * default) lets it drain. etcd, the controller-manager and the scheduler keep running, and
 * reconnect by themselves after `startApiServer`. A no-op when it is not running.
 */
export async function stopApiServer(options: { dir: string; signal?: "SIGKILL" | "SIGTERM" }): Promise<void> {
  const { daemon } = recordedApiServer(path.resolve(options.dir));
  await stopDaemon(daemon, 10_000, options.signal ?? "SIGTERM");
}

/**
 * Starts the kube-apiserver of `dir`'s control plane again, with exactly the flags and port `up`
 * gave it, waits for /readyz and records the new pid in state.json. A no-op when the recorded one
 * still runs.
 */
export async function startApiServer(options: { dir: string }): Promise<void> {
  const dir = path.resolve(options.dir);
  const { state, daemon } = recordedApiServer(dir);
  const pki = ensurePki(path.join(dir, "pki"), identities);
  const adminTls = { ca: pki.caCert, ...pki.cert("admin") };
  const logFile = path.join(dir, "logs", "kube-apiserver.log");
  const { network } = state;
  if (!isOurs(daemon)) {
    const { etcd, apiserver } = state.ports;
    if (etcd === undefined || apiserver === undefined) throw new Error(`ports missing in ${statePath(dir)}`);
    const restarted = startDaemon(
      "kube-apiserver",
      daemon.binary,
      apiServerArgs({
        dir,
        pki,
        etcdPort: etcd,
        port: apiserver,
        ...(network ? { address: network.address } : {}),
      }),
      logFile,
      network?.namespace,
    );
    writeFileSync(
      statePath(dir),
      JSON.stringify(
        { ...state, daemons: state.daemons.map((d) => (d === daemon ? restarted : d)) },
        null,
        2,
      ),
    );
  }
  await waitFor(
    "kube-apiserver /readyz",
    async () => (await probeFor(network)(`${state.server}/readyz`, adminTls)).status === 200,
    120_000,
    logFile,
  );
}
