/**
 * The Helm chart's RBAC, proven against the real API server. A real `helm install` of
 * charts/devicelet into a fresh namespace of the harness (its pods stay Pending: the harness has no
 * kubelet), then:
 * - `kubectl auth can-i --list` as the chart's ServiceAccount (authenticated with its token), in a
 *   namespace devicelet has nothing in, in the state namespace and in kube-node-lease: the granted
 *   set equals the expected set exactly (an extra verb fails), no Secret list or watch anywhere, no
 *   ConfigMap write outside the state namespace;
 * - the conformance kit's engine scenarios, with devicelet on a token of that ServiceAccount and
 *   the config the chart rendered (only its provider, ports and the kubelet API swapped for local
 *   ones): all pass with exactly the chart's RBAC;
 * - the API server's audit log of that run: nothing was refused, and every granted verb was used
 *   or is named below with the code path that needs it outside the scenarios.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import pino from "pino";
import { createMockProvider, type MockProvider } from "../../providers/mock/index.ts";
import { createKubeClient, EventRecorder } from "../../src/kube/index.ts";
import { ConfigMapStore } from "../../src/state/configmap-store.ts";
import { describeEngineConformance, type ProviderTarget } from "devicelet/provider/testing";
import { helmBinary } from "../../src/testing/controlplane/rbac.ts";
import { eventually } from "../support/eventually.ts";
import { kubectl } from "../support/kubectl.ts";
import { adminKubeconfig, testenvDir, uniqueName, writeTokenKubeconfig } from "../support/testenv.ts";

const run = promisify(execFile);
const packageRoot = path.resolve(import.meta.dirname, "../..");
const release = uniqueName("rbac");
/** The release namespace: the chart's state namespace. */
const ns = release;
const fullname = `${release}-devicelet`;
/** A namespace devicelet keeps nothing in: what it may do here it may do in every namespace. */
const elsewhere = uniqueName("rbac-elsewhere");
const serviceAccount = `system:serviceaccount:${ns}:${fullname}`;
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-chart-rbac-"));
const tokenKubeconfig = path.join(dir, "kubeconfig");
let chartConfig: Record<string, unknown> = {};
let installed = false;

const helm = async (args: readonly string[]) =>
  (await run(helmBinary(packageRoot), [...args, `--kubeconfig=${adminKubeconfig()}`])).stdout;

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  await kubectl(["create", "namespace", elsewhere]);
  await helm(["install", release, path.join(packageRoot, "charts/devicelet"), `--namespace=${ns}`]);
  installed = true;
  const token = (await kubectl(["create", "token", fullname, "-n", ns, "--duration=2h"])).trim();
  writeTokenKubeconfig(tokenKubeconfig, fullname, token);
  const rendered = await kubectl([
    "get",
    "configmap",
    fullname,
    "-n",
    ns,
    "-o",
    "jsonpath={.data.config\\.yaml}",
  ]);
  chartConfig = parse(rendered) as Record<string, unknown>;
}, 180_000);

afterAll(async () => {
  if (installed) await helm(["uninstall", release, `--namespace=${ns}`]);
  await kubectl(["delete", "namespace", ns, elsewhere, "--wait=false", "--ignore-not-found"]);
}, 60_000);

/** `kubectl auth can-i --list` as "resource verb" and "resource[name] verb" lines. */
async function canIList(
  namespace: string,
  as: { kubeconfig: string } | { user: string },
): Promise<Set<string>> {
  const args = ["auth", "can-i", "--list", "-n", namespace];
  const out =
    "kubeconfig" in as
      ? await kubectl(args, { kubeconfig: as.kubeconfig })
      : await kubectl([...args, `--as=${as.user}`]);
  const [header = "", ...rows] = out.split("\n");
  const urls = header.indexOf("Non-Resource URLs");
  const names = header.indexOf("Resource Names");
  const verbs = header.indexOf("Verbs");
  const words = (s: string) =>
    s
      .trim()
      .replace(/^\[|\]$/g, "")
      .split(" ")
      .filter(Boolean);
  const grants = new Set<string>();
  for (const row of rows) {
    const resource = row.slice(0, urls).trim();
    if (!resource) continue; // non-resource URLs (discovery, health), granted to everyone
    const resourceNames = words(row.slice(names, verbs));
    for (const verb of words(row.slice(verbs)))
      for (const name of resourceNames.length > 0 ? resourceNames : [""])
        grants.add(name ? `${resource}[${name}] ${verb}` : `${resource} ${verb}`);
  }
  return grants;
}

