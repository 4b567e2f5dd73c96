/**
 * The Helm chart, rendered by the pinned Helm (v4, hack/control-plane/build-helm.sh): it lints
 * clean, every example values file renders a config devicelet itself accepts (files included,
 * through the Deployment's mounts), a bad value is refused naming it, and the generated files are
 * current: manifests/ is what the chart renders, values.schema.json carries devicelet's own schema
 * for `config`. Installing the chart is test/integration/chart-install.test.ts.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { expectedValuesSchemaText, valuesSchemaPath } from "../../hack/chart-schema.ts";
import { ConfigError } from "../../src/config/index.ts";
import {
  chartDir,
  helm,
  helmBinary,
  only,
  podSpecOf,
  renderChart,
  renderedConfigText,
  repoRoot,
  validateRenderedConfig,
  type RenderedObject,
} from "../support/chart.ts";

const run = promisify(execFile);

let binary = "";
beforeAll(async () => {
  binary = await helmBinary();
}, 900_000);

const examplesDir = path.join(chartDir, "examples");
const examples = (await readdir(examplesDir)).filter((f) => f.endsWith(".yaml")).sort();

const render = (args: readonly string[] = []) => renderChart(binary, args);

interface PolicyRule {
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  verbs: string[];
}
/** The release's state-namespace Role (release `devicelet`: its full name). */
const stateRole = "devicelet";
/** The rules of every `kind` object granting `resource`, with only their names and verbs. */
const rulesFor = (objects: readonly RenderedObject[], kind: string, resource: string) =>
  objects
    .filter((o) => o.kind === kind)
    .flatMap((o) => (o as unknown as { rules: PolicyRule[] }).rules)
    .filter((r) => r.resources?.includes(resource))
    .map(({ resourceNames, verbs }) => (resourceNames ? { resourceNames, verbs } : { verbs }));
/** Every rule on Leases, by `Kind name` of the Role (or ClusterRole) holding it. */
const leaseRules = (objects: readonly RenderedObject[]) =>
  Object.fromEntries(
    objects
      .filter((o) => o.kind === "Role" || o.kind === "ClusterRole")
      .map((o) => [`${o.kind} ${o.metadata.name}`, rulesFor([o], o.kind, "leases")] as const)
      .filter(([, rules]) => rules.length > 0),
  );
const configOf = (objects: readonly RenderedObject[]) =>
  parseYaml(renderedConfigText(objects)) as Record<string, Record<string, unknown>> & {
    provider: { type: string; config: Record<string, Record<string, unknown>> };
  };

describe("helm lint", () => {
  it("passes --strict with the defaults and with every example", async () => {
    await helm(binary, ["lint", "--strict", chartDir]);
    for (const example of examples) {
      await helm(binary, ["lint", "--strict", chartDir, "-f", path.join(examplesDir, example)]);
    }
  });
});

