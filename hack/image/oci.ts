/**
 * Reads an OCI image archive (what hack/image/build.sh writes) and runs its entrypoint without a
 * container engine: the layers are unpacked in order into a root filesystem, which is then entered
 * read-only, with the user, environment, working folder, entrypoint and arguments of the image's
 * config, as a container runtime would (and as the chart runs it: readOnlyRootFilesystem).
 * Needs root: mount namespaces (`unshare`) and `chroot`.
 *
 *   const image = unpackImage("devicelet-image.tar", "/tmp/img");   // image.rootfs, image.config
 *   const r = runImage(image, { args: ["--version"] });            // { status, stdout, stderr }
 *   node hack/image/oci.ts devicelet-image.tar /tmp/img -- --version
 *
 * What it does not do that a runtime does: no pid or network namespace (the process shares the
 * host's loopback, which the smoke tests use), no cgroups, no seccomp, no capability dropping
 * beyond what leaving uid 0 does.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";

/** The parts of the OCI image config (image-spec config.md, "config" field) a runtime reads. */
export interface ImageConfig {
  readonly User?: string;
  readonly Env?: readonly string[];
  readonly Entrypoint?: readonly string[];
  readonly Cmd?: readonly string[];
  readonly WorkingDir?: string;
  readonly ExposedPorts?: Record<string, unknown>;
  readonly Labels?: Record<string, string>;
}

export interface UnpackedImage {
  /** The folder holding the unpacked root filesystem. */
  readonly rootfs: string;
  /** `index.json`'s reference name of the image, e.g. `devicelet:0.1.0`. */
  readonly ref: string;
  readonly config: ImageConfig;
  /** Layer digests, lowest first. */
  readonly layers: readonly string[];
}

interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly annotations?: Record<string, string>;
}

/**
 * Unpacks the archive's only image into `dir` (`dir/layout` holds the OCI layout, `dir/rootfs` the
 * root filesystem; both are replaced). Whiteouts (image-spec layer.md, "Whiteouts") are applied.
 */
export function unpackImage(archive: string, dir: string): UnpackedImage {
  const layout = path.join(dir, "layout");
  const rootfs = path.join(dir, "rootfs");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(layout, { recursive: true });
  mkdirSync(rootfs);
  execFileSync("tar", ["-xf", archive, "-C", layout]);
  const blob = (digest: string) => path.join(layout, "blobs", ...digest.split(":"));
  const readJson = (file: string): unknown => JSON.parse(readFileSync(file, "utf8"));
  const index = readJson(path.join(layout, "index.json")) as { manifests: Descriptor[] };
  const [entry] = index.manifests;
  if (index.manifests.length !== 1 || !entry) throw new Error(`${archive}: expected one image`);
  const manifest = readJson(blob(entry.digest)) as { config: Descriptor; layers: Descriptor[] };
  const config = (readJson(blob(manifest.config.digest)) as { config?: ImageConfig }).config ?? {};
  for (const layer of manifest.layers) applyLayer(blob(layer.digest), rootfs);
  return {
    rootfs,
    ref: entry.annotations?.["org.opencontainers.image.ref.name"] ?? "",
    config,
    layers: manifest.layers.map((l) => l.digest),
  };
}

/** Extracts one layer (tar, optionally gzip: GNU tar detects it) over `rootfs`. */
function applyLayer(file: string, rootfs: string): void {
  const entries = execFileSync("tar", ["-tf", file], { encoding: "utf8", maxBuffer: 256 << 20 })
    .split("\n")
    .filter(Boolean);
  for (const entry of entries) {
    const name = path.posix.basename(entry);
    if (!name.startsWith(".wh.")) continue;
    const parent = path.join(rootfs, path.posix.dirname(entry));
    if (name === ".wh..wh..opq") {
      // An opaque folder: what the lower layers had in it is hidden.
      if (existsSync(parent))
        for (const child of readdirSync(parent)) rmSync(path.join(parent, child), { recursive: true });
    } else {
      rmSync(path.join(parent, name.slice(".wh.".length)), { recursive: true, force: true });
    }
  }
  execFileSync("tar", [
    "-xf",
    file,
    "-C",
    rootfs,
    "--numeric-owner",
    "--same-owner",
    "-p",
    "--exclude=.wh.*",
  ]);
}

