/**
 * Node names and label values for device ids, which may hold any characters a provider allows
 * (`Dev_1`, `site/7:sensor`). A name is the id made DNS-safe; when that took any change, a short
 * stable hash of the original id is appended so ids that differ only in what was changed
 * (`Dev_1` and `dev-1`) still get different names. {@link NodeNameRegistry} turns the remaining
 * (astronomically unlikely, or deliberate) collisions into a clear error instead of two devices
 * sharing one node.
 *
 * ```ts
 * const names = new NodeNameRegistry("dl-");
 * names.claim("Dev_1");   // "dl-dev-1-1a2b3c4d"
 * names.claim("dev-1");   // "dl-dev-1"
 * ```
 */
import { createHash } from "node:crypto";

/** RFC 1123 subdomain as Kubernetes checks object names (apimachinery `IsDNS1123Subdomain`). */
export const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** A label value (apimachinery `IsValidLabelValue`), at most {@link MAX_LABEL_VALUE} characters. */
export const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
export const MAX_LABEL_VALUE = 63;

/**
 * Longest node name produced. A subdomain may be 253 characters, but every node carries its name
 * in the `kubernetes.io/hostname` label, whose values stop at 63, so node names do too.
 */
export const MAX_NODE_NAME = 63;

const HASH_LENGTH = 8;

/** First 8 hex digits of SHA-256 of the id: short, stable across restarts and versions. */
export const shortHash = (text: string): string =>
  createHash("sha256").update(text, "utf8").digest("hex").slice(0, HASH_LENGTH);

/** `base-hash` within `max` characters, with `base` cut and stripped of trailing non-alphanumerics. */
function withHash(base: string, hash: string, max: number): string {
  const cut = base.slice(0, max - hash.length - 1).replace(/[^A-Za-z0-9]+$/, "");
  return cut === "" ? hash : `${cut}-${hash}`;
}

/**
 * The node name for a device: `prefix + deviceId`, lower-cased, with characters outside
 * `[a-z0-9.-]` replaced by `-`, empty dot-separated parts dropped and each part trimmed of
 * leading and trailing `-`. If that changed anything, or the name would exceed
 * {@link MAX_NODE_NAME}, it is shortened as needed and `-<8 hex of sha256(deviceId)>` appended.
 * Always a valid DNS-1123 subdomain; the same inputs always give the same name.
 */
export function nodeNameForDevice(deviceId: string, prefix = ""): string {
  const raw = `${prefix}${deviceId}`;
  const safe = raw
    .toLowerCase()
    .replace(/[^a-z0-9.-]/g, "-")
    .split(".")
    .map((part) => part.replace(/^-+|-+$/g, ""))
    .filter((part) => part !== "")
    .join(".");
  if (safe !== "" && safe === raw && safe.length <= MAX_NODE_NAME) return safe;
  return withHash(safe, shortHash(deviceId), MAX_NODE_NAME);
}

/**
 * A valid label value for any string (device ids, gateway ids, zones): characters outside
 * `[A-Za-z0-9_.-]` become `-`, leading and trailing non-alphanumerics go; if that changed
 * anything or the value exceeds 63 characters, `-<8 hex of sha256(raw)>` is appended. Case is
 * kept. The empty string stays empty (a valid label value).
 */
export function labelValueFor(raw: string): string {
  const safe = raw.replace(/[^A-Za-z0-9_.-]/g, "-").replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, "");
  if (safe === raw && safe.length <= MAX_LABEL_VALUE) return safe;
  return withHash(safe, shortHash(raw), MAX_LABEL_VALUE);
}

/**
 * Which device owns which node name, for one process. Not thread-safe beyond Node's single thread;
 * owns no I/O.
 */
export class NodeNameRegistry {
  readonly #prefix: string;
  readonly #byDevice = new Map<string, string>();
  readonly #byName = new Map<string, string>();

  constructor(prefix = "") {
    this.#prefix = prefix;
  }

  /**
   * The node name for `deviceId`, reserved for it until {@link release}. Claiming again returns
   * the same name. Throws when another device already holds the name:
   * `node name "x" for device "A" collides with device "B"`.
   */
  claim(deviceId: string): string {
    const existing = this.#byDevice.get(deviceId);
    if (existing !== undefined) return existing;
    const name = nodeNameForDevice(deviceId, this.#prefix);
    const owner = this.#byName.get(name);
    if (owner !== undefined)
      throw new Error(
        `node name ${JSON.stringify(name)} for device ${JSON.stringify(deviceId)} collides with device ${JSON.stringify(owner)}`,
      );
    this.#byDevice.set(deviceId, name);
    this.#byName.set(name, deviceId);
    return name;
  }

  /** Gives the device's name back; a no-op for a device that holds none. */
  release(deviceId: string): void {
    const name = this.#byDevice.get(deviceId);
    if (name === undefined) return;
    this.#byDevice.delete(deviceId);
    this.#byName.delete(name);
  }

  /** The name a device holds, if any. */
  nameOf(deviceId: string): string | undefined {
    return this.#byDevice.get(deviceId);
  }

  /** The device holding a node name, if any. */
  deviceOf(nodeName: string): string | undefined {
    return this.#byName.get(nodeName);
  }
}
