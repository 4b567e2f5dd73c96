/**
 * The kubelet API lab: a control plane of its own, metrics-server and devicelet, all inside a
 * network namespace this test process creates (`ip netns add`), on the documentation-range address
 * 192.0.2.10 on that namespace's loopback. The API server's node proxy refuses loopback node
 * addresses, so the loopback harness cannot carry `kubectl logs/exec/top`; nothing here leaves the
 * machine either. This process stays outside the namespace and drives everything through processes
 * started in it (kubectl, curl, devicelet) with `ip netns exec`.
 *
 *   const lab = await startLab({ id: "kubelet-e2e" });   // ~30 s warm; bounded, logs on failure
 *   const d = await lab.startDevicelet({ id, provider: { devices: { count: 2, idPrefix: id } } });
 *   const out = await lab.kubectl(["logs", "-n", ns, pod]);   // never throws: { code, stdout, stderr }
 *   await lab.stop();   // stops exactly the processes it started, by pid, and deletes the namespace
 *
 * Everything a lab writes (state, PKI, kubeconfigs, process logs, the API server's audit log) is in
 * `lab.dir`, named after its id and printed when something fails; `DEVICELET_LAB_KEEP=1` keeps the
 * folder after a successful run too.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { stringify } from "yaml";
import { down, up } from "../../src/testing/controlplane/controlplane.ts";
import {
  isOurs,
  startDaemon,
  stopDaemon,
  waitFor,
  type Daemon,
} from "../../src/testing/controlplane/process.ts";
import { installDebianPackage } from "../../hack/testenv/mosquitto.ts";
import { eventually } from "./eventually.ts";

const repoRoot = path.resolve(import.meta.dirname, "../..");

/** The address of the lab's loopback: TEST-NET-1 (RFC 5737), never routed anywhere. */
export const labAddress = "192.0.2.10";
/** metrics-server's port on {@link labAddress}. */
const metricsServerPort = 4443;

export interface CommandResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** True when the command was killed at its timeout. */
  readonly timedOut: boolean;
}

export interface RunOptions {
  readonly input?: string;
  readonly env?: Readonly<Record<string, string>>;
  /** Killed (SIGKILL) after this long; default 30 s. A hang is a failure, never a wait forever. */
  readonly timeoutMs?: number;
}

export interface LabDevicelet {
  readonly id: string;
  readonly dir: string;
  readonly logFile: string;
  /** `devicelet.dev/test=<id>`. */
  readonly nodeSelector: string;
  readonly pid: number;
  /** Log lines (parsed pino JSON) so far. */
  logLines(): Record<string, unknown>[];
  /** SIGTERM, then waits for the exit. */
  stop(): Promise<void>;
}

export interface Lab {
  readonly id: string;
  /** Where everything of this lab is written (state, logs, audit log, kubeconfigs). */
  readonly dir: string;
  /** The network namespace, `devicelet-lab-<pid>`. */
  readonly netns: string;
  readonly address: string;
  /** `https://192.0.2.10:<port>`. */
  readonly server: string;
  readonly binDir: string;
  readonly adminKubeconfig: string;
  readonly caCert: string;
  /** The API server's client certificate towards kubelets (CN kube-apiserver-kubelet-client). */
  readonly apiServerKubeletClient: { readonly cert: string; readonly key: string };
  /** Runs `command args` inside the namespace; resolves whatever its exit code. */
  run(command: string, args: readonly string[], options?: RunOptions): Promise<CommandResult>;
  /** kubectl as cluster-admin (unless `--kubeconfig`/`--token` is given in args) inside the namespace. */
  kubectl(args: readonly string[], options?: RunOptions): Promise<CommandResult>;
  /** kubectl that must succeed; resolves with stdout. */
  kubectlOk(args: readonly string[], options?: RunOptions): Promise<string>;
  /** A long-running kubectl (logs -f, port-forward) inside the namespace; the caller kills it. */
  spawnKubectl(args: readonly string[], options?: { env?: Readonly<Record<string, string>> }): ChildProcess;
  /** `devicelet run` with the mock provider inside the namespace, serving the kubelet API on the lab address. */
  startDevicelet(options: {
    readonly id: string;
    /** The mock provider's config (`stateFile` filled in), unless `providerSection` is given. */
    readonly provider?: Record<string, unknown>;
    /** The whole `provider` section (`{ type, config }`) for another provider. */
    readonly providerSection?: Record<string, unknown>;
    readonly core?: Record<string, unknown>;
    /** Nodes that must register (and get a serving certificate) before this resolves. */
    readonly expectNodes: number;
  }): Promise<LabDevicelet>;
  /**
   * A long-running process inside the namespace (a broker, a device simulator), its output in
   * `logs/<name>.log`; stopped with the lab, by pid. `binary` must be an absolute path.
   */
  startProcess(name: string, binary: string, args: readonly string[]): Daemon;
  /** The last lines of every process log of the lab, for a failure message. */
  describe(): string;
  /** Stops every process the lab started (by pid) and deletes the namespace. Safe to call twice. */
  stop(options?: { readonly keepDir?: boolean }): Promise<void>;
}

