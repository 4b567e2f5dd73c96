/**
 * Shared access signatures as IoT Hub issues and checks them: a token
 * `SharedAccessSignature sr={resource}&sig={signature}&se={expiry}[&skn={policy}]` where `sr` is the
 * URL-encoded resource URI, `se` the expiry in seconds since the epoch, and `sig` the base64
 * HMAC-SHA256, under the base64-decoded key, of `{sr as written}\n{se}`, URL-encoded.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

/** `encodeURIComponent` plus the characters it leaves alone that IoT Hub's SDKs encode too. */
export function encodeStrict(value: string): string {
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16)}`);
}

function sign(key: string, encodedResource: string, expiry: number): string {
  return createHmac("sha256", Buffer.from(key, "base64"))
    .update(`${encodedResource}\n${expiry}`)
    .digest("base64");
}

export interface TokenOptions {
  /** The resource URI, not yet encoded: `{host}/devices/{id}` or `{host}`. */
  readonly resource: string;
  /** The base64 key. */
  readonly key: string;
  /** Seconds since the epoch. */
  readonly expiry: number;
  /** The shared access policy name (service tokens); absent for device tokens. */
  readonly policy?: string;
}

export function createToken(o: TokenOptions): string {
  const sr = encodeStrict(o.resource);
  const sig = encodeStrict(sign(o.key, sr, o.expiry));
  const skn = o.policy === undefined ? "" : `&skn=${encodeStrict(o.policy)}`;
  return `SharedAccessSignature sr=${sr}&sig=${sig}&se=${o.expiry}${skn}`;
}

export interface ParsedToken {
  /** The resource URI, decoded. */
  readonly resource: string;
  readonly expiry: number;
  readonly policy: string | undefined;
  /** Whether `key` signed this token. */
  signedWith(key: string): boolean;
}

/** Parses a token; undefined when it is not one. */
export function parseToken(token: string): ParsedToken | undefined {
  const prefix = "SharedAccessSignature ";
  if (!token.startsWith(prefix)) return undefined;
  const fields = new Map<string, string>();
  for (const part of token.slice(prefix.length).split("&")) {
    const eq = part.indexOf("=");
    if (eq > 0) fields.set(part.slice(0, eq), part.slice(eq + 1));
  }
  const sr = fields.get("sr");
  const sig = fields.get("sig");
  const se = Number(fields.get("se"));
  if (sr === undefined || sig === undefined || !Number.isSafeInteger(se)) return undefined;
  let resource: string;
  let signature: Buffer;
  let policy: string | undefined;
  try {
    resource = decodeURIComponent(sr);
    signature = Buffer.from(decodeURIComponent(sig), "base64");
    const skn = fields.get("skn");
    policy = skn === undefined ? undefined : decodeURIComponent(skn);
  } catch {
    return undefined;
  }
  return {
    resource,
    expiry: se,
    policy,
    signedWith(key) {
      const expected = Buffer.from(sign(key, sr, se), "base64");
      return expected.length === signature.length && timingSafeEqual(expected, signature);
    },
  };
}

/**
 * Whether a token's resource covers `target`: IoT Hub accepts a token scoped to the resource or to
 * any prefix of it (case-insensitive host, as DNS names are).
 */
export function covers(tokenResource: string, target: string): boolean {
  const a = tokenResource.toLowerCase().replace(/\/+$/, "");
  const b = target.toLowerCase();
  return b === a || b.startsWith(`${a}/`);
}
