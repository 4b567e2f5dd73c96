/**
 * The state of one emulated IoT hub: device identities (symmetric keys, or X.509: self-signed
 * thumbprints or a CA the hub holds), their twins, connection state, shared access policies,
 * throttling per operation class, and the links of connected devices (which the MQTT side
 * registers) used for desired-property notifications and direct methods.
 * Transport-free: the MQTT and REST front ends translate to and from these calls, and every refusal
 * is a `HubError` carrying the HTTP-style status IoT Hub answers with.
 */
import { randomBytes, X509Certificate } from "node:crypto";
import { covers, parseToken } from "./sas.ts";
import {
  TWIN_LIMITS,
  mergePatch,
  sectionViolation,
  withoutMetadata,
  type Json,
  type JsonObject,
} from "./twin.ts";

export class HubError extends Error {
  readonly status: number;
  /** IoT Hub's `ErrorCode` name. */
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Operation classes throttled separately, as IoT Hub's quotas are. */
export type OperationClass =
  "deviceConnect" | "twinRead" | "twinUpdate" | "registry" | "query" | "methods" | "deviceToCloud";

/** Operations per second allowed in each class (burst: one second's worth, at least one); absent = unlimited. */
export type ThrottleRates = Partial<Record<OperationClass, number>>;

/** What the MQTT side gives the hub for a connected device. */
export interface DeviceLink {
  /** Whether the device has subscribed to direct methods (`$iothub/methods/POST/#`). */
  readonly acceptsMethods: boolean;
  sendDesiredPatch(patch: JsonObject): void;
  invokeMethod(name: string, payload: Json, timeoutMs: number): Promise<{ status: number; payload: Json }>;
}

/**
 * A change that IoT Hub can route as a non-telemetry event: a twin update (the patch as applied,
 * section by section, with the twin's new version) or a device connecting or disconnecting.
 */
export type HubChange =
  | {
      readonly kind: "twin";
      readonly deviceId: string;
      readonly opType: "updateTwin";
      readonly version: number;
      readonly tags?: JsonObject;
      readonly desired?: JsonObject;
      readonly reported?: JsonObject;
    }
  | { readonly kind: "connection"; readonly deviceId: string; readonly connected: boolean };

interface Twin {
  tags: JsonObject;
  desired: JsonObject;
  desiredVersion: number;
  reported: JsonObject;
  reportedVersion: number;
  version: number;
  etag: string;
}

/**
 * How a device authenticates, as the registry's `authentication.type` names it: a SAS token signed
 * with one of its keys; a certificate whose thumbprint (SHA-1 or SHA-256 of the DER, hex) is one of
 * its two; or a certificate with CN = the device id issued by a CA the hub holds.
 */
export type DeviceAuthentication =
  | { readonly type: "sas"; readonly primaryKey: string; readonly secondaryKey: string }
  | {
      readonly type: "selfSigned";
      readonly primaryThumbprint: string;
      readonly secondaryThumbprint: string | null;
    }
  | { readonly type: "certificateAuthority" };

/** What creating or updating an identity may set; absent keys of a `sas` identity are made fresh. */
export interface AuthenticationChange {
  readonly type?: DeviceAuthentication["type"];
  readonly primaryKey?: string;
  readonly secondaryKey?: string;
  readonly primaryThumbprint?: string;
  readonly secondaryThumbprint?: string;
}

interface DeviceRecord {
  readonly deviceId: string;
  readonly generationId: string;
  etag: string;
  authentication: DeviceAuthentication;
  status: "enabled" | "disabled";
  connectionState: "Connected" | "Disconnected";
  connectionStateUpdatedTime: string;
  lastActivityTime: string;
  readonly twin: Twin;
}

export interface HubOptions {
  /** The hub's host name, e.g. `my-hub.azure-devices.net`: what SAS resources and usernames name. */
  readonly hostName: string;
  /** Policy name → base64 key. */
  readonly policies: ReadonlyMap<string, string>;
  readonly throttle?: ThrottleRates;
  /** Milliseconds since the epoch; injected so tests can move time. */
  readonly now?: () => number;
}

const EPOCH = "0001-01-01T00:00:00Z";

export class Hub {
  readonly hostName: string;
  readonly #policies: ReadonlyMap<string, string>;
  readonly #devices = new Map<string, DeviceRecord>();
  readonly #links = new Map<string, DeviceLink>();
  readonly #buckets = new Map<OperationClass, { tokens: number; at: number }>();
  readonly #now: () => number;
  #throttle: ThrottleRates;
  #etagCounter = 0;
  readonly #operations = new Map<string, number>();
  #throttledCount = 0;
  readonly #changeListeners = new Set<(change: HubChange) => void>();
  readonly #authorities: X509Certificate[] = [];

