/**
 * IoT Hub service credentials: a shared access policy's connection string, and the shared access
 * signature tokens made from it for the `Authorization` header of the service REST API.
 *
 * A token is `SharedAccessSignature sr={resource}&sig={signature}&se={expiry}&skn={policy}`: `sr`
 * the URL-encoded resource (the hub's host name), `se` the expiry in seconds since the epoch, and
 * `sig` the URL-encoded base64 HMAC-SHA256, under the base64-decoded key, of `{sr}\n{se}`.
 * {@link SasTokenSource} caches one token and makes a new one once a fifth of its lifetime is left,
 * so no request goes out with a token about to expire.
 *
 *   const credentials = parseServiceConnectionString(text);   // throws naming what is missing
 *   const tokens = new SasTokenSource({ credentials, ttlSeconds: 3600 });
 *   headers.authorization = tokens.token();
 */
import { createHmac } from "node:crypto";

export interface ServiceCredentials {
  /** The hub's host name (`my-hub.azure-devices.net`): what tokens are scoped to. */
  readonly hostName: string;
  readonly policyName: string;
  /** The policy's base64 key. */
  readonly key: string;
}

const PARTS = ["HostName", "SharedAccessKeyName", "SharedAccessKey"] as const;

/**
 * Parses `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` (any order, other fields ignored).
 * Throws naming every missing or empty part; the key itself never appears in the message.
 */
export function parseServiceConnectionString(text: string): ServiceCredentials {
  const fields = new Map<string, string>();
  for (const field of text.trim().split(";")) {
    const eq = field.indexOf("=");
    // The key is base64 and may end in `=`: split at the first one only.
    if (eq > 0) fields.set(field.slice(0, eq).trim(), field.slice(eq + 1).trim());
  }
  const missing = PARTS.filter((part) => (fields.get(part) ?? "") === "");
  if (missing.length > 0) throw new Error(`IoT Hub service connection string lacks ${missing.join(", ")}`);
  const key = fields.get("SharedAccessKey") ?? "";
  if (Buffer.from(key, "base64").length === 0)
    throw new Error("IoT Hub service connection string: SharedAccessKey is not base64");
  return {
    hostName: fields.get("HostName") ?? "",
    policyName: fields.get("SharedAccessKeyName") ?? "",
    key,
  };
}

/** `encodeURIComponent` plus `!'()*`, which IoT Hub's SDKs encode too. */
function encodeStrict(value: string): string {
  return encodeURIComponent(value).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** A service token for `resource` valid until `expirySeconds` (seconds since the epoch). */
export function serviceToken(o: {
  readonly credentials: ServiceCredentials;
  readonly expirySeconds: number;
  /** Default: the hub's host name. */
  readonly resource?: string;
}): string {
  const sr = encodeStrict(o.resource ?? o.credentials.hostName);
  const signature = createHmac("sha256", Buffer.from(o.credentials.key, "base64"))
    .update(`${sr}\n${o.expirySeconds}`)
    .digest("base64");
  return `SharedAccessSignature sr=${sr}&sig=${encodeStrict(signature)}&se=${o.expirySeconds}&skn=${encodeStrict(o.credentials.policyName)}`;
}

export interface SasTokenSourceOptions {
  readonly credentials: ServiceCredentials;
  /** Lifetime of each token. Default 3600. */
  readonly ttlSeconds?: number;
  /** Milliseconds since the epoch (token expiry is wall-clock time). */
  readonly now?: () => number;
}

/** One cached service token, renewed when a fifth of its lifetime is left. */
export class SasTokenSource {
  readonly hostName: string;
  readonly #credentials: ServiceCredentials;
  readonly #ttlSeconds: number;
  readonly #now: () => number;
  #token = "";
  #expirySeconds = 0;

  constructor(options: SasTokenSourceOptions) {
    this.#credentials = options.credentials;
    this.hostName = options.credentials.hostName;
    this.#ttlSeconds = options.ttlSeconds ?? 3600;
    if (!(this.#ttlSeconds >= 60))
      throw new Error(`SAS token lifetime must be at least 60 s, not ${this.#ttlSeconds}`);
    this.#now = options.now ?? Date.now;
  }

  /** The token to send now: the cached one, or a fresh one when the cached one nears its expiry. */
  token(): string {
    const nowSeconds = Math.floor(this.#now() / 1000);
    if (this.#expirySeconds - nowSeconds <= this.#ttlSeconds / 5) {
      this.#expirySeconds = nowSeconds + this.#ttlSeconds;
      this.#token = serviceToken({ credentials: this.#credentials, expirySeconds: this.#expirySeconds });
    }
    return this.#token;
  }

  /** When the current token expires (seconds since the epoch); 0 before the first. */
  expirySeconds(): number {
    return this.#expirySeconds;
  }
}