describe("helm template", () => {
  it.each(["(defaults)", ...examples])("%s renders a config devicelet accepts", async (example) => {
    const objects = await render(example === "(defaults)" ? [] : ["-f", path.join(examplesDir, example)]);
    const config = await validateRenderedConfig(objects);
    // The keys the chart sets agree with the Deployment: ports, replicas, namespace, identity.
    const deployment = only(objects, "Deployment") as RenderedObject & { spec: { replicas: number } };
    const ports = Object.fromEntries(
      (podSpecOf(deployment).containers[0]?.ports ?? []).map((p) => [p.name, p.containerPort]),
    );
    expect(ports).toEqual({
      health: config.health.port,
      metrics: config.metrics.port,
      kubelet: config.kubelet.port,
    });
    // More than one replica: a leader and standbys, or shards; never both.
    expect(config.leaderElection.enabled || config.sharding.enabled).toBe(deployment.spec.replicas > 1);
    expect(config.leaderElection.enabled && config.sharding.enabled).toBe(false);
    expect(config.state.namespace).toBe(deployment.metadata.namespace);
    // In the cluster: the pod's ServiceAccount, never a kubeconfig file.
    expect(config.kubeconfig).toBeUndefined();
  });

  it("renders a single replica without leader election, metrics or kubelet API", async () => {
    const set = [
      "replicaCount=1",
      "leaderElection.enabled=false",
      "metrics.enabled=false",
      "kubeletApi.enabled=false",
    ];
    const objects = await render(set.flatMap((value) => ["--set", value]));
    const config = await validateRenderedConfig(objects);
    expect([config.leaderElection.enabled, config.metrics.serve, config.kubelet.serve]).toEqual([
      false,
      false,
      false,
    ]);
    expect(objects.map((o) => o.kind)).not.toEqual(expect.arrayContaining(["Service"]));
    expect(objects.map((o) => o.kind)).not.toEqual(expect.arrayContaining(["PodDisruptionBudget"]));
    const ports = podSpecOf(only(objects, "Deployment")).containers[0]?.ports?.map((p) => p.name);
    expect(ports).toEqual(["health"]);
  });

  it("examples cover every broker and certificate option", () => {
    expect(examples).toEqual(
      expect.arrayContaining([
        "mosquitto.yaml",
        "emqx-tls.yaml",
        "hivemq-mtls.yaml",
        "cert-manager.yaml",
        "existing-secret.yaml",
        "sharded.yaml",
      ]),
    );
  });

  it("runs two replicas locked down, probed on health, with the pod's identity in its env", async () => {
    const objects = await render();
    const deployment = only(objects, "Deployment") as RenderedObject & { spec: { replicas: number } };
    expect(deployment.spec.replicas).toBe(2);
    const pod = podSpecOf(deployment);
    const container = pod.containers[0];
    expect(pod.securityContext).toMatchObject({
      runAsNonRoot: true,
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(container?.securityContext).toMatchObject({
      runAsNonRoot: true,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(container?.resources).toMatchObject({ requests: { cpu: "100m", memory: "256Mi" } });
    expect(container?.args).toEqual(["run", "--config", "/etc/devicelet/config.yaml"]);
    expect(container?.ports).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ name: "health", containerPort: 8081 }),
        expect.objectContaining({ name: "metrics", containerPort: 8080 }),
        expect.objectContaining({ name: "kubelet", containerPort: 10250 }),
      ]),
    );
    expect(container?.livenessProbe?.httpGet).toEqual({ path: "/healthz", port: "health" });
    expect(container?.readinessProbe?.httpGet).toEqual({ path: "/readyz", port: "health" });
    const env = Object.fromEntries(
      (container?.env ?? []).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]),
    );
    expect(env).toMatchObject({
      DEVICELET_POD_IP: "status.podIP",
      DEVICELET_POD_NAME: "metadata.name",
      DEVICELET_POD_NAMESPACE: "metadata.namespace",
    });
    // Writable: only the emptyDir at /tmp; everything else is mounted read-only.
    const writable = (container?.volumeMounts ?? []).filter((m) => m.readOnly !== true);
    expect(writable.map((m) => m.mountPath)).toEqual(["/tmp"]);
    expect(pod.volumes?.find((v) => v.name === writable[0]?.name)?.emptyDir).toBeDefined();
    expect(pod.serviceAccountName).toBe(only(objects, "ServiceAccount").metadata.name);
  });

  it("rolls the pods when the rendered config changes", async () => {
    const checksum = async (args: string[]) =>
      (
        only(await render(args), "Deployment") as unknown as {
          spec: { template: { metadata: { annotations: Record<string, string> } } };
        }
      ).spec.template.metadata.annotations["checksum/config"];
    const before = await checksum([]);
    expect(before).toMatch(/^[0-9a-f]{64}$/);
    expect(await checksum([])).toBe(before);
    expect(await checksum(["--set", "config.log.level=debug"])).not.toBe(before);
  });

  it("keeps a PodDisruptionBudget only while there is more than one replica", async () => {
    const pdb = only(await render(), "PodDisruptionBudget") as unknown as { spec: { minAvailable: number } };
    expect(pdb.spec.minAvailable).toBe(1);
    const single = await render(["--set", "replicaCount=1"]);
    expect(single.filter((o) => o.kind === "PodDisruptionBudget")).toEqual([]);
  });

  it("exposes metrics on a Service port named metrics, and a ServiceMonitor when asked", async () => {
    const objects = await render();
    const service = only(objects, "Service") as unknown as {
      spec: { ports: { name: string; targetPort: string }[] };
    };
    expect(service.spec.ports).toEqual([expect.objectContaining({ name: "metrics", targetPort: "metrics" })]);
    expect(objects.filter((o) => o.kind === "ServiceMonitor")).toEqual([]);
    const monitored = await render(["--set", "metrics.serviceMonitor.enabled=true"]);
    const monitor = only(monitored, "ServiceMonitor") as unknown as {
      apiVersion: string;
      spec: { endpoints: { port: string }[]; selector: { matchLabels: Record<string, string> } };
    };
    expect(monitor.apiVersion).toBe("monitoring.coreos.com/v1");
    expect(monitor.spec.endpoints.map((e) => e.port)).toEqual(["metrics"]);
    expect(only(monitored, "Service").metadata.labels).toMatchObject(monitor.spec.selector.matchLabels);
  });

  it("puts inline broker credentials and PEM into Secrets it mounts where the config points", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "devicelet-chart-pem-"));
    try {
      const ca = path.join(dir, "ca.pem");
      await writeFile(ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
      const objects = await render([
        "-f",
        path.join(examplesDir, "emqx-tls.yaml"),
        "--set",
        "broker.credentials.password=s3cret",
        "--set",
        "broker.tls.existingSecret=",
        "--set-file",
        `broker.tls.ca=${ca}`,
      ]);
      const broker = configOf(objects).provider.config.broker as {
        passwordFile: string;
        tls: { ca: string };
      };
      const secrets = objects.filter((o) => o.kind === "Secret") as unknown as {
        metadata: { name: string };
        data: Record<string, string>;
      }[];
      expect(secrets.map((s) => Object.keys(s.data))).toEqual([["password"], ["ca.crt"]]);
      expect(Buffer.from(secrets[0]?.data.password ?? "", "base64").toString()).toBe("s3cret");
      // The files the config names are those Secrets' keys, mounted.
      const pod = podSpecOf(only(objects, "Deployment"));
      const mounted = (file: string) => {
        const mount = pod.containers[0]?.volumeMounts?.find((m) => file.startsWith(`${m.mountPath}/`));
        const secret = pod.volumes?.find((v) => v.name === mount?.name)?.secret;
        const item = secret?.items?.find((i) => `${mount?.mountPath}/${i.path}` === file);
        return `${secret?.secretName}:${item?.key}`;
      };
      expect(mounted(broker.passwordFile)).toBe(`${secrets[0]?.metadata.name}:password`);
      expect(mounted(broker.tls.ca)).toBe(`${secrets[1]?.metadata.name}:ca.crt`);
      await validateRenderedConfig(objects);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("issues the kubelet API's certificate with cert-manager into the Secret the config reads", async () => {
    const objects = await render(["-f", path.join(examplesDir, "cert-manager.yaml")]);
    const certificate = only(objects, "Certificate") as unknown as {
      apiVersion: string;
      spec: { secretName: string; ipAddresses: string[]; issuerRef: { name: string } };
    };
    expect(certificate.apiVersion).toBe("cert-manager.io/v1");
    const kubelet = configOf(objects).kubelet as { address: string; tls: Record<string, unknown> };
    expect(kubelet.tls).toEqual({ source: "secret", secretName: certificate.spec.secretName });
    expect(certificate.spec.ipAddresses).toContain(kubelet.address);
    expect(certificate.spec.issuerRef.name).toBe("kubelet-ca");
  });

  it("binds the serving-certificate approver only when asked", async () => {
    const kinds = async (args: string[]) =>
      (await render(args))
        .filter((o) => o.metadata.name.endsWith("kubelet-serving-approver"))
        .map((o) => o.kind);
    expect(await kinds([])).toEqual([]);
    expect(await kinds(["--set", "kubeletApi.tls.csr.approve=true"])).toEqual([
      "ClusterRole",
      "ClusterRoleBinding",
    ]);
    const config = configOf(await render(["--set", "kubeletApi.tls.csr.approve=true"]));
    expect((config.kubelet as { tls: { csrApprove: boolean } }).tls.csrApprove).toBe(true);
  });

  it("puts the heartbeats of devicelet's ServiceAccount in the kubelets' priority level only when asked", async () => {
    expect((await render()).filter((o) => o.kind === "FlowSchema")).toEqual([]);
    const schema = only(
      await render(["--set", "apiPriority.heartbeat.enabled=true", "--set", "serviceAccount.name=dl-sa"]),
      "FlowSchema",
    ) as unknown as {
      metadata: { name: string };
      spec: {
        matchingPrecedence: number;
        priorityLevelConfiguration: { name: string };
        rules: {
          subjects: { kind: string; serviceAccount: { name: string; namespace: string } }[];
          resourceRules: {
            apiGroups: string[];
            resources: string[];
            namespaces?: string[];
            clusterScope?: boolean;
          }[];
        }[];
      };
    };
    expect(schema.metadata.name).toBe("devicelet-heartbeat");
    expect(schema.spec.priorityLevelConfiguration.name).toBe("node-high");
    // Ahead of the built-in `service-accounts` schema (9000) that would take these requests otherwise.
    expect(schema.spec.matchingPrecedence).toBeLessThan(9000);
    const [rule] = schema.spec.rules;
    expect(rule?.subjects).toEqual([
      { kind: "ServiceAccount", serviceAccount: { name: "dl-sa", namespace: "devicelet" } },
    ]);
    expect(
      rule?.resourceRules.map(({ apiGroups, resources, namespaces, clusterScope }) => ({
        apiGroups,
        resources,
        where: namespaces ?? (clusterScope ? "cluster" : "none"),
      })),
    ).toEqual([
      { apiGroups: ["coordination.k8s.io"], resources: ["leases"], where: ["kube-node-lease"] },
      { apiGroups: [""], resources: ["nodes", "nodes/status"], where: "cluster" },
    ]);
  });

  it("with sharding, renders the sharding section and grants Leases by any name in the state namespace only", async () => {
    const objects = await render(["-f", path.join(examplesDir, "sharded.yaml")]);
    const config = await validateRenderedConfig(objects);
    expect(config.sharding).toEqual({ enabled: true, shards: 64, leasePrefix: "devicelet" });
    expect(config.leaderElection.enabled).toBe(false);
    expect((only(objects, "Deployment") as unknown as { spec: { replicas: number } }).spec.replicas).toBe(4);
    // The member and shard Leases have names known only at run time: no resourceNames. What
    // src/shard calls (get, list, create, replace, delete), and no leader Lease rule.
    expect(leaseRules(objects)).toEqual({
      [`Role ${stateRole}`]: [{ verbs: ["get", "list", "create", "update", "delete"] }],
      "Role devicelet-node-lease": [{ verbs: ["create", "patch"] }],
    });
    // src/shard/relabel.ts: lists devicelet's nodes and merge-patches their shard label.
    expect(rulesFor(objects, "ClusterRole", "nodes")).toEqual([
      expect.objectContaining({ verbs: expect.arrayContaining(["list", "patch"]) as unknown }),
    ]);
  });

  it("without sharding, renders no sharding section and grants only the leader Lease by name", async () => {
    const objects = await render();
    expect(Object.keys(parseYaml(renderedConfigText(objects)) as object)).not.toContain("sharding");
    expect((await validateRenderedConfig(objects)).sharding.enabled).toBe(false);
    expect(leaseRules(objects)).toEqual({
      [`Role ${stateRole}`]: [
        { verbs: ["create"] },
        { resourceNames: ["devicelet"], verbs: ["get", "update"] },
      ],
      "Role devicelet-node-lease": [{ verbs: ["create", "patch"] }],
    });
  });

  it("names the shard Leases after the release unless leasePrefix is set", async () => {
    const prefix = async (release: string, args: string[] = []) =>
      (
        await validateRenderedConfig(
          await renderChart(binary, ["-f", path.join(examplesDir, "sharded.yaml"), ...args], { release }),
        )
      ).sharding.leasePrefix;
    expect(await prefix("edge")).toBe("edge-devicelet");
    // A DNS label of at most 40 characters, with no dash at the end.
    expect(await prefix("plant.a-very-long-release-name-for-the-fleet")).toBe(
      "plant-a-very-long-release-name-for-the-f",
    );
    expect(await prefix("edge-fleet-0123456789-0123456789-012345")).toBe(
      "edge-fleet-0123456789-0123456789-012345",
    );
    expect(await prefix("edge", ["--set", "sharding.leasePrefix=fleet-a"])).toBe("fleet-a");
  });

  it("ships the Grafana dashboard in a labelled ConfigMap when enabled", async () => {
    const dashboard = path.join(chartDir, "dashboards/devicelet.json");
    expect((await render()).filter((o) => o.metadata.name.endsWith("-dashboard"))).toEqual([]);
    if (!existsSync(dashboard)) {
      await expect(render(["--set", "grafanaDashboard.enabled=true"])).rejects.toThrow(
        /dashboards\/devicelet\.json/,
      );
      return;
    }
    const configMap = only(
      await render(["--set", "grafanaDashboard.enabled=true"]),
      "ConfigMap",
      "devicelet-dashboard",
    ) as unknown as {
      metadata: { labels: Record<string, string> };
      data: Record<string, string>;
    };
    expect(configMap.metadata.labels.grafana_dashboard).toBe("1");
    expect(JSON.parse(configMap.data["devicelet.json"] ?? "")).toEqual(
      JSON.parse(await readFile(dashboard, "utf8")),
    );
  });
});