  constructor(o: HubOptions) {
    this.hostName = o.hostName;
    this.#policies = o.policies;
    this.#throttle = { ...o.throttle };
    this.#now = o.now ?? Date.now;
  }

  /** Calls `listener` after each twin update and connection state change; returns an unsubscribe. */
  onChange(listener: (change: HubChange) => void): () => void {
    this.#changeListeners.add(listener);
    return () => this.#changeListeners.delete(listener);
  }

  #changed(change: HubChange): void {
    for (const listener of this.#changeListeners) listener(change);
  }

  /** Replaces the throttling rates (takes effect on the next operation). */
  setThrottle(rates: ThrottleRates): void {
    this.#throttle = { ...rates };
    this.#buckets.clear();
  }

  /**
   * Operations admitted so far, keyed `{side}.{class}` (`service.twinUpdate`, `device.twinUpdate`,
   * …): what a benchmark reports as hub operations, the devices' and the service's apart.
   */
  operations(): Record<string, number> {
    return Object.fromEntries(this.#operations);
  }

  /** Operations refused with 429 so far. */
  throttled(): number {
    return this.#throttledCount;
  }

  /** Takes one operation from a class's budget, or throws 429 ThrottlingException. */
  consume(kind: OperationClass, side: "device" | "service"): void {
    const rate = this.#throttle[kind];
    if (rate === undefined) {
      this.#count(kind, side);
      return;
    }
    const now = this.#now();
    // One second's worth, but at least one operation: a rate under 1/s (queries, 20 a minute)
    // must still admit one now and then.
    const capacity = Math.max(1, rate);
    const bucket = this.#buckets.get(kind) ?? { tokens: capacity, at: now };
    bucket.tokens = Math.min(capacity, bucket.tokens + ((now - bucket.at) / 1000) * rate);
    bucket.at = now;
    this.#buckets.set(kind, bucket);
    if (bucket.tokens < 1) {
      this.#throttledCount++;
      throw new HubError(429, "ThrottlingException", `${kind} is throttled at ${rate}/s`);
    }
    bucket.tokens -= 1;
    this.#count(kind, side);
  }

  #count(kind: OperationClass, side: "device" | "service"): void {
    const key = `${side}.${kind}`;
    this.#operations.set(key, (this.#operations.get(key) ?? 0) + 1);
  }

  // --- authentication -------------------------------------------------------------------------

