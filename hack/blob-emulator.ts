/**
 * A local Azure Blob Storage emulator, small enough for unit tests: one storage account with one
 * container, block blobs put, read and probed over HTTPS (serving certificate from a CA made at
 * start, hack/iothub-emulator/tls.ts), every request authorised by a service SAS on the container
 * verified with the account key as Azure's service does. docs/iothub.md ("The blob emulator")
 * says what it models and what it does not.
 *
 * ```ts
 * const blobs = await startBlobEmulator();
 * const url = blobs.containerSasUrl({ permissions: "rcw" }); // https://127.0.0.1:{port}/{account}/{container}?sv=…&sig=…
 * // PUT {container}/{name}?{sas} (x-ms-blob-type: BlockBlob), HEAD and GET likewise
 * blobs.requests.PUT;                                        // requests answered, by method
 * await blobs.close();
 * ```
 *
 * URLs are path-style, as Azurite's are: `/{account}/{container}/{blob name}`. What it checks, in
 * Azure's order and with Azure's error codes (`x-ms-error-code` and an XML `<Error>` body):
 * - the SAS: `sig` present and equal to the HMAC-SHA256, keyed by the account key, of the string
 *   to sign of service version 2020-12-06 and later (403 `AuthenticationFailed`); `sr=c` on this
 *   container; `se` not past and `st` not ahead (403 `AuthenticationFailed`);
 * - the permission the operation needs (403 `AuthorizationPermissionMismatch`): `r` to read or
 *   probe, `c` or `w` to create a blob, `w` to overwrite one;
 * - a PUT names its blob type `BlockBlob` (400 `MissingRequiredHeader` / `InvalidHeaderValue`) and
 *   its `content-length`.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { makePki } from "./iothub-emulator/tls.ts";

/** The service version the emulator signs its SAS with, and the oldest it verifies. */
export const BLOB_SAS_VERSION = "2021-08-06";
const OLDEST_VERSION = "2020-12-06";

export interface BlobEmulatorOptions {
  readonly account?: string;
  readonly container?: string;
  /** Wall-clock milliseconds, for SAS start and expiry. Default Date.now. */
  readonly now?: () => number;
}

export interface BlobEmulator {
  readonly account: string;
  readonly container: string;
  /** PEM of the CA that signed the serving certificate. */
  readonly ca: string;
  /** `https://127.0.0.1:{port}/{account}/{container}`, without a SAS. */
  readonly containerUrl: string;
  /** Requests answered so far, by method (refused ones included). */
  readonly requests: Readonly<Record<string, number>>;
  /**
   * A container SAS URL signed with the account key: `permissions` (default `rcw`), expiring at
   * `expiresAt` (default an hour from now), `signature` to replace the real one (a forged SAS).
   */
  containerSasUrl(o?: { permissions?: string; expiresAt?: Date; signature?: string }): string;
  /** A stored blob's bytes, or undefined. */
  blob(name: string): Buffer | undefined;
  close(): Promise<void>;
}

interface StoredBlob {
  readonly content: Buffer;
  readonly contentType: string;
  readonly etag: string;
  readonly lastModified: string;
}

class BlobRefusal extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Azure's SAS time notation: ISO 8601 in UTC to the second. */
const sasTime = (at: Date) => at.toISOString().replace(/\.\d{3}Z$/, "Z");

/** The fields of a service SAS, in the order of the string to sign (version 2020-12-06 and later). */
const SIGNED_FIELDS = [
  "sp",
  "st",
  "se",
  "canonicalizedResource",
  "si",
  "sip",
  "spr",
  "sv",
  "sr",
  "snapshot",
  "ses",
  "rscc",
  "rscd",
  "rsce",
  "rscl",
  "rsct",
] as const;

const stringToSign = (query: URLSearchParams, canonicalizedResource: string): string =>
  SIGNED_FIELDS.map((f) =>
    f === "canonicalizedResource" ? canonicalizedResource : (query.get(f) ?? ""),
  ).join("\n");

