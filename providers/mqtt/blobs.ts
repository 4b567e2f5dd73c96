/**
 * Large file contents by reference (docs/protocol.md § 9): instead of carrying a file inline, a
 * desired document may carry `ref: { url, sha256, size }`, which the device downloads and checks.
 * Two parts:
 *
 * - {@link BlobStore}, the seam: keeps content under its sha256 and answers the URL a device
 *   fetches it from. {@link AzureBlobContainer} implements it over an Azure Blob Storage container
 *   given by a container SAS URL, on node:https (a HEAD first, so content already stored is not
 *   sent again; then a block-blob PUT).
 * - {@link FileReferences}, the policy: which files of a workload go by reference — every file
 *   not from a Secret whose content is at least `minFileBytes` — uploaded before the pod's
 *   document is built. The same content always gives the same URL, so a restarted devicelet
 *   builds the same document and publishes nothing.
 *
 * Files from Secrets never go by reference: anyone holding a blob's URL can read it, and the URL
 * sits in the desired document. Blobs are never deleted here: a device may fetch one again at any
 * time, and a content once stored is remembered (bounded) without asking the store again. Errors name a blob by scheme, host and path only: the SAS query is
 * a credential and never reaches a log, a status or an Event.
 *
 *   const store = new AzureBlobContainer({ containerUrl: "https://acct.blob.core.windows.net/c?sv=…&sig=…" });
 *   const references = new FileReferences({ store, minFileBytes: 4096 });
 *   const refOf = await references.prepare(workload);   // uploads; rejects Transient on failure
 *   const pod = toDesiredPod(workload, refOf);          // large files as `ref`
 *   store.close();
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import https from "node:https";
import { urlLocation } from "../../src/log/redact.ts";
import { transient } from "../../src/provider/errors.ts";
import type { AppFile, Workload } from "../../src/provider/types.ts";
import { containerUrlProblem, type DesiredBlobsConfig } from "./schema.ts";

/** A file's reference as the desired document carries it. */
export interface FileRef {
  readonly url: string;
  readonly sha256: string;
  readonly size: number;
}

/** Where large file contents are kept for devices to fetch. */
export interface BlobStore {
  /**
   * Stores `content` (whose lowercase hex sha256 is `sha256`) unless already stored, and resolves
   * the URL a device GETs it from: the same for the same content, every time.
   * @throws BlobStoreError when the store refuses or does not answer.
   */
  put(sha256: string, content: Buffer): Promise<{ readonly url: string }>;
  /** Closes idle connections. Idempotent. */
  close(): void;
}

/** A blob store's refusal or failure; the message names the blob without any query. */
export class BlobStoreError extends Error {
  /** HTTP status; 0 when no answer came (network, TLS, timeout). */
  readonly status: number;
  constructor(status: number, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "BlobStoreError";
    this.status = status;
  }
}

/** The Blob service version devicelet speaks (its SAS may name another; each is honoured). */
export const BLOB_API_VERSION = "2021-08-06";
/** Where blobs go in the container: content-addressed, so names never collide or change. */
export const BLOB_PREFIX = "devicelet/sha256/";

const SHA256_HEX = /^[0-9a-f]{64}$/;

export interface AzureBlobContainerOptions {
  /**
   * `https://{account}.blob.core.windows.net/{container}?sv=…&sp=…&se=…&sig=…`: a service SAS on
   * the container granting read, create and write. Devices get blob URLs carrying the same query.
   */
  readonly containerUrl: string;
  /** PEM of a CA to trust besides the system's (a private endpoint, an emulator). */
  readonly ca?: string;
  /** Timeout of one request. Default 30 s. */
  readonly timeoutMs?: number;
}

/** An Azure Blob Storage container as a {@link BlobStore}. */
export class AzureBlobContainer implements BlobStore {
  readonly #container: URL;
  readonly #agent: https.Agent;
  readonly #timeoutMs: number;

  /** @throws Error when `containerUrl` is not an https URL of a container with a SAS query. */
  constructor(o: AzureBlobContainerOptions) {
    const problem = containerUrlProblem(o.containerUrl);
    if (problem !== undefined) throw new Error(`the blob container URL ${problem}`);
    const url = new URL(o.containerUrl);
    url.pathname = url.pathname.replace(/\/+$/, "");
    url.hash = "";
    this.#container = url;
    this.#agent = new https.Agent({
      keepAlive: true,
      maxSockets: 8,
      ...(o.ca === undefined ? {} : { ca: o.ca }),
    });
    this.#timeoutMs = o.timeoutMs ?? 30_000;
  }

  /** The URL of the blob holding content with this sha256 (the container's SAS query included). */
  blobUrl(sha256: string): string {
    const url = new URL(this.#container);
    url.pathname = `${url.pathname}/${BLOB_PREFIX}${sha256}`;
    return url.toString();
  }

  async put(sha256: string, content: Buffer): Promise<{ readonly url: string }> {
    if (!SHA256_HEX.test(sha256)) throw new Error(`not a lowercase hex sha256: ${sha256}`);
    const url = this.blobUrl(sha256);
    const head = await this.#send("HEAD", url);
    // Stored under its own hash: same name, same bytes. A blob of another length is a torn write.
    if (head.status === 200 && Number(head.headers["content-length"]) === content.length) return { url };
    if (head.status !== 200 && head.status !== 404) throw refusal("HEAD", url, head);
    const put = await this.#send("PUT", url, content);
    if (put.status !== 201) throw refusal("PUT", url, put);
    return { url };
  }

  close(): void {
    this.#agent.destroy();
  }

  #send(method: "HEAD" | "PUT", url: string, body?: Buffer): Promise<Answer> {
    const headers: Record<string, string> = { "x-ms-version": BLOB_API_VERSION };
    if (body) {
      headers["x-ms-blob-type"] = "BlockBlob";
      headers["content-type"] = "application/octet-stream";
      headers["content-length"] = String(body.length);
    }
    return new Promise((resolve, reject) => {
      const failed = (err: Error) =>
        reject(
          new BlobStoreError(
            0,
            `Azure Blob ${method} ${urlLocation(url)} failed: ${err.message.replaceAll(url, urlLocation(url))}`,
          ),
        );
      const req = https.request(url, { method, headers, agent: this.#agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on("error", failed);
      });
      req.setTimeout(this.#timeoutMs, () => req.destroy(new Error(`no answer within ${this.#timeoutMs} ms`)));
      req.on("error", failed);
      req.end(body);
    });
  }
}

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: Buffer;
}