  /**
   * Checks a device's SAS token (signed with either key, scoped to the device, not expired). An
   * X.509 device has no keys: a token never admits it.
   */
  authenticateDevice(deviceId: string, token: string): boolean {
    const device = this.#devices.get(deviceId);
    const parsed = parseToken(token);
    if (device === undefined || parsed === undefined || device.status !== "enabled") return false;
    const auth = device.authentication;
    if (auth.type !== "sas") return false;
    if (parsed.expiry * 1000 <= this.#now()) return false;
    if (!covers(parsed.resource, `${this.hostName}/devices/${deviceId}`)) return false;
    return parsed.signedWith(auth.primaryKey) || parsed.signedWith(auth.secondaryKey);
  }

  /**
   * Checks the client certificate a device presented in the TLS handshake: within its validity
   * now, and either (`selfSigned`) its SHA-1 or SHA-256 thumbprint is one of the identity's, or
   * (`certificateAuthority`) its subject CN is the device id and it was issued and signed by a CA
   * the hub holds ({@link addCertificateAuthority}), itself within its validity. A SAS device is
   * never admitted by a certificate.
   */
  authenticateCertificate(deviceId: string, cert: X509Certificate): boolean {
    const device = this.#devices.get(deviceId);
    if (device === undefined || device.status !== "enabled" || !this.#valid(cert)) return false;
    const auth = device.authentication;
    if (auth.type === "selfSigned") {
      const presented = [cert.fingerprint, cert.fingerprint256].map(normalThumbprint);
      return [auth.primaryThumbprint, auth.secondaryThumbprint].some(
        (t) => t !== null && presented.includes(normalThumbprint(t)),
      );
    }
    if (auth.type !== "certificateAuthority") return false;
    const commonName = /^CN=(.*)$/m.exec(cert.subject)?.[1];
    if (commonName !== deviceId) return false;
    return this.#authorities.some(
      (ca) => this.#valid(ca) && cert.checkIssued(ca) && cert.verify(ca.publicKey),
    );
  }

  /**
   * Adds a CA certificate (PEM) that `certificateAuthority` devices' certificates may be issued by:
   * what uploading and verifying a CA certificate does on a real hub (the proof of possession is
   * not modelled).
   */
  addCertificateAuthority(pem: string): void {
    const ca = new X509Certificate(pem);
    if (!ca.ca) throw new HubError(400, "ArgumentInvalid", `${ca.subject} is not a CA certificate`);
    this.#authorities.push(ca);
  }

  #valid(cert: X509Certificate): boolean {
    const now = this.#now();
    return cert.validFromDate.getTime() <= now && now < cert.validToDate.getTime();
  }