/** Runs a command to completion with a timeout; never rejects. */
function runCommand(
  command: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = execFile(
      command,
      args,
      {
        encoding: "utf8",
        maxBuffer: 64 * 1024 * 1024,
        timeout: options.timeoutMs ?? 30_000,
        killSignal: "SIGKILL",
        env: { ...process.env, ...options.env },
      },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: unknown; killed?: boolean }) | null;
        resolve({
          code: e ? (typeof e.code === "number" ? e.code : null) : 0,
          stdout,
          stderr,
          timedOut: e?.killed === true,
        });
      },
    );
    child.stdin?.end(options.input);
  });
}

const runSync = (command: string, args: readonly string[]) => {
  try {
    execFileSync(command, args, { stdio: "ignore" });
    return 0;
  } catch {
    return 1;
  }
};

const tail = (file: string, lines = 25) =>
  existsSync(file) ? readFileSync(file, "utf8").split("\n").slice(-lines).join("\n") : "(no log)";

/**
 * Creates the namespace, starts the lab's control plane in it, then metrics-server registered as
 * v1beta1.metrics.k8s.io. Every wait is bounded (about five minutes in all, once the binaries are
 * built); a failure stops what it started and carries the logs of every process of the lab.
 */
export async function startLab(options: { readonly id: string }): Promise<Lab> {
  const id = `${options.id}-${process.pid}`;
  const dir = path.join(os.tmpdir(), `devicelet-lab-${id}`);
  const netns = `devicelet-lab-${process.pid}`;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(path.join(dir, "logs"), { recursive: true });
  const log = (m: string) => console.error(`[lab ${id}] ${m}`);
  const inNs = (command: string, args: readonly string[]) => ["netns", "exec", netns, command, ...args];

  // A clear refusal rather than a confusing failure half-way: `ip netns add` needs root (or
  // CAP_NET_ADMIN and CAP_SYS_ADMIN). `ip` and the probes' curl come from Debian's packages when
  // missing, as Mosquitto does (hack/testenv/mosquitto.ts).
  if (process.getuid?.() !== 0)
    throw new Error("the kubelet API lab needs root to create a network namespace");
  for (const [tool, pkg] of [
    ["ip", "iproute2"],
    ["curl", "curl"],
  ] as const) {
    if (runSync("sh", ["-c", `command -v ${tool}`]) === 0) continue;
    log(`${tool} is missing; installing ${pkg} from Debian's packages (apt-get)`);
    installDebianPackage(pkg);
  }

  // Binaries first (outside the budget: a cold build takes minutes, see hack/control-plane/).
  const metricsServer = execFileSync(
    "bash",
    [path.join(repoRoot, "hack/control-plane/build-metrics-server.sh")],
    {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
    },
  )
    .trim()
    .split("\n")
    .at(-1);
  if (!metricsServer) throw new Error("build-metrics-server.sh printed no path");

  removeAbandonedNamespaces(netns);
  execFileSync("ip", ["netns", "add", netns]);
  execFileSync("ip", inNs("ip", ["link", "set", "lo", "up"]));
  execFileSync("ip", inNs("ip", ["addr", "add", `${labAddress}/32`, "dev", "lo"]));

  const daemons: Daemon[] = [];
  const devicelets: LabDevicelet[] = [];
  const describe = () => {
    const logs = path.join(dir, "logs");
    const files = readdirSync(logs).map((f) => path.join(logs, f));
    const deviceletLogs = devicelets.map((d) => d.logFile);
    return [
      `lab ${id}: everything is kept in ${dir} (audit log: ${path.join(dir, "audit.log")})`,
      ...[...files, ...deviceletLogs].map((f) => `--- last lines of ${f} ---\n${tail(f)}`),
    ].join("\n");
  };
  let stopped = false;
  const stop = async (o: { keepDir?: boolean } = {}) => {
    if (stopped) return;
    stopped = true;
    for (const d of devicelets) await d.stop();
    for (const d of [...daemons].reverse()) await stopDaemon(d);
    await down({ dir, log: () => undefined });
    execFileSync("ip", ["netns", "delete", netns]);
    if (!o.keepDir && process.env.DEVICELET_LAB_KEEP !== "1") rmSync(dir, { recursive: true, force: true });
  };

  const started = Date.now();
  try {
    // Each wait in `up` and in startMetricsServer is bounded, so the start is too.
    const state = await up({ dir, log, network: { namespace: netns, address: labAddress } });
    const adminKubeconfig = path.join(dir, "kubeconfig");
    const kubectlBin = path.join(state.binDir, "kubectl");
    const kubectl = (args: readonly string[], o: RunOptions = {}) => {
      const own = args.some((a) => a.startsWith("--kubeconfig") || a.startsWith("--token"));
      return runCommand("ip", inNs(kubectlBin, own ? args : [`--kubeconfig=${adminKubeconfig}`, ...args]), o);
    };
    const kubectlOk = async (args: readonly string[], o: RunOptions = {}) => {
      const r = await kubectl(args, o);
      if (r.code !== 0) throw new Error(`kubectl ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
      return r.stdout;
    };

    await startMetricsServer({ dir, netns, binary: metricsServer, server: state.server, kubectlOk, daemons });
    log(`ready in ${((Date.now() - started) / 1000).toFixed(1)} s; logs in ${dir}`);

    const pki = path.join(dir, "pki");
    const lab: Lab = {
      id,
      dir,
      netns,
      address: labAddress,
      server: state.server,
      binDir: state.binDir,
      adminKubeconfig,
      caCert: path.join(pki, "ca.crt"),
      apiServerKubeletClient: {
        cert: path.join(pki, "apiserver-kubelet-client.crt"),
        key: path.join(pki, "apiserver-kubelet-client.key"),
      },
      run: (command, args, o) => runCommand("ip", inNs(command, args), o),
      kubectl,
      kubectlOk,
      spawnKubectl: (args, o = {}) =>
        spawn("ip", inNs(kubectlBin, [`--kubeconfig=${adminKubeconfig}`, ...args]), {
          stdio: ["pipe", "pipe", "pipe"],
          env: { ...process.env, ...o.env },
        }),
      startProcess: (name, binary, args) => {
        const daemon = startDaemon(name, binary, args, path.join(dir, "logs", `${name}.log`), netns);
        daemons.push(daemon);
        return daemon;
      },
      startDevicelet: async (o) => {
        const d = await startLabDevicelet({ ...o, dir, netns, kubectlOk });
        devicelets.push(d);
        return d;
      },
      describe,
      stop,
    };
    return lab;
  } catch (err) {
    const message = `${err instanceof Error ? err.message : String(err)}\n${describe()}`;
    await stop({ keepDir: true }).catch((e: unknown) => log(`tear-down after a failed start: ${String(e)}`));
    throw new Error(message, { cause: err });
  }
}

/**
 * Deletes lab namespaces left by runs that died before their tear-down: ours by this pid, and any
 * `devicelet-lab-<pid>` with no process left in it. A namespace with processes in it is left alone
 * (they are not ours to stop).
 */
function removeAbandonedNamespaces(own: string) {
  const names = execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => /^devicelet-lab-\d+$/.test(n));
  for (const name of names) {
    const empty = execFileSync("ip", ["netns", "pids", name], { encoding: "utf8" }).trim() === "";
    if (name === own || empty) runSync("ip", ["netns", "delete", name]);
  }
}

/**
 * metrics-server as a cluster runs it (its own ServiceAccount and RBAC, delegated authn/authz),
 * registered through the aggregation layer with a selector-less Service whose Endpoints point at
 * the lab address, since there is no pod network to run it as a pod in.
 */
async function startMetricsServer(o: {
  dir: string;
  netns: string;
  binary: string;
  server: string;
  kubectlOk: (args: readonly string[], options?: RunOptions) => Promise<string>;
  daemons: Daemon[];
}) {
  const { dir } = o;
  await o.kubectlOk(["apply", "-f", "-"], { input: metricsServerRbac });
  const token = (
    await o.kubectlOk(["create", "token", "metrics-server", "-n", "kube-system", "--duration=48h"])
  ).trim();
  const kubeconfig = path.join(dir, "metrics-server.kubeconfig");
  writeFileSync(
    kubeconfig,
    stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [
        { name: "lab", cluster: { server: o.server, "certificate-authority": path.join(dir, "pki/ca.crt") } },
      ],
      users: [{ name: "metrics-server", user: { token } }],
      contexts: [{ name: "metrics-server@lab", context: { cluster: "lab", user: "metrics-server" } }],
      "current-context": "metrics-server@lab",
    }),
  );
  const logFile = path.join(dir, "logs", "metrics-server.log");
  const daemon = startDaemon(
    "metrics-server",
    o.binary,
    [
      `--secure-port=${metricsServerPort}`,
      `--bind-address=${labAddress}`,
      `--cert-dir=${path.join(dir, "metrics-server-certs")}`,
      `--kubeconfig=${kubeconfig}`,
      `--authentication-kubeconfig=${kubeconfig}`,
      `--authorization-kubeconfig=${kubeconfig}`,
      // Device nodes advertise only an InternalIP, and a port of their own from devicelet's range.
      "--kubelet-preferred-address-types=InternalIP",
      "--kubelet-use-node-status-port",
      // devicelet's serving certificate chains to the cluster CA (signer kubernetes.io/kubelet-serving).
      `--kubelet-certificate-authority=${path.join(dir, "pki/ca.crt")}`,
      // Two scrapes 10 s apart give `kubectl top` its first CPU rate; the resolution must exceed
      // the scrape timeout (10 s by default), so that comes down to 5 s.
      "--metric-resolution=10s",
      "--kubelet-request-timeout=5s",
      "--v=2",
    ],
    logFile,
    o.netns,
  );
  o.daemons.push(daemon);
  await o.kubectlOk(["apply", "-f", "-"], { input: metricsServerRegistration });
  await waitFor(
    "metrics.k8s.io/v1beta1 through the aggregation layer",
    async () => {
      if (!isOurs(daemon)) throw new Error(`metrics-server exited:\n${tail(logFile, 10)}`);
      try {
        await o.kubectlOk(["get", "--raw", "/apis/metrics.k8s.io/v1beta1"], { timeoutMs: 10_000 });
        return true;
      } catch {
        return false;
      }
    },
    120_000,
    logFile,
  );
}

const metricsServerRbac = `apiVersion: v1
kind: ServiceAccount
metadata: { name: metrics-server, namespace: kube-system }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: "system:metrics-server" }
rules:
  - apiGroups: [""]
    resources: [nodes/metrics]
    verbs: [get]
  - apiGroups: [""]
    resources: [pods, nodes]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: "system:metrics-server" }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:metrics-server" }
subjects: [{ kind: ServiceAccount, name: metrics-server, namespace: kube-system }]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: "metrics-server:system:auth-delegator" }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator" }
subjects: [{ kind: ServiceAccount, name: metrics-server, namespace: kube-system }]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: metrics-server-auth-reader, namespace: kube-system }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader }
subjects: [{ kind: ServiceAccount, name: metrics-server, namespace: kube-system }]
`;

// Endpoints rather than an EndpointSlice: the controller-manager mirrors them into a slice, and
// either is what the aggregator resolves with --enable-aggregator-routing.
const metricsServerRegistration = `apiVersion: v1
kind: Service
metadata: { name: metrics-server, namespace: kube-system }
spec:
  ports: [{ name: https, port: 443, targetPort: ${metricsServerPort}, protocol: TCP }]
