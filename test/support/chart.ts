/**
 * The Helm chart (charts/devicelet) under test: the pinned Helm binary (built from the Go module
 * proxy and cached by hack/control-plane/build-helm.sh), `helm template` parsed into objects, and
 * the rendered devicelet config checked with devicelet's own parser.
 *
 * ```ts
 * const helm = await helmBinary();
 * const objects = await renderChart(helm, ["-f", "charts/devicelet/examples/mosquitto.yaml"]);
 * await validateRenderedConfig(objects); // throws ConfigError naming every problem
 * ```
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { resolveProvider } from "../../src/cli/providers.ts";
import { parseConfig, type DeviceletConfig } from "../../src/config/index.ts";

const run = promisify(execFile);

export const repoRoot = path.resolve(import.meta.dirname, "../..");
export const chartDir = path.join(repoRoot, "charts/devicelet");

/** Path of the pinned Helm binary; builds it on first use (minutes), then answers at once. */
export async function helmBinary(): Promise<string> {
  const { stdout } = await run("bash", [path.join(repoRoot, "hack/control-plane/build-helm.sh")], {
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout.trim().split("\n").at(-1) ?? "";
}

/** Helm's own state (repository cache, registry config) kept out of the user's home. */
const helmHome = path.join(tmpdir(), "devicelet-test-helm-home");
const helmEnv = {
  ...process.env,
  HELM_CACHE_HOME: path.join(helmHome, "cache"),
  HELM_CONFIG_HOME: path.join(helmHome, "config"),
  HELM_DATA_HOME: path.join(helmHome, "data"),
};

/** Runs helm; resolves with stdout, rejects with an Error whose message carries stderr. */
export async function helm(binary: string, args: readonly string[]): Promise<string> {
  try {
    const { stdout } = await run(binary, args, { env: helmEnv, maxBuffer: 64 * 1024 * 1024, cwd: repoRoot });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`helm ${args.join(" ")}: ${e.stderr || e.message}`);
  }
}

/** A Kubernetes object as `helm template` renders it (loosely typed: tests read what they need). */
export interface RenderedObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: {
    readonly name: string;
    readonly namespace?: string;
    readonly labels?: Readonly<Record<string, string>>;
    readonly [k: string]: unknown;
  };
  readonly [k: string]: unknown;
}

/** `helm template <release> charts/devicelet -n <namespace> <args>`, parsed into objects. */
export async function renderChart(
  binary: string,
  args: readonly string[] = [],
  options: { release?: string; namespace?: string } = {},
): Promise<RenderedObject[]> {
  const text = await helm(binary, [
    "template",
    options.release ?? "devicelet",
    chartDir,
    "--namespace",
    options.namespace ?? "devicelet",
    ...args,
  ]);
  return parseManifests(text);
}

export const parseManifests = (text: string): RenderedObject[] =>
  parseAllDocuments(text)
    .map((d) => d.toJS() as RenderedObject | null)
    .filter((o): o is RenderedObject => o !== null);

/** The one object of `kind` (and `name`, when given); throws when there is none or several. */
export function only(objects: readonly RenderedObject[], kind: string, name?: string): RenderedObject {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1)
    throw new Error(`expected one ${kind}${name ? ` ${name}` : ""}, found ${found.length}`);
  return found[0] as RenderedObject;
}

/** What the Deployment's pod spec looks like, as far as these tests read it. */
export interface PodSpec {
  containers: {
    name: string;
    args?: string[];
    env?: { name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
    ports?: { name: string; containerPort: number }[];
    volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
    livenessProbe?: { httpGet?: { path: string; port: string | number } };
    readinessProbe?: { httpGet?: { path: string; port: string | number } };
    securityContext?: Record<string, unknown>;
    resources?: Record<string, unknown>;
  }[];
  volumes?: {
    name: string;
    configMap?: { name: string; items?: { key: string; path: string }[] };
    secret?: { secretName: string; items?: { key: string; path: string }[] };
    emptyDir?: Record<string, unknown>;
  }[];
  securityContext?: Record<string, unknown>;
  serviceAccountName?: string;
}

export const podSpecOf = (deployment: RenderedObject): PodSpec =>
  (deployment as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;

/** The devicelet config file text the Deployment mounts at /etc/devicelet/config.yaml. */
export function renderedConfigText(objects: readonly RenderedObject[]): string {
  const pod = podSpecOf(only(objects, "Deployment"));
  const mount = pod.containers[0]?.volumeMounts?.find((m) => m.mountPath === "/etc/devicelet");
  const volume = pod.volumes?.find((v) => v.name === mount?.name);
  const item = volume?.configMap?.items?.find((i) => i.path === "config.yaml");
  if (!volume?.configMap || !item) throw new Error("the Deployment mounts no config.yaml at /etc/devicelet");
  const configMap = only(objects, "ConfigMap", volume.configMap.name) as unknown as {
    data: Record<string, string>;
  };
  const text = configMap.data[item.key];
  if (text === undefined) throw new Error(`ConfigMap ${volume.configMap.name} has no key ${item.key}`);
  return text;
}

/**
 * Validates the rendered config as `devicelet run` would inside the pod: the core schema, the
 * provider's schema and every rule, files included. Files exist in the pod only where the
 * Deployment mounts Secrets, so each Secret volume's items are written into a temporary folder
 * (the content of a Secret the chart renders, a placeholder for an existing one) and the config's
 * paths under those mount points are pointed there; any other path is checked as it stands, so a
 * config naming a file no mount provides fails here.
 */
export async function validateRenderedConfig(objects: readonly RenderedObject[]): Promise<DeviceletConfig> {
  const pod = podSpecOf(only(objects, "Deployment"));
  const root = await mkdtemp(path.join(tmpdir(), "devicelet-chart-mounts-"));
  try {
    const mounts: { mountPath: string; local: string }[] = [];
    for (const mount of pod.containers[0]?.volumeMounts ?? []) {
      const secret = pod.volumes?.find((v) => v.name === mount.name)?.secret;
      if (!secret) continue;
      const local = path.join(root, mount.name);
      await mkdir(local, { recursive: true });
      const rendered = objects.find((o) => o.kind === "Secret" && o.metadata.name === secret.secretName) as
        { data?: Record<string, string> } | undefined;
      for (const item of secret.items ?? []) {
        const data = rendered?.data?.[item.key];
        if (rendered && data === undefined) {
          throw new Error(
            `Secret ${secret.secretName} has no key ${item.key} that ${mount.mountPath} mounts`,
          );
        }
        await writeFile(
          path.join(local, item.path),
          data === undefined ? `placeholder for ${item.key}` : Buffer.from(data, "base64"),
        );
      }
      mounts.push({ mountPath: mount.mountPath, local });
    }
    const local = (value: unknown): unknown => {
      if (typeof value === "string") {
        const m = mounts.find((x) => value.startsWith(`${x.mountPath}/`));
        return m ? m.local + value.slice(m.mountPath.length) : value;
      }
      if (Array.isArray(value)) return value.map(local);
      if (typeof value === "object" && value !== null) {
        return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, local(v)]));
      }
      return value;
    };
    const text = renderedConfigText(objects);
    const type = (parseYaml(text) as { provider?: { type?: string } }).provider?.type ?? "";
    const plugin = await resolveProvider(type);
    return parseConfig(JSON.stringify(local(parseYaml(text))), "rendered config.yaml", {
      providerSchemas: { [type]: plugin.configSchema },
    });
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