  /** Checks a service token (`Authorization` header): signed by the named policy, for this hub. */
  authenticateService(token: string): boolean {
    const parsed = parseToken(token);
    if (parsed?.policy === undefined) return false;
    const key = this.#policies.get(parsed.policy);
    if (key === undefined || parsed.expiry * 1000 <= this.#now()) return false;
    return covers(parsed.resource, this.hostName) && parsed.signedWith(key);
  }

  // --- identities -----------------------------------------------------------------------------

  /**
   * Creates a device identity: SAS with fresh keys unless given, or X.509 (`selfSigned` needs a
   * primary thumbprint). Throws 409 when it exists, 400 on an incomplete authentication.
   */
  createDevice(deviceId: string, authentication: AuthenticationChange = {}): DeviceIdentity {
    if (!/^[A-Za-z0-9\-:.+%_#*?!(),=@$']{1,128}$/.test(deviceId)) {
      throw new HubError(400, "ArgumentInvalid", `invalid device id '${deviceId}'`);
    }
    if (this.#devices.has(deviceId)) {
      throw new HubError(409, "DeviceAlreadyExists", `device '${deviceId}' already exists`);
    }
    const now = new Date(this.#now()).toISOString();
    const record: DeviceRecord = {
      deviceId,
      generationId: randomBytes(8).toString("hex"),
      etag: this.#nextEtag(),
      authentication: authenticationOf(authentication, undefined),
      status: "enabled",
      connectionState: "Disconnected",
      connectionStateUpdatedTime: now,
      lastActivityTime: EPOCH,
      twin: {
        tags: {},
        desired: {},
        desiredVersion: 1,
        reported: {},
        reportedVersion: 1,
        version: 1,
        etag: this.#nextEtag(),
      },
    };
    this.#devices.set(deviceId, record);
    return this.identity(deviceId);
  }

  /**
   * Updates the authentication (keys, thumbprints, or its type) or status; `ifMatch` (the
   * identity's etag, or `*`) is checked. Sessions already open are not re-checked.
   */
  updateDevice(
    deviceId: string,
    change: AuthenticationChange & { status?: "enabled" | "disabled" },
    ifMatch: string,
  ): DeviceIdentity {
    const device = this.#device(deviceId);
    checkEtag(device.etag, ifMatch);
    const { status, ...authentication } = change;
    if (Object.keys(authentication).length > 0)
      device.authentication = authenticationOf(authentication, device.authentication);
    if (status !== undefined) device.status = status;
    device.etag = this.#nextEtag();
    return this.identity(deviceId);
  }

  deleteDevice(deviceId: string, ifMatch = "*"): void {
    const device = this.#device(deviceId);
    checkEtag(device.etag, ifMatch);
    this.#devices.delete(deviceId);
  }

  /** The identity as the registry API returns it. */
  identity(deviceId: string): DeviceIdentity {
    const d = this.#device(deviceId);
    return {
      deviceId: d.deviceId,
      generationId: d.generationId,
      etag: d.etag,
      connectionState: d.connectionState,
      status: d.status,
      statusReason: null,
      connectionStateUpdatedTime: d.connectionStateUpdatedTime,
      statusUpdatedTime: EPOCH,
      lastActivityTime: d.lastActivityTime,
      cloudToDeviceMessageCount: 0,
      authentication: {
        type: d.authentication.type,
        symmetricKey: {
          primaryKey: d.authentication.type === "sas" ? d.authentication.primaryKey : null,
          secondaryKey: d.authentication.type === "sas" ? d.authentication.secondaryKey : null,
        },
        x509Thumbprint: thumbprintsOf(d.authentication),
      },
      capabilities: { iotEdge: false },
    };
  }

  hasDevice(deviceId: string): boolean {
    return this.#devices.has(deviceId);
  }

  deviceIds(): string[] {
    return [...this.#devices.keys()];
  }

  // --- twins ----------------------------------------------------------------------------------

  /** The twin as the service API returns it. */
  twin(deviceId: string): JsonObject {
    const d = this.#device(deviceId);
    const t = d.twin;
    return {
      deviceId: d.deviceId,
      etag: t.etag,
      deviceEtag: d.etag,
      status: d.status,
      statusUpdateTime: EPOCH,
      connectionState: d.connectionState,
      lastActivityTime: d.lastActivityTime,
      cloudToDeviceMessageCount: 0,
      authenticationType: d.authentication.type,
      x509Thumbprint: thumbprintsOf(d.authentication),
      version: t.version,
      tags: structuredClone(t.tags),
      properties: {
        desired: { ...structuredClone(t.desired), $version: t.desiredVersion },
        reported: { ...structuredClone(t.reported), $version: t.reportedVersion },
      },
    };
  }

  /** The twin as a device's `GET` reads it: desired and reported with their `$version`. */
  deviceTwin(deviceId: string): JsonObject {
    const t = this.#device(deviceId).twin;
    return {
      desired: { ...structuredClone(t.desired), $version: t.desiredVersion },
      reported: { ...structuredClone(t.reported), $version: t.reportedVersion },
    };
  }

  /**
   * The service's twin PATCH: merges `tags` and `properties.desired`, conditional on the twin etag
   * (`*` matches any). A desired change bumps the desired `$version` and is sent to the device if it
   * is connected; a device that is not misses it and must read the twin on its next connect.
   */
  patchTwin(deviceId: string, patch: JsonObject, ifMatch: string): JsonObject {
    const d = this.#device(deviceId);
    const t = d.twin;
    checkEtag(t.etag, ifMatch);
    const { tags, properties } = patch;
    if (
      properties !== undefined &&
      (!isPlainObject(properties) || Object.keys(properties).some((k) => k !== "desired"))
    ) {
      throw new HubError(400, "ArgumentInvalid", "only properties.desired can be patched by the service");
    }
    const desiredPatch = isPlainObject(properties) ? properties.desired : undefined;
    if (tags !== undefined && !isPlainObject(tags))
      throw new HubError(400, "ArgumentInvalid", "tags must be an object");
    if (desiredPatch !== undefined && !isPlainObject(desiredPatch)) {
      throw new HubError(400, "ArgumentInvalid", "properties.desired must be an object");
    }
    const newTags = tags === undefined ? t.tags : mergePatch(t.tags, withoutMetadata(tags));
    const desired = desiredPatch === undefined ? undefined : withoutMetadata(desiredPatch);
    const newDesired = desired === undefined ? t.desired : mergePatch(t.desired, desired);
    refuseOverLimit("tags", newTags, TWIN_LIMITS.tagsBytes);
    refuseOverLimit("desired", newDesired, TWIN_LIMITS.sectionBytes);
    t.tags = newTags;
    if (desired !== undefined) {
      t.desired = newDesired;
      t.desiredVersion += 1;
    }
    t.version += 1;
    t.etag = this.#nextEtag();
    if (desired !== undefined) {
      this.#links
        .get(deviceId)
        ?.sendDesiredPatch({ ...structuredClone(desired), $version: t.desiredVersion });
    }
    this.#changed({
      kind: "twin",
      deviceId,
      opType: "updateTwin",
      version: t.version,
      ...(tags === undefined ? {} : { tags: withoutMetadata(tags) }),
      ...(desired === undefined ? {} : { desired: { ...desired, $version: t.desiredVersion } }),
    });
    return this.twin(deviceId);
  }

  /**
   * The device's reported PATCH. `baseVersion`, when given, must equal the current reported
   * `$version` (412 otherwise). Returns the new reported `$version`.
   */
  patchReported(deviceId: string, patch: JsonObject, baseVersion?: number): number {
    const t = this.#device(deviceId).twin;
    if (baseVersion !== undefined && baseVersion !== t.reportedVersion) {
      throw new HubError(
        412,
        "PreconditionFailed",
        `reported $version is ${t.reportedVersion}, not ${baseVersion}`,
      );
    }
    const next = mergePatch(t.reported, withoutMetadata(patch));
    refuseOverLimit("reported", next, TWIN_LIMITS.sectionBytes);
    t.reported = next;
    t.reportedVersion += 1;
    t.version += 1;
    t.etag = this.#nextEtag();
    this.#changed({
      kind: "twin",
      deviceId,
      opType: "updateTwin",
      version: t.version,
      reported: { ...withoutMetadata(patch), $version: t.reportedVersion },
    });
    return t.reportedVersion;
  }