describe("bad values", () => {
  it.each([
    [["--set", "broker.url=http://broker:1883"], "/broker/url"],
    [["--set", "replicaCount=two"], "/replicaCount"],
    [["--set", "kubeletApi.tls.source=acme"], "/kubeletApi/tls/source"],
    [["--set", "kubeletApi.portCount=0"], "/kubeletApi/portCount"],
    [["--set", "config.health.port=9000"], "'health' not allowed"],
    [["--set", "imagee.tag=x"], "'imagee' not allowed"],
    [["--set", "broker.credentials.pasword=x"], "'pasword' not allowed"],
    [["--set", "metrics.serviceMonitor.interval=often"], "/metrics/serviceMonitor/interval"],
    [["--set", "devices.allow[0]=Plant A"], "/devices/allow/0"],
    // devicelet's own schema, spliced into values.schema.json (hack/chart-schema.ts):
    [["--set", "config.api.qps=0"], "/config/api/qps"],
    [["--set", "config.nodes.namePrefix=Dev_"], "/config/nodes/namePrefix"],
    [["--set", "config.lease.renewEverySeconds=5"], "'renewEverySeconds' not allowed"],
    [["--set", "sharding.shards=0"], "/sharding/shards"],
    [["--set", "sharding.shards=4097"], "/sharding/shards"],
    [["--set", "sharding.leasePrefix=Fleet_A"], "/sharding/leasePrefix"],
    [["--set", "sharding.leasePrefix=a-prefix-longer-than-forty-characters-xyz"], "/sharding/leasePrefix"],
    [["--set", "config.sharding.enabled=true"], "'sharding' not allowed"],
  ])("values.schema.json refuses %j naming %s", async (args, named) => {
    await expect(render(args)).rejects.toThrow(named);
  });

  it.each([
    [
      ["--set", "leaderElection.enabled=false"],
      "replicaCount > 1 needs leaderElection.enabled or sharding.enabled",
    ],
    [["--set", "sharding.enabled=true"], "sharding.enabled and leaderElection.enabled are exclusive"],
    [["--set", "kubeletApi.tls.source=certManager"], "kubeletApi.tls.certManager.issuerRef.name is required"],
    [["--set", "kubeletApi.tls.source=secret"], "kubeletApi.tls.secret.name is required"],
    [["--set", "broker.tls.ca=PEM"], "broker.tls is set, but broker.url"],
    [
      ["--set", "config.provider.config.broker.url=mqtt://x:1883"],
      "config.provider.config.broker.url is set by the chart",
    ],
  ])("the templates refuse %j naming %s", async (args, named) => {
    await expect(render(args)).rejects.toThrow(named);
  });

  it("a value the chart passes on but devicelet refuses fails validation, naming the key", async () => {
    // provider.config is a free object to the chart: only the provider's own schema knows it.
    const objects = await render(["--set", "config.provider.config.desired.debounceMs=-1"]);
    const error = await validateRenderedConfig(objects).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems.map((p) => p.path)).toEqual([
      "/provider/config/desired/debounceMs",
    ]);
  });

  it("a config naming a file that no mount provides fails validation", async () => {
    const objects = await render(["-f", path.join(examplesDir, "existing-secret.yaml")]);
    await validateRenderedConfig(objects);
    // The same objects, with the broker's TLS Secret no longer mounted.
    const unmounted = structuredClone(objects);
    const pod = podSpecOf(only(unmounted, "Deployment"));
    const container = pod.containers[0];
    if (container) container.volumeMounts = container.volumeMounts?.filter((m) => m.name !== "broker-tls");
    const error = await validateRenderedConfig(unmounted).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems.map((p) => p.path).sort()).toEqual([
      "/provider/config/broker/tls/ca",
      "/provider/config/broker/tls/cert",
      "/provider/config/broker/tls/key",
    ]);
  });
});

describe("generated files", () => {
  it("values.schema.json carries devicelet's own schema for config (run node hack/chart-schema.ts)", async () => {
    expect(await readFile(valuesSchemaPath, "utf8"), "run node hack/chart-schema.ts").toBe(
      await expectedValuesSchemaText(),
    );
  });

  it("manifests/ is what the chart renders (run hack/manifests.sh after a chart change)", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "devicelet-manifests-"));
    try {
      await run("bash", [path.join(repoRoot, "hack/manifests.sh"), dir]);
      const generated = (await readdir(dir)).toSorted();
      const committed = (await readdir(path.join(repoRoot, "manifests"))).toSorted();
      expect(committed, "manifests/ holds only generated files").toEqual(generated);
      for (const name of generated) {
        expect(
          await readFile(path.join(repoRoot, "manifests", name), "utf8"),
          `manifests/${name} is out of date: run hack/manifests.sh`,
        ).toBe(await readFile(path.join(dir, name), "utf8"));
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
