/**
 * ConfigMap, Secret, downwardAPI and projected volumes as files, placed where each container mounts
 * them (`mountPath`, narrowed by `subPath` / `subPathExpr`), following the kubelet's volume plugins
 * (pkg/volume/configmap, secret, downwardapi, projected): `items` select and rename keys, a file's
 * mode is its item's `mode`, else the volume's `defaultMode`, else 0644; a missing optional object
 * or key is skipped, a missing mandatory one stops the translation.
 *
 * One departure: a file from a Secret loses its group and other permission bits (0644 becomes
 * 0600, 0440 becomes 0400). In a pod those bits reach only the pod's own containers; on a device,
 * apps of every pod share one host, so they would reach other pods' apps. The device gives the file
 * to the app's own user instead.
 *
 * Volumes of other kinds (emptyDir, hostPath, PVCs) carry no files; whether a provider may see a
 * pod using them at all is decided by `checkSupported`.
 */
import { posix } from "node:path";
import type { AppFile } from "../provider/types.ts";
import { resolveFieldRef, resolveResourceFieldRef } from "./downward.ts";
import { expandVars } from "./expand.ts";
import { isServiceAccountTokenVolume } from "./features.ts";
import type { DataValue, RefKind, Resolver } from "./resolver.ts";
import { arr, bool, int, rec, str, type Rec } from "./shape.ts";

/** A file relative to its volume's root. */
interface VolumeFile {
  readonly relPath: string;
  readonly content: string;
  readonly encoding: "utf8" | "base64";
  readonly mode: number;
  readonly secret: boolean;
}

const DEFAULT_MODE = 0o644;
/** The permission bits a file from a Secret keeps: its owner's. */
const OWNER_ONLY = 0o700;

/** A relative path inside a volume: no empty, absolute or `..` parts (as API validation demands). */
function cleanRelPath(path: string): string | undefined {
  if (path === "" || path.startsWith("/")) return undefined;
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.length === 0 || parts.includes("..")) return undefined;
  return parts.join("/");
}

const byPath = (a: VolumeFile, b: VolumeFile) => (a.relPath < b.relPath ? -1 : a.relPath > b.relPath ? 1 : 0);

/** Files of one ConfigMap or Secret source (a volume, or one source of a projected volume). */
function objectFiles(
  kind: RefKind,
  source: Rec,
  defaultMode: number,
  volumeName: string,
  resolver: Resolver,
): VolumeFile[] {
  const name =
    str(kind === "secret" && source["secretName"] !== undefined ? source["secretName"] : source["name"]) ??
    "";
  const optional = bool(source["optional"]);
  const failed = `MountVolume.SetUp failed for volume ${JSON.stringify(volumeName)} : `;
  const object = resolver.require(
    kind,
    name,
    optional,
    `skipping optional volume ${JSON.stringify(volumeName)}: `,
    `${failed}${kind} ${JSON.stringify(name)} not found`,
  );
  if (object === undefined) return [];
  const file = (relPath: string, value: DataValue, mode: number): VolumeFile => {
    const clean = cleanRelPath(relPath);
    if (clean === undefined) return resolver.fail(`${failed}invalid item path ${JSON.stringify(relPath)}`);
    return {
      relPath: clean,
      content: value.content,
      encoding: value.encoding,
      mode: kind === "secret" ? mode & OWNER_ONLY : mode,
      secret: kind === "secret",
    };
  };
  const items = arr(source["items"]).map(rec);
  if (items.length === 0) return [...object.data].map(([key, value]) => file(key, value, defaultMode));
  return items.flatMap((item) => {
    const key = str(item?.["key"]) ?? "";
    const value = object.data.get(key);
    if (value === undefined) {
      if (optional) return [];
      const what =
        kind === "configmap"
          ? "configmap references non-existent config key"
          : "references non-existent secret key";
      return resolver.fail(`${failed}${what}: ${key}`);
    }
    return [file(str(item?.["path"]) ?? key, value, int(item?.["mode"]) ?? defaultMode)];
  });
}

/** Files of a downwardAPI volume or projected source. */
function downwardFiles(
  source: Rec,
  defaultMode: number,
  volumeName: string,
  resolver: Resolver,
): VolumeFile[] {
  return arr(source["items"])
    .map(rec)
    .flatMap((item) => {
      if (item === undefined) return [];
      const path = str(item["path"]) ?? "";
      const fieldRef = rec(item["fieldRef"]);
      const resourceRef = rec(item["resourceFieldRef"]);
      const resolved =
        fieldRef !== undefined
          ? resolveFieldRef(str(fieldRef["fieldPath"]) ?? "", resolver.downward, true)
          : resourceRef !== undefined
            ? resolveResourceFieldRef(resourceRef, resolver.downward, undefined)
            : { error: `item ${JSON.stringify(path)} has neither fieldRef nor resourceFieldRef` };
      const failed = `MountVolume.SetUp failed for volume ${JSON.stringify(volumeName)} : `;
      if ("error" in resolved) return resolver.fail(failed + resolved.error);
      const relPath = cleanRelPath(path);
      if (relPath === undefined) return resolver.fail(`${failed}invalid item path ${JSON.stringify(path)}`);
      const mode = int(item["mode"]) ?? defaultMode;
      return [{ relPath, content: resolved.value, encoding: "utf8" as const, mode, secret: false }];
    });
}