  // --- connection state and direct methods ----------------------------------------------------

  /** Called by the MQTT side when a device's session opens (with its link) or closes (undefined). */
  setLink(deviceId: string, link: DeviceLink | undefined): void {
    const d = this.#devices.get(deviceId);
    if (link === undefined) this.#links.delete(deviceId);
    else this.#links.set(deviceId, link);
    if (d === undefined) return;
    const now = new Date(this.#now()).toISOString();
    d.connectionState = link === undefined ? "Disconnected" : "Connected";
    d.connectionStateUpdatedTime = now;
    d.lastActivityTime = now;
    this.#changed({ kind: "connection", deviceId, connected: link !== undefined });
  }

  /** Marks device activity (any message from it). */
  touch(deviceId: string): void {
    const d = this.#devices.get(deviceId);
    if (d !== undefined) d.lastActivityTime = new Date(this.#now()).toISOString();
  }

  /** Whether a direct method sent now would reach the device (it is connected and subscribed). */
  acceptsMethods(deviceId: string): boolean {
    return this.#links.get(deviceId)?.acceptsMethods ?? false;
  }

  /**
   * Invokes a direct method: 404 DeviceNotOnline when the device has no session (or has not
   * subscribed to methods), 504 GatewayTimeout when it does not answer in time.
   */
  async invokeMethod(
    deviceId: string,
    o: { methodName: string; payload: Json; responseTimeoutInSeconds: number },
  ): Promise<{ status: number; payload: Json }> {
    this.#device(deviceId);
    const link = this.#links.get(deviceId);
    if (link === undefined) throw new HubError(404, "DeviceNotOnline", `device '${deviceId}' is not online`);
    return link.invokeMethod(o.methodName, o.payload, o.responseTimeoutInSeconds * 1000);
  }

  #device(deviceId: string): DeviceRecord {
    const d = this.#devices.get(deviceId);
    if (d === undefined) throw new HubError(404, "DeviceNotFound", `device '${deviceId}' not found`);
    return d;
  }

  #nextEtag(): string {
    this.#etagCounter += 1;
    const counter = Buffer.alloc(8);
    counter.writeBigUInt64BE(BigInt(this.#etagCounter));
    return counter.toString("base64");
  }
}

export interface DeviceIdentity extends JsonObject {
  deviceId: string;
  etag: string;
}

function isPlainObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The authentication an identity gets from `change` over `current` (undefined: a new identity).
 * The type stays unless named; keys a `sas` identity lacks are made fresh.
 */
function authenticationOf(
  change: AuthenticationChange,
  current: DeviceAuthentication | undefined,
): DeviceAuthentication {
  const type = change.type ?? current?.type ?? "sas";
  if (type === "sas") {
    const keys = current?.type === "sas" ? current : undefined;
    return {
      type,
      primaryKey: change.primaryKey ?? keys?.primaryKey ?? randomBytes(32).toString("base64"),
      secondaryKey: change.secondaryKey ?? keys?.secondaryKey ?? randomBytes(32).toString("base64"),
    };
  }
  if (type === "certificateAuthority") return { type };
  const thumbprints = current?.type === "selfSigned" ? current : undefined;
  const primaryThumbprint = change.primaryThumbprint ?? thumbprints?.primaryThumbprint;
  const secondaryThumbprint = change.secondaryThumbprint ?? thumbprints?.secondaryThumbprint ?? null;
  for (const t of [primaryThumbprint, secondaryThumbprint]) {
    if (t !== null && (t === undefined || !/^[0-9A-Fa-f]{40}$|^[0-9A-Fa-f]{64}$/.test(normalThumbprint(t))))
      throw new HubError(
        400,
        "ArgumentInvalid",
        `a selfSigned identity needs a primary thumbprint (SHA-1 or SHA-256, hex), not '${t ?? ""}'`,
      );
  }
  return { type, primaryThumbprint: primaryThumbprint ?? "", secondaryThumbprint };
}

function thumbprintsOf(auth: DeviceAuthentication): JsonObject {
  return auth.type === "selfSigned"
    ? { primaryThumbprint: auth.primaryThumbprint, secondaryThumbprint: auth.secondaryThumbprint }
    : { primaryThumbprint: null, secondaryThumbprint: null };
}

/** Thumbprints compare as hex digits, whatever their case and separators (`AB:CD` = `abcd`). */
function normalThumbprint(thumbprint: string): string {
  return thumbprint.replace(/[\s:]/g, "").toUpperCase();
}

/** `If-Match`: `*` or the current etag, with or without the quotes HTTP puts around it. */
function checkEtag(current: string, ifMatch: string): void {
  const wanted = ifMatch
    .trim()
    .replace(/^W\//, "")
    .replace(/^"(.*)"$/, "$1");
  if (wanted !== "*" && wanted !== current) {
    throw new HubError(412, "PreconditionFailed", `etag ${wanted} does not match the current ${current}`);
  }
}

function refuseOverLimit(section: string, value: JsonObject, maxBytes: number): void {
  const why = sectionViolation(value, maxBytes);
  if (why !== undefined) throw new HubError(400, "ArgumentInvalid", `twin ${section}: ${why}`);
}
