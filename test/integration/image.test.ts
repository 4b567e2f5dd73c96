/**
 * The container image, built without a container engine (hack/image/build.sh: buildah on a
 * debootstrap base) and run as a runtime would run it, from its own config: the layers unpacked,
 * the root filesystem read-only, the image's user, environment, working folder and entrypoint
 * (hack/image/oci.ts). The image's devicelet answers `--version`, lists every problem of a bad
 * config, and registers nodes against the harness API server as the chart's Deployment would.
 * Needs root, as CI has it; the first build on a machine takes a minute or two (debootstrap), later
 * ones reuse the cached base.
 */
import { execFile } from "node:child_process";
import {
  chmodSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { runImage, startImage, unpackImage, type UnpackedImage } from "../../hack/image/oci.ts";
import { eventually } from "../support/eventually.ts";
import { getJson } from "../support/kubectl.ts";
import { deviceletKubeconfig, uniqueName } from "../support/testenv.ts";

const root = path.resolve(import.meta.dirname, "../..");
const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")) as {
  version: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
const work = mkdtempSync(path.join(os.tmpdir(), "devicelet-image-"));
let image: UnpackedImage;

beforeAll(async () => {
  const started = Date.now();
  const { stdout, stderr } = await promisify(execFile)(
    path.join(root, "hack/image/build.sh"),
    ["--output", path.join(work, "devicelet-image.tar")],
    { maxBuffer: 16 << 20 },
  );
  // How long the image build takes here (cold: debootstrap and npm ci; warm: both cached).
  console.log(`hack/image/build.sh took ${Math.round((Date.now() - started) / 1000)} s\n${stderr}`);
  image = unpackImage(stdout.trim(), path.join(work, "image"));
}, 900_000);

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

/** A folder that uid 1000 can read, bound read-only at /etc/devicelet as the chart's ConfigMap is. */
function configVolume(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(work, "etc-devicelet-"));
  chmodSync(dir, 0o755);
  for (const [name, text] of Object.entries(files))
    writeFileSync(path.join(dir, name), text, { mode: 0o644 });
  return dir;
}