/** Every file a volume holds, sorted by path; [] for volume kinds that hold no files. */
function volumeFiles(volume: Rec, resolver: Resolver): VolumeFile[] {
  const name = str(volume["name"]) ?? "";
  const configMap = rec(volume["configMap"]);
  const secret = rec(volume["secret"]);
  const downward = rec(volume["downwardAPI"]);
  const projected = rec(volume["projected"]);
  const mode = (source: Rec | undefined) => int(source?.["defaultMode"]) ?? DEFAULT_MODE;
  let files: VolumeFile[] = [];
  if (configMap !== undefined) files = objectFiles("configmap", configMap, mode(configMap), name, resolver);
  else if (secret !== undefined) files = objectFiles("secret", secret, mode(secret), name, resolver);
  else if (downward !== undefined) files = downwardFiles(downward, mode(downward), name, resolver);
  else if (projected !== undefined) {
    const defaultMode = mode(projected);
    files = arr(projected["sources"]).flatMap((s) => {
      const source = rec(s);
      const cm = rec(source?.["configMap"]);
      const sec = rec(source?.["secret"]);
      const dw = rec(source?.["downwardAPI"]);
      if (cm !== undefined) return objectFiles("configmap", cm, defaultMode, name, resolver);
      if (sec !== undefined) return objectFiles("secret", sec, defaultMode, name, resolver);
      if (dw !== undefined) return downwardFiles(dw, defaultMode, name, resolver);
      return [];
    });
  }
  // Later sources win on the same path, as the projected volume writer does.
  const unique = new Map(files.map((f) => [f.relPath, f]));
  return [...unique.values()].sort(byPath);
}

/** Memoises each volume's files across the containers of one pod. */
export class VolumeFiles {
  readonly #volumes = new Map<string, Rec>();
  readonly #files = new Map<string, VolumeFile[]>();
  readonly #resolver: Resolver;

  constructor(volumes: readonly unknown[], resolver: Resolver) {
    this.#resolver = resolver;
    for (const v of volumes.map(rec)) {
      const name = str(v?.["name"]);
      if (v !== undefined && name !== undefined && !isServiceAccountTokenVolume(v))
        this.#volumes.set(name, v);
    }
  }

  #filesOf(name: string): VolumeFile[] | undefined {
    const volume = this.#volumes.get(name);
    if (volume === undefined) return undefined;
    let files = this.#files.get(name);
    if (files === undefined) {
      files = volumeFiles(volume, this.#resolver);
      this.#files.set(name, files);
    }
    return files;
  }

  /** Resolve every volume once (so a mandatory miss fails even when no container mounts it). */
  resolveAll(): void {
    for (const name of this.#volumes.keys()) this.#filesOf(name);
  }

  /**
   * The files a container sees through its `volumeMounts`, with full paths. `env` expands
   * `subPathExpr`. Mounts of the injected service-account volume and of file-less volume kinds
   * contribute nothing.
   */
  forContainer(container: Rec, env: ReadonlyMap<string, string>): AppFile[] {
    const out: AppFile[] = [];
    for (const mount of arr(container["volumeMounts"]).map(rec)) {
      const files = this.#filesOf(str(mount?.["name"]) ?? "");
      const mountPath = str(mount?.["mountPath"]);
      if (mount === undefined || files === undefined || mountPath === undefined) continue;
      const expr = str(mount["subPathExpr"]);
      const rawSub = str(mount["subPath"]) || (expr ? expandVars(expr, (n) => env.get(n)) : "");
      const sub = rawSub === "" ? "" : cleanRelPath(rawSub);
      if (sub === undefined)
        return this.#resolver.fail(
          `invalid subPath ${JSON.stringify(rawSub)} in volumeMount at ${mountPath}`,
        );
      for (const f of files) {
        let rest: string | undefined;
        if (sub === "") rest = f.relPath;
        else if (f.relPath === sub) rest = "";
        else if (f.relPath.startsWith(`${sub}/`)) rest = f.relPath.slice(sub.length + 1);
        if (rest === undefined) continue;
        const path = rest === "" ? posix.normalize(mountPath) : posix.join(mountPath, rest);
        out.push({ path, content: f.content, encoding: f.encoding, mode: f.mode, secret: f.secret });
      }
    }
    return out;
  }
}