export async function startBlobEmulator(o: BlobEmulatorOptions = {}): Promise<BlobEmulator> {
  const account = o.account ?? "devstoreaccount1";
  const container = o.container ?? "devicelet";
  const now = o.now ?? Date.now;
  const key = randomBytes(64);
  const pki = makePki(`${account}.blob.localhost`);
  const blobs = new Map<string, StoredBlob>();
  const requests: Record<string, number> = {};
  const canonical = `/blob/${account}/${container}`;
  const sign = (text: string) => createHmac("sha256", key).update(text, "utf8").digest("base64");

  const authorize = (query: URLSearchParams, needs: (perms: string) => string | undefined) => {
    const sig = query.get("sig");
    if (sig === null) throw new BlobRefusal(403, "AuthenticationFailed", "the request carries no signature");
    const version = query.get("sv") ?? "";
    if (version < OLDEST_VERSION)
      throw new BlobRefusal(403, "AuthenticationFailed", `signed version ${version} is not modelled`);
    if (query.get("sr") !== "c")
      throw new BlobRefusal(403, "AuthenticationFailed", "only container SAS (sr=c) is modelled");
    const expected = Buffer.from(sign(stringToSign(query, canonical)), "base64");
    const given = Buffer.from(sig, "base64");
    if (given.length !== expected.length || !timingSafeEqual(given, expected))
      throw new BlobRefusal(403, "AuthenticationFailed", "Signature did not match.");
    const expiry = Date.parse(query.get("se") ?? "");
    if (Number.isNaN(expiry) || expiry <= now())
      throw new BlobRefusal(403, "AuthenticationFailed", "Signed expiry time has passed.");
    const start = query.get("st");
    if (start !== null && Date.parse(start) > now())
      throw new BlobRefusal(403, "AuthenticationFailed", "Signed start time is in the future.");
    const missing = needs(query.get("sp") ?? "");
    if (missing !== undefined)
      throw new BlobRefusal(
        403,
        "AuthorizationPermissionMismatch",
        `This request is not authorized to perform this operation using this permission (needs ${missing}).`,
      );
  };

  const handle = (
    req: IncomingMessage,
    body: Buffer,
  ): { status: number; headers: Record<string, string>; body?: Buffer } => {
    const url = new URL(req.url ?? "/", "https://emulator");
    const [, accountPart, containerPart, ...rest] = url.pathname.split("/");
    if (accountPart !== account || containerPart !== container)
      throw new BlobRefusal(404, "ContainerNotFound", "The specified container does not exist.");
    const name = decodeURIComponent(rest.join("/"));
    if (name === "") throw new BlobRefusal(400, "InvalidUri", "container operations are not modelled");
    const stored = blobs.get(name);
    const method = req.method ?? "GET";
    if (method === "GET" || method === "HEAD") {
      authorize(url.searchParams, (p) => (p.includes("r") ? undefined : "r"));
      if (!stored) throw new BlobRefusal(404, "BlobNotFound", "The specified blob does not exist.");
      return {
        status: 200,
        headers: {
          "content-length": String(stored.content.length),
          "content-type": stored.contentType,
          etag: stored.etag,
          "last-modified": stored.lastModified,
          "x-ms-blob-type": "BlockBlob",
        },
        ...(method === "GET" ? { body: stored.content } : {}),
      };
    }
    if (method === "PUT") {
      authorize(url.searchParams, (p) =>
        stored ? (p.includes("w") ? undefined : "w") : /[cw]/.test(p) ? undefined : "c or w",
      );
      const type = req.headers["x-ms-blob-type"];
      if (type === undefined)
        throw new BlobRefusal(
          400,
          "MissingRequiredHeader",
          "An HTTP header that's mandatory for this request is not specified: x-ms-blob-type.",
        );
      if (type !== "BlockBlob")
        throw new BlobRefusal(400, "InvalidHeaderValue", `x-ms-blob-type ${String(type)} is not modelled`);
      if (req.headers["content-length"] === undefined)
        throw new BlobRefusal(411, "MissingContentLengthHeader", "Content-Length HTTP header is missing.");
      const etag = `"0x${createHash("sha256").update(body).digest("hex").slice(0, 16).toUpperCase()}"`;
      blobs.set(name, {
        content: body,
        contentType: req.headers["content-type"] ?? "application/octet-stream",
        etag,
        lastModified: new Date(now()).toUTCString(),
      });
      return { status: 201, headers: { etag, "x-ms-request-server-encrypted": "true" } };
    }
    throw new BlobRefusal(405, "UnsupportedHttpVerb", `${method} is not modelled`);
  };

  const server = https.createServer({ cert: pki.cert, key: pki.key }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const method = req.method ?? "GET";
      requests[method] = (requests[method] ?? 0) + 1;
      let answer: { status: number; headers: Record<string, string>; body?: Buffer };
      try {
        answer = handle(req, Buffer.concat(chunks));
      } catch (err) {
        const refusal =
          err instanceof BlobRefusal ? err : new BlobRefusal(500, "InternalError", (err as Error).message);
        const xml = `<?xml version="1.0" encoding="utf-8"?><Error><Code>${refusal.code}</Code><Message>${refusal.message}</Message></Error>`;
        answer = {
          status: refusal.status,
          headers: { "x-ms-error-code": refusal.code, "content-type": "application/xml" },
          ...(method === "HEAD" ? {} : { body: Buffer.from(xml) }),
        };
      }
      res.writeHead(answer.status, { "x-ms-version": BLOB_SAS_VERSION, ...answer.headers });
      res.end(answer.body);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const containerUrl = `https://127.0.0.1:${port}/${account}/${container}`;

  return {
    account,
    container,
    ca: pki.ca,
    containerUrl,
    requests,
    containerSasUrl(s = {}) {
      const query = new URLSearchParams({
        sv: BLOB_SAS_VERSION,
        sr: "c",
        sp: s.permissions ?? "rcw",
        se: sasTime(s.expiresAt ?? new Date(now() + 3600_000)),
        spr: "https",
      });
      query.set("sig", s.signature ?? sign(stringToSign(query, canonical)));
      return `${containerUrl}?${query.toString()}`;
    },
    blob: (name) => blobs.get(name)?.content,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