/** What the chart's ServiceAccount may do in `namespace`, less what every ServiceAccount there may. */
async function chartGrants(namespace: string): Promise<string[]> {
  const granted = await canIList(namespace, { kubeconfig: tokenKubeconfig });
  const everyone = await canIList(namespace, { user: `system:serviceaccount:${ns}:default` });
  return [...granted].filter((g) => !everyone.has(g)).sort();
}

const verbs = (resource: string, ...vs: string[]) => vs.map((v) => `${resource} ${v}`);
const CSR = "certificatesigningrequests.certificates.k8s.io";
const LEASES = "leases.coordination.k8s.io";

/** The ClusterRole: in every namespace (and for cluster-scoped resources). */
const clusterWide = [
  ...verbs("nodes", "get", "list", "watch", "create", "patch", "delete"),
  ...verbs("nodes/status", "patch"),
  ...verbs("pods", "list", "watch", "delete"),
  ...verbs("pods/status", "patch"),
  ...verbs("configmaps", "get", "list", "watch"),
  ...verbs("secrets", "get"),
  ...verbs("events", "create", "patch"),
  ...verbs("tokenreviews.authentication.k8s.io", "create"),
  ...verbs("subjectaccessreviews.authorization.k8s.io", "create"),
  ...verbs(CSR, "create", "get"),
];
/** The state namespace's Role, on top. */
const stateOnly = () => [
  ...verbs("namespaces", "get"),
  ...verbs("configmaps", "create", "update", "patch", "delete"),
  ...verbs(LEASES, "create"),
  ...verbs(`${LEASES}[${fullname}]`, "get", "update"),
  ...verbs("secrets", "create"),
  ...verbs(`secrets[${fullname}-kubelet-serving]`, "update"),
];
/** The kube-node-lease Role, on top. */
const nodeLeaseOnly = verbs(LEASES, "create", "patch");

describe("kubectl auth can-i --list for the chart's ServiceAccount", () => {
  it("grants exactly the expected set in an unrelated namespace, the state namespace and kube-node-lease", async () => {
    expect(await chartGrants(elsewhere)).toEqual([...clusterWide].sort());
    expect(await chartGrants(ns)).toEqual([...clusterWide, ...stateOnly()].sort());
    expect(await chartGrants("kube-node-lease")).toEqual([...clusterWide, ...nodeLeaseOnly].sort());
  });

  it("never lists or watches Secrets, and writes ConfigMaps only in the state namespace", async () => {
    const canI = async (...args: string[]) =>
      (
        await kubectl(["auth", "can-i", ...args], { kubeconfig: tokenKubeconfig }).catch(
          (err: unknown) => (err as { stdout?: string }).stdout ?? "",
        )
      ).trim();
    for (const verb of ["list", "watch"]) {
      expect(await canI(verb, "secrets", "--all-namespaces")).toBe("no");
      for (const namespace of [ns, elsewhere, "kube-system"])
        expect(await canI(verb, "secrets", "-n", namespace)).toBe("no");
    }
    for (const verb of ["create", "update", "patch", "delete"]) {
      expect(await canI(verb, "configmaps", "-n", "kube-system")).toBe("no");
      expect(await canI(verb, "configmaps", "-n", elsewhere)).toBe("no");
    }
    expect(await canI("update", "configmaps", "-n", ns)).toBe("yes");
    expect(await canI("delete", "configmaps", "-n", ns)).toBe("yes");
    expect(await canI("update", "secrets", "-n", ns)).toBe("no");
    expect(await canI("update", `secrets/${fullname}-kubelet-serving`, "-n", ns)).toBe("yes");
    expect(await canI("update", "leases/some-other-controller", "-n", ns)).toBe("no");
  });
});