export interface RunOptions {
  /** Replaces the image's Cmd (as `docker run IMAGE ARGS...` does). */
  readonly args?: readonly string[];
  /** Replaces the image's Entrypoint. */
  readonly entrypoint?: readonly string[];
  /** Replaces the image's User (`uid[:gid]`, numeric). */
  readonly user?: string;
  /** Host folders bound read-only into the root filesystem (as a ConfigMap or Secret volume). */
  readonly mounts?: readonly { readonly source: string; readonly target: string }[];
  /** Added to the image's Env. */
  readonly env?: Record<string, string>;
}

/**
 * The command that enters the image: `unshare --mount` (so every mount below vanishes with the
 * process) running a shell that binds the root filesystem read-only, adds /proc, /dev and the
 * volumes, then execs `chroot --userspec` into `env -i ... -C WorkingDir ENTRYPOINT CMD`. Every
 * step execs the next, so the returned command's process is the entrypoint's process.
 */
export function imageCommand(image: UnpackedImage, options: RunOptions = {}): [string, string[]] {
  const { config, rootfs } = image;
  const [uid = "0", gid = uid] = (options.user ?? config.User ?? "0").split(":");
  if (!/^\d+$/.test(uid) || !/^\d+$/.test(gid)) throw new Error(`user ${uid}:${gid}: numeric ids only`);
  const argv = [...(options.entrypoint ?? config.Entrypoint ?? []), ...(options.args ?? config.Cmd ?? [])];
  if (argv.length === 0) throw new Error("nothing to run: the image has no Entrypoint or Cmd");
  const env = new Map(
    (config.Env ?? []).map((e) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)]),
  );
  // As Docker and containerd do: HOME from the image's /etc/passwd, else /.
  if (!env.has("HOME")) env.set("HOME", homeOf(rootfs, uid));
  for (const [k, v] of Object.entries(options.env ?? {})) env.set(k, v);
  const volumes = options.mounts ?? [];
  const mounts = [
    // Mount points for the volumes, made before the root filesystem turns read-only.
    ...volumes.map(({ target }) => `mkdir -p ${q(path.join(rootfs, target))}`),
    `mount --bind ${q(rootfs)} ${q(rootfs)}`,
    `mount -o remount,bind,ro ${q(rootfs)}`,
    `mount -t proc proc ${q(path.join(rootfs, "proc"))}`,
    `mount --rbind /dev ${q(path.join(rootfs, "dev"))}`,
    ...volumes.flatMap(({ source, target }) => {
      const at = q(path.join(rootfs, target));
      return [`mount --bind ${q(source)} ${at}`, `mount -o remount,bind,ro ${at}`];
    }),
  ];
  const inside = [
    "env",
    "-i",
    "-C",
    config.WorkingDir || "/",
    ...[...env].map(([k, v]) => `${k}=${v}`),
    ...argv,
  ];
  const script = [
    "set -e",
    ...mounts,
    `exec chroot --userspec=${uid}:${gid} --groups=${gid} ${q(rootfs)} ${inside.map(q).join(" ")}`,
  ].join("\n");
  return ["unshare", ["--mount", "--propagation", "private", "--", "sh", "-c", script]];
}

/** Runs the image to completion; see imageCommand. */
export function runImage(
  image: UnpackedImage,
  options: RunOptions = {},
): { status: number | null; stdout: string; stderr: string } {
  const [command, args] = imageCommand(image, options);
  const result = spawnSync(command, args, { encoding: "utf8", timeout: 60_000 });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Starts the image in the background (the child is the entrypoint's process); see imageCommand. */
export function startImage(
  image: UnpackedImage,
  options: RunOptions & { readonly logFd: number },
): ChildProcess {
  const [command, args] = imageCommand(image, options);
  return spawn(command, args, { stdio: ["ignore", options.logFd, options.logFd] });
}

function homeOf(rootfs: string, uid: string): string {
  const passwd = path.join(rootfs, "etc/passwd");
  if (!existsSync(passwd)) return "/";
  const line = readFileSync(passwd, "utf8")
    .split("\n")
    .map((l) => l.split(":"))
    .find((f) => f[2] === uid);
  return line?.[5] || "/";
}

/** Single-quotes a word for sh. */
const q = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;

if (import.meta.main) {
  const [archive, dir, dashes, ...args] = process.argv.slice(2);
  if (!archive || !dir || (dashes !== undefined && dashes !== "--")) {
    process.stderr.write("usage: node hack/image/oci.ts ARCHIVE DIR [-- ARGS...]\n");
    process.exit(2);
  }
  const image = unpackImage(archive, dir);
  const [command, argv] = imageCommand(image, dashes ? { args } : {});
  const result = spawnSync(command, argv, { stdio: "inherit" });
  process.exitCode = result.status ?? 1;
}
