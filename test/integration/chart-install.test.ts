/**
 * `helm install` and `helm uninstall` of charts/devicelet against the harness control plane, as
 * cluster-admin, into a fresh namespace. There is no kubelet, so the pods stay Pending and the
 * install does not wait for them: what is checked is that the API server accepts every object the
 * chart renders (schemas, RBAC escalation rules, the PDB's selector) and that uninstall removes
 * them all, cluster-scoped ones and those in other namespaces included.
 */
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chartDir, helm, helmBinary, parseManifests, type RenderedObject } from "../support/chart.ts";
import { kubectl } from "../support/kubectl.ts";
import { adminKubeconfig, uniqueName } from "../support/testenv.ts";

const namespace = uniqueName("chart");
const kubeconfig = ["--kubeconfig", adminKubeconfig()];
const releases: string[] = [];
let binary = "";

beforeAll(async () => {
  binary = await helmBinary();
}, 900_000);

afterAll(async () => {
  for (const release of releases) {
    await helm(binary, ["uninstall", release, "-n", namespace, ...kubeconfig]).catch(() => undefined);
  }
  await kubectl(["delete", "namespace", namespace, "--ignore-not-found", "--wait=false"]);
});

const refs = (objects: readonly RenderedObject[]) => objects.map((o) => `${o.kind}/${o.metadata.name}`);

/** `Kind/name` of those of `objects` the API server holds (each in its namespace, else the release's). */
async function existing(objects: readonly RenderedObject[]): Promise<string[]> {
  const found: string[] = [];
  for (const o of objects) {
    const group = o.apiVersion.includes("/") ? `.${o.apiVersion.split("/")[0]}` : "";
    const out = await kubectl([
      "get",
      `${o.kind.toLowerCase()}${group}`,
      o.metadata.name,
      "-n",
      o.metadata.namespace ?? namespace,
      "--ignore-not-found",
      "-o",
      "name",
    ]);
    if (out.trim() !== "") found.push(`${o.kind}/${o.metadata.name}`);
  }
  return found;
}

const example = (name: string) => path.join(chartDir, "examples", name);

describe("helm install and uninstall", () => {
  it.each([
    ["the defaults", [], []],
    [
      "inline broker Secrets, a self-approved serving certificate and the heartbeat FlowSchema",
      [
        "-f",
        example("emqx-tls.yaml"),
        "--set",
        "broker.credentials.password=s3cret",
        "--set",
        "kubeletApi.tls.csr.approve=true",
        "--set",
        "apiPriority.heartbeat.enabled=true",
      ],
      ["Secret", "ClusterRole", "ClusterRoleBinding", "FlowSchema"],
    ],
  ])("%s: every object exists after install, none after uninstall", async (_, args, alsoKinds) => {
    const release = uniqueName("dl");
    releases.push(release);
    await helm(binary, [
      "install",
      release,
      chartDir,
      "-n",
      namespace,
      "--create-namespace",
      ...kubeconfig,
      ...args,
    ]);
    const manifest = parseManifests(
      await helm(binary, ["get", "manifest", release, "-n", namespace, ...kubeconfig]),
    );
    const kinds = new Set(manifest.map((o) => o.kind));
    for (const kind of [
      "Deployment",
      "ServiceAccount",
      "ConfigMap",
      "Role",
      "RoleBinding",
      "PodDisruptionBudget",
      "Service",
      ...alsoKinds,
    ]) {
      expect(kinds, `the chart renders a ${kind}`).toContain(kind);
    }
    expect(await existing(manifest)).toEqual(refs(manifest));

    // The Deployment the API server holds is the one rendered: two replicas, the config mounted.
    const deployments = JSON.parse(
      await kubectl([
        "get",
        "deployment",
        "-n",
        namespace,
        "-l",
        `app.kubernetes.io/instance=${release}`,
        "-o",
        "json",
      ]),
    ) as {
      items: {
        spec: { replicas: number; template: { spec: { volumes: { configMap?: { name: string } }[] } } };
      }[];
    };
    expect(deployments.items.map((d) => d.spec.replicas)).toEqual([2]);
    const configMaps = manifest.filter((o) => o.kind === "ConfigMap").map((o) => o.metadata.name);
    expect(deployments.items[0]?.spec.template.spec.volumes.map((v) => v.configMap?.name)).toEqual(
      expect.arrayContaining(configMaps),
    );

    await helm(binary, ["uninstall", release, "-n", namespace, "--wait", ...kubeconfig]);
    expect(await existing(manifest)).toEqual([]);
  });
});