// The conformance kit's engine scenarios, as conformance-engine-mock.test.ts runs them, with
// devicelet on the chart's ServiceAccount and the chart's rendered config.
const stateFile = path.join(dir, "mock-state.json");
const devices = ["dev-0", "dev-1"] as const;
const target: ProviderTarget<MockProvider> = {
  name: "mock-chart-rbac",
  devices,
  image: "example/app:1",
  create: (context) =>
    createMockProvider({ devices: devices.map((id) => ({ id })), appStartDelayMs: 100, stateFile }, context),
  setDeviceOnline: async (provider, id, online) => {
    provider.setConnected(id, online);
    await eventually(async () =>
      expect((await provider.listDevices()).find((d) => d.id === id)?.connected).toBe(online),
    );
  },
};

/**
 * The chart's config, adjusted only for running here: the kit's provider instead of MQTT, health
 * and metrics on free loopback ports, no kubelet API (its verbs, the same rules, are exercised by
 * kubelet-auth.test.ts and kubelet-tls.test.ts under the harness's copy of this RBAC), and leader
 * election (on, with the chart's Lease) timed to fit inside the kit's short node lease (10 s).
 */
function localConfig(): Record<string, unknown> {
  const { provider: _provider, ...config } = chartConfig;
  const kubelet = (config.kubelet ?? {}) as Record<string, unknown>;
  const leaderElection = (config.leaderElection ?? {}) as Record<string, unknown>;
  return {
    ...config,
    health: { serve: true, port: 0, bindAddress: "127.0.0.1" },
    metrics: { serve: false, port: 0, bindAddress: "127.0.0.1" },
    kubelet: { ...kubelet, serve: false },
    leaderElection: {
      ...leaderElection,
      leaseDurationSeconds: 4,
      renewDeadlineSeconds: 3,
      retryPeriodSeconds: 1,
    },
  };
}

describeEngineConformance(target, {
  controlPlaneDir: testenvDir,
  devicelet: () => ({ kubeconfig: tokenKubeconfig, config: localConfig() }),
});

// The mock provider keeps its state in a file and records no Events: the state store (what the
// MQTT provider keeps its generation high-water marks in) and the Event recorder, run here with
// the chart's ServiceAccount, reach the verbs the scenarios leave out.
describe("the state store and Events under the chart's ServiceAccount", () => {
  it("keeps state in ConfigMaps of the state namespace and records, then aggregates, an Event", async () => {
    const logger = pino({ level: "silent" });
    const kube = createKubeClient({ kubeconfigPath: tokenKubeconfig, qps: 50, burst: 100, logger });
    try {
      const store = new ConfigMapStore(kube, ns);
      await store.set("chart-rbac.a", "1"); // merge patch: 404, then create
      await store.set("chart-rbac.a", "2"); // merge patch
      await store.update("chart-rbac.a", () => "3"); // get, then replace
      expect(await new ConfigMapStore(kube, ns).entries("chart-rbac.")).toEqual(
        new Map([["chart-rbac.a", "3"]]),
      );

      const events = new EventRecorder({ client: kube, logger });
      const object = {
        apiVersion: "v1",
        kind: "Pod",
        namespace: elsewhere,
        name: "app",
        uid: "uid-chart-rbac",
      };
      events.warning(object, "ChartRbac", "first");
      await events.flush();
      events.warning(object, "ChartRbac", "again"); // within the aggregation window: a patch
      await events.flush();
      const list = await kubectl(["get", "events", "-n", elsewhere, "-o", "jsonpath={.items[*].count}"]);
      expect(list.trim()).toBe("2");
      await events.close();
    } finally {
      await kube.close();
    }
  });
});

/**
 * Granted verbs the scenarios do not reach, each with the code path that needs it (and the test
 * that exercises it under the harness's copy of the chart's RBAC). A key that is no longer granted
 * fails the test, so this list cannot hide a stale grant.
 */