/**
 * The error of an unexpected answer: Azure's error code (`x-ms-error-code`, else the XML body's
 * `<Code>`). The body's message is left out: an authentication failure quotes the string it signed.
 */
function refusal(method: string, url: string, answer: Answer): BlobStoreError {
  const header = answer.headers["x-ms-error-code"];
  const code =
    (typeof header === "string" && header) ||
    /<Code>([A-Za-z0-9]+)<\/Code>/.exec(answer.body.toString("utf8"))?.[1] ||
    `Http${answer.status}`;
  const hint =
    answer.status === 403
      ? " (the container SAS must be valid, unexpired and grant read, create and write)"
      : "";
  return new BlobStoreError(
    answer.status,
    `Azure Blob ${method} ${urlLocation(url)} answered ${answer.status} ${code}${hint}`,
  );
}

/** What {@link FileReferences.prepare} resolves: a file's reference, or undefined to keep it inline. */
export type ReferenceOf = (file: AppFile) => FileRef | undefined;

export interface FileReferencesOptions {
  readonly store: BlobStore;
  /** Files at least this large (decoded bytes) go by reference. */
  readonly minFileBytes: number;
  /** Contents remembered as stored, so a burst of pods sharing a file asks the store once. Default 4096. */
  readonly remember?: number;
}

/** The policy: which files of a workload go by reference, uploaded. */
export class FileReferences {
  readonly #o: FileReferencesOptions;
  /** sha256 → URL of contents stored by this process (oldest first, bounded). */
  readonly #stored = new Map<string, string>();
  /** sha256 → upload under way, shared by every pod that needs it. */
  readonly #pending = new Map<string, Promise<string>>();

  constructor(options: FileReferencesOptions) {
    this.#o = options;
  }

  /** Whether a file goes by reference: not from a Secret, and at least `minFileBytes` long. */
  referenced(file: AppFile): boolean {
    return !file.secret && decodedLength(file) >= this.#o.minFileBytes;
  }

  /**
   * Uploads the workload's files that go by reference (each content once) and resolves their
   * references. Nothing is uploaded for a workload without such files.
   * @throws ProviderError Transient when an upload fails (naming the file, never the SAS).
   */
  async prepare(w: Workload): Promise<ReferenceOf> {
    const refs = new Map<AppFile, FileRef>();
    const files = w.apps.flatMap((a) => a.files.filter((f) => this.referenced(f)));
    await Promise.all(
      files.map(async (file) => {
        const content = Buffer.from(file.content, file.encoding === "base64" ? "base64" : "utf8");
        const sha256 = createHash("sha256").update(content).digest("hex");
        try {
          refs.set(file, { url: await this.#upload(sha256, content), sha256, size: content.length });
        } catch (err) {
          throw transient(
            `file ${file.path} of pod ${w.pod.namespace}/${w.pod.name} could not be stored for the device to fetch: ${(err as Error).message}`,
            { cause: err },
          );
        }
      }),
    );
    return (file) => refs.get(file);
  }

  #upload(sha256: string, content: Buffer): Promise<string> {
    const known = this.#stored.get(sha256);
    if (known !== undefined) return Promise.resolve(known);
    let pending = this.#pending.get(sha256);
    if (!pending) {
      pending = this.#o.store
        .put(sha256, content)
        .then(({ url }) => {
          this.#stored.set(sha256, url);
          const oldest = this.#stored.keys().next();
          if (this.#stored.size > (this.#o.remember ?? 4096) && !oldest.done)
            this.#stored.delete(oldest.value);
          return url;
        })
        .finally(() => this.#pending.delete(sha256));
      this.#pending.set(sha256, pending);
    }
    return pending;
  }
}

/** Bytes of a file's content once decoded, without decoding it. */
const decodedLength = (file: AppFile): number =>
  file.encoding === "base64"
    ? Buffer.byteLength(file.content, "base64")
    : Buffer.byteLength(file.content, "utf8");

/**
 * The container `desired.blobs` names: its SAS URL read from `containerUrlFile` (trimmed) or
 * given inline, its extra CA from `caFile`.
 * @throws Error when a file cannot be read or the URL is not a container SAS URL.
 */
export function containerOf(config: DesiredBlobsConfig): AzureBlobContainer {
  const containerUrl = (config.containerUrl ?? readFileSync(config.containerUrlFile ?? "", "utf8")).trim();
  return new AzureBlobContainer({
    containerUrl,
    ...(config.caFile === undefined ? {} : { ca: readFileSync(config.caFile, "utf8") }),
  });
}