---
apiVersion: v1
kind: Endpoints
metadata: { name: metrics-server, namespace: kube-system }
subsets:
  - addresses: [{ ip: ${labAddress} }]
    ports: [{ name: https, port: ${metricsServerPort}, protocol: TCP }]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: { name: v1beta1.metrics.k8s.io }
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: { name: metrics-server, namespace: kube-system, port: 443 }
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
`;

/** The first port of devicelet's kubelet range in the lab; a fresh namespace has them all free. */
const kubeletPort = 10250;

async function startLabDevicelet(o: {
  id: string;
  provider?: Record<string, unknown>;
  providerSection?: Record<string, unknown>;
  core?: Record<string, unknown>;
  expectNodes: number;
  dir: string;
  netns: string;
  kubectlOk: (args: readonly string[], options?: RunOptions) => Promise<string>;
}): Promise<LabDevicelet> {
  const dir = path.join(o.dir, `devicelet-${o.id}`);
  mkdirSync(dir, { recursive: true });
  const configFile = path.join(dir, "config.yaml");
  const logFile = path.join(dir, "devicelet.log");
  writeFileSync(
    configFile,
    stringify({
      kubeconfig: path.join(o.dir, "devicelet.kubeconfig"),
      nodes: { extraLabels: { "devicelet.dev/test": o.id } },
      log: { level: "debug" },
      // Health endpoints on a free loopback port, so devicelets running side by side never clash.
      health: { port: 0, bindAddress: "127.0.0.1" },
      metrics: { port: 0, bindAddress: "127.0.0.1" },
      kubelet: {
        address: labAddress,
        port: kubeletPort,
        portCount: 50,
        tls: { source: "csr", csrApprove: true },
        // Short caches so a test that changes RBAC sees the change within its run.
        auth: { authorizedCacheTTLSeconds: 5, unauthorizedCacheTTLSeconds: 2 },
      },
      ...o.core,
      provider: o.providerSection ?? {
        type: "mock",
        config: { ...o.provider, stateFile: path.join(dir, "mock-state.json") },
      },
    }),
  );
  const out = openSync(logFile, "a");
  const child = spawn(
    "ip",
    [
      "netns",
      "exec",
      o.netns,
      process.execPath,
      path.join(repoRoot, "bin/devicelet.js"),
      "run",
      "--config",
      configFile,
    ],
    { stdio: ["ignore", out, out] },
  );
  if (child.pid === undefined) throw new Error("devicelet did not start");
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const nodeSelector = `devicelet.dev/test=${o.id}`;
  const logLines = () =>
    readFileSync(logFile, "utf8")
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const d: LabDevicelet = {
    id: o.id,
    dir,
    logFile,
    nodeSelector,
    pid: child.pid,
    logLines,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
  try {
    await eventually(
      async () => {
        if (child.exitCode !== null)
          throw new Error(`devicelet exited early (${child.exitCode}); see ${logFile}`);
        const nodes = JSON.parse(await o.kubectlOk(["get", "nodes", "-l", nodeSelector, "-o", "json"])) as {
          items: {
            metadata: { name: string };
            status?: { daemonEndpoints?: { kubeletEndpoint?: { Port?: number } } };
          }[];
        };
        const advertised = nodes.items.filter(
          (n) => (n.status?.daemonEndpoints?.kubeletEndpoint?.Port ?? 0) > 0,
        );
        if (advertised.length < o.expectNodes)
          throw new Error(`${advertised.length} of ${o.expectNodes} nodes advertise a kubelet port`);
        // Reachable through the node proxy: the serving certificate is issued and trusted, and
        // the API server's client certificate is let in.
        for (const n of advertised)
          await o.kubectlOk(["get", "--raw", `/api/v1/nodes/${n.metadata.name}/proxy/healthz`], {
            timeoutMs: 10_000,
          });
      },
      { timeoutMs: 60_000, intervalMs: 500 },
    );
  } catch (err) {
    await d.stop();
    throw new Error(
      `${err instanceof Error ? err.message : String(err)}\n--- ${logFile} ---\n${tail(logFile, 40)}`,
    );
  }
  return d;
}