describe("the container image", () => {
  it("has the Dockerfile's entrypoint, command, user, working folder and environment", () => {
    expect(image.ref).toBe(`devicelet:${pkg.version}`);
    expect(image.config.Entrypoint).toEqual(["devicelet"]);
    expect(image.config.Cmd).toEqual(["run", "--config", "/etc/devicelet/config.yaml"]);
    expect(image.config.User).toBe("1000:1000");
    expect(image.config.WorkingDir).toBe("/app");
    expect(image.config.Env).toContain("NODE_ENV=production");
    // bin/devicelet.js would otherwise start again to set them (glibc's malloc thresholds).
    expect(image.config.Env).toEqual(
      expect.arrayContaining(["MALLOC_MMAP_THRESHOLD_=65536", "MALLOC_TRIM_THRESHOLD_=65536"]),
    );
    expect(Object.keys(image.config.ExposedPorts ?? {}).sort()).toEqual([
      "10250/tcp",
      "8080/tcp",
      "8081/tcp",
    ]);
    const dockerfile = readFileSync(path.join(root, "Dockerfile"), "utf8");
    expect(dockerfile).toMatch(/^USER 1000:1000$/m);
    expect(dockerfile).toMatch(/^WORKDIR \/app$/m);
    expect(dockerfile).toMatch(/^ENTRYPOINT \["devicelet"\]$/m);
    expect(dockerfile).toMatch(/^CMD \["run", "--config", "\/etc\/devicelet\/config.yaml"\]$/m);
    expect(dockerfile).toMatch(/^EXPOSE 8080 8081 10250$/m);
    expect(dockerfile).toMatch(/^ENV MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=65536$/m);
  });

  it("carries dist/, the launcher and the production dependencies only", () => {
    const app = path.join(image.rootfs, "app");
    expect(readdirSync(app).sort()).toEqual(["bin", "dist", "node_modules", "package.json"]);
    // What the Dockerfile's final stage copies from its build stage, by the same names.
    const copied = [
      ...readFileSync(path.join(root, "Dockerfile"), "utf8").matchAll(/^COPY --from=build \/src\/(\S+) /gm),
    ];
    expect(copied.map((m) => m[1]).sort()).toEqual(readdirSync(app).sort());
    expect(readdirSync(path.join(app, "dist")).sort()).toEqual(["providers", "schemas", "src"]);
    const dist = readdirSync(path.join(app, "dist"), { recursive: true, encoding: "utf8" });
    expect(dist.filter((f) => f.includes(".test.") || (f.endsWith(".ts") && !f.endsWith(".d.ts")))).toEqual(
      [],
    );
    const installed = (where: string) => statSync(path.join(app, where), { throwIfNoEntry: false });
    // package-lock.json says which packages only the devDependencies need ("dev": true); a package
    // both sides need (@types/node, through a production dependency's types) stays, as it does
    // after the Dockerfile's `npm prune --omit=dev`.
    const lock = JSON.parse(readFileSync(path.join(root, "package-lock.json"), "utf8")) as {
      packages: Record<string, { dev?: boolean; optional?: boolean }>;
    };
    const locked = Object.entries(lock.packages).filter(([where]) => where.startsWith("node_modules/"));
    for (const [where, entry] of locked) {
      if (entry.dev) expect(installed(where), where).toBeUndefined();
      else if (!entry.optional) expect(installed(where), where).toBeDefined();
    }
    expect(locked.filter(([, entry]) => entry.dev).length).toBeGreaterThan(100);
    for (const name of Object.keys(pkg.dependencies))
      expect(installed(`node_modules/${name}`), name).toBeDefined();
    for (const name of ["vitest", "typescript", "eslint", "prettier", "fast-check"])
      expect(installed(`node_modules/${name}`), name).toBeUndefined();
  });

  it("runs its entrypoint as uid 1000 on a read-only root filesystem", () => {
    const who = runImage(image, {
      entrypoint: [
        "node",
        "-p",
        "[process.getuid(), process.getgid(), process.env.HOME, process.cwd()].join(' ')",
      ],
      args: [],
    });
    expect(who.stderr).toBe("");
    expect(who.stdout.trim()).toBe("1000 1000 /home/node /app");
    const write = runImage(image, {
      entrypoint: ["sh", "-c", "touch /app/x || touch /tmp/x || echo refused"],
      args: [],
    });
    expect(write.stdout.trim()).toBe("refused");
  });

  it("prints the package version", () => {
    const result = runImage(image, { args: ["--version"] });
    expect(result).toEqual({ status: 0, stdout: `${pkg.version}\n`, stderr: "" });
  });

  it("refuses a bad config with every problem listed", () => {
    const volume = configVolume({
      "config.yaml": stringify({
        api: { qps: "fast" },
        bogusKey: true,
        provider: { type: "mock", config: { devices: { count: -1 } } },
      }),
    });
    // The image's own command: run --config /etc/devicelet/config.yaml.
    const result = runImage(image, { mounts: [{ source: volume, target: "/etc/devicelet" }] });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("invalid configuration /etc/devicelet/config.yaml (3 problems)");
    expect(result.stderr).toMatch(/\/bogusKey: unknown key/);
    expect(result.stderr).toMatch(/\/api\/qps: must be number/);
    expect(result.stderr).toMatch(/\/provider\/config\/devices\/count: must be >= 0/);
  });

  it("registers its devices as nodes against the API server and stops cleanly on SIGTERM", async () => {
    const id = uniqueName("image");
    // devicelet's identity with the certificates inline: the harness's key files are root's.
    const kubeconfig = parse(readFileSync(deviceletKubeconfig(), "utf8")) as {
      clusters: { cluster: Record<string, string> }[];
      users: { user: Record<string, string> }[];
    };
    const fileKeys = ["certificate-authority", "client-certificate", "client-key"];
    const inline = (entry: Record<string, string>) =>
      Object.fromEntries(
        Object.entries(entry).map(([key, value]) =>
          fileKeys.includes(key) ? [`${key}-data`, readFileSync(value).toString("base64")] : [key, value],
        ),
      );
    kubeconfig.clusters = kubeconfig.clusters.map((c) => ({ ...c, cluster: inline(c.cluster) }));
    kubeconfig.users = kubeconfig.users.map((u) => ({ ...u, user: inline(u.user) }));
    const volume = configVolume({
      kubeconfig: stringify(kubeconfig),
      "config.yaml": stringify({
        kubeconfig: "/etc/devicelet/kubeconfig",
        nodes: { extraLabels: { "devicelet.dev/test": id } },
        kubelet: { serve: false },
        health: { port: 0, bindAddress: "127.0.0.1" },
        metrics: { port: 0, bindAddress: "127.0.0.1" },
        provider: { type: "mock", config: { devices: { count: 2, idPrefix: `${id}-` } } },
      }),
    });
    const logFile = path.join(work, `${id}.log`);
    const child = startImage(image, {
      mounts: [{ source: volume, target: "/etc/devicelet" }],
      logFd: openSync(logFile, "a"),
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    try {
      await eventually(
        async () => {
          if (child.exitCode !== null)
            throw new Error(`exited ${child.exitCode}: ${readFileSync(logFile, "utf8")}`);
          const nodes = await getJson<{ items: unknown[] }>(["nodes", "-l", `devicelet.dev/test=${id}`]);
          expect(nodes.items).toHaveLength(2);
          expect(readFileSync(logFile, "utf8")).toContain('"msg":"devicelet is running"');
        },
        { timeoutMs: 90_000 },
      );
    } finally {
      child.kill("SIGTERM");
    }
    expect(await exited).toBe(0);
  });
});