const usedElsewhere: Record<string, string> = {
  "nodes delete":
    "src/node/controller.ts: the Node of a device its provider reports gone for good (device-gone.test.ts)",
  "nodes patch":
    "src/node/status-writer.ts: the transport's NoSchedule taint (outage-broker.test.ts), and the in-sync label when the status has nothing new to write; src/node/registration.ts: adopting an earlier run's Node",
  "nodes get":
    "src/node/registration.ts: a device whose Node already exists, not in the cache (node-trust.test.ts)",
  "configmaps delete":
    "src/state/configmap-store.ts: a decommissioned device's state, an emptied command queue (protocol-decommission.test.ts)",
  "secrets get": "src/pod/secret-cache.ts: Secrets pods refer to (secrets-e2e.test.ts); src/kubelet/tls*.ts",
  "secrets create": "src/kubelet/tls-csr.ts: the issued serving certificate stored (kubelet-tls.test.ts)",
  "secrets update": "src/kubelet/tls-csr.ts: a renewed serving certificate stored (kubelet-tls.test.ts)",
  "tokenreviews.authentication.k8s.io create":
    "src/kubelet/auth.ts: a kubelet API caller (kubelet-auth.test.ts)",
  "subjectaccessreviews.authorization.k8s.io create": "src/kubelet/auth.ts (kubelet-auth.test.ts)",
  [`${CSR} create`]: "src/kubelet/tls-csr.ts: the serving certificate request (kubelet-tls.test.ts)",
  [`${CSR} get`]: "src/kubelet/tls-csr.ts: polling the request until issued (kubelet-tls.test.ts)",
};

interface AuditEntry {
  stage: string;
  stageTimestamp: string;
  verb: string;
  user: { username: string };
  userAgent?: string;
  objectRef?: { resource?: string; subresource?: string; apiGroup?: string };
  responseStatus?: { code?: number };
}

describe("the API server's audit log of that run", () => {
  it("shows nothing refused, and every granted verb used or named with the code path that needs it", async () => {
    const log = path.join(testenvDir, "audit.log");
    // The audit log is written in batches: a request made now shows up once all before it has.
    const marker = new Date().toISOString();
    await kubectl(["get", "namespace", ns, "-o", "name"]);
    const entries = await eventually(() => {
      const all = readFileSync(log, "utf8")
        .split("\n")
        .filter((line) => line.includes(ns))
        .flatMap((line) => {
          try {
            return [JSON.parse(line) as AuditEntry];
          } catch {
            return [];
          }
        });
      expect(all.some((e) => e.user.username !== serviceAccount && e.stageTimestamp >= marker)).toBe(true);
      return all.filter((e) => e.user.username === serviceAccount && e.stage === "ResponseComplete");
    });
    expect(entries.length).toBeGreaterThan(0);
    expect(
      entries
        .filter((e) => e.responseStatus?.code === 403)
        .map((e) => `${e.verb} ${JSON.stringify(e.objectRef)}`),
    ).toEqual([]);

    // As `kubectl auth can-i --list` names them: `resource[.group][/subresource]`.
    const name = ({ objectRef: r = {} }: AuditEntry) =>
      `${r.resource ?? ""}${r.apiGroup ? `.${r.apiGroup}` : ""}${r.subresource ? `/${r.subresource}` : ""}`;
    // devicelet's requests; this file's own `kubectl auth can-i` (reviews of itself, discovery) aside.
    const used = new Set(
      entries.filter((e) => !e.userAgent?.startsWith("kubectl/")).map((e) => `${name(e)} ${e.verb}`),
    );
    // Watches are in the log only with the harness's audit policy of this version (a control
    // plane started by an older one logs none): then a list stands for its watch.
    const watchesLogged = readFileSync(path.join(testenvDir, "audit-policy.yaml"), "utf8").includes(
      "userGroups: [system:serviceaccounts]",
    );
    const granted = new Set(
      [...clusterWide, ...stateOnly(), ...nodeLeaseOnly].map((g) => g.replace(/\[[^\]]*\]/, "")),
    );
    const unused = [...granted].filter(
      (g) =>
        !used.has(g) &&
        !(g in usedElsewhere) &&
        !(!watchesLogged && g.endsWith(" watch") && used.has(g.replace(/ watch$/, " list"))),
    );
    expect(unused).toEqual([]);
    expect(Object.keys(usedElsewhere).filter((g) => !granted.has(g))).toEqual([]);
    // Nothing used that the chart does not grant (a refusal would be a 403 above; this names it).
    expect([...used].filter((u) => !granted.has(u))).toEqual([]);
  });
});
