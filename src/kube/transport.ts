/**
 * The HTTP layer under the {@link KubeClient}: raw JSON requests and watch streams to the API
 * server, authenticated from a {@link Kubeconfig} (see `access.ts`), every request paid for from
 * the shared {@link RequestBudget} and counted by verb and resource.
 *
 * It sends with undici's plain `request` (not `fetch`: no WHATWG Request, Response and streams per
 * call) and fails with client-node's `ApiException`, imported from its own module: the package
 * index loads every generated model and API class (about 86 MiB of memory), and the generated API
 * classes would convert every object to model classes anyway (see `types.ts`). One undici
 * dispatcher is built once and reused by every request of both lanes; each lane's requests in
 * flight are capped here, so neither waits for a connection the other holds.
 */
import { ApiException } from "@kubernetes/client-node/dist/gen/apis/exception.js";
import type { Logger } from "pino";
import { systemClock, type Clock } from "../base/clock.ts";
import { Slots } from "../base/slots.ts";
import {
  MAX_IN_FLIGHT,
  MAX_NODE_WRITES_IN_FLIGHT,
  openKubeAccess,
  undici,
  type KubeAccess,
  type RequestTarget,
  type UndiciRequestOptions,
  type UndiciResponse,
} from "./access.ts";
import type { RequestBudget } from "./budget.ts";
import type { Kubeconfig } from "./kubeconfig.ts";
import type { WatchEvent } from "./types.ts";

export type Query = Readonly<Record<string, string | number | boolean | undefined>>;

export interface TransportRequest {
  readonly method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** Absolute API path, e.g. `/api/v1/namespaces/ns/pods/name/status`. */
  readonly path: string;
  readonly query?: Query;
  /** Sent as JSON. */
  readonly body?: unknown;
  /** Defaults to `application/json` when there is a body. */
  readonly contentType?: string;
  readonly signal?: AbortSignal;
  /**
   * `heartbeat` draws from the heartbeat budget (node Leases and node status), so a flood of pod
   * status writes, reads and Events never delays a node's heartbeat; the default lane is the rest.
   * A heartbeat's timeout starts when it gets a connection, not while it waits for one (below).
   */
  readonly lane?: "heartbeat";
  /**
   * A write of a Node (heartbeat lane): it also waits for one of the {@link MAX_NODE_WRITES_IN_FLIGHT}
   * places of node writes, so a change of every node at once does not open a connection per node.
   */
  readonly nodeWrite?: boolean;
  /** Gives up on the request (a retryable `TimeoutError`) after this long; default the transport's. */
  readonly timeoutMs?: number;
  /** `Accept` header; default `application/json` (e.g. {@link METADATA_LIST_ACCEPT}). */
  readonly accept?: string;
}

export interface WatchRequest {
  readonly path: string;
  readonly query?: Query;
  readonly signal?: AbortSignal;
  /** `Accept` header; default `application/json` (e.g. {@link METADATA_ACCEPT}). */
  readonly accept?: string;
}

/**
 * Ask the API server for metadata only (`PartialObjectMetadata`), as client-go's metadata
 * informers do: a watch or get of ConfigMaps and Secrets then carries no data at all.
 */
export const METADATA_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
/** The list form of {@link METADATA_ACCEPT}. */
export const METADATA_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

/** How long after the API server became reachable a 403 is still taken for a server starting up. */
const FRESH_FORBIDDEN_MS = 60_000;

/**
 * The audit-style verb and the resource (with subresource) of a request path, as the budget counts
 * them: `GET /api/v1/namespaces/a/pods` → `list pods`, `PATCH .../pods/p/status` → `patch pods/status`.
 */
export function describeRequest(
  method: string,
  path: string,
  watch = false,
): { verb: string; resource: string } {
  const segments = path.split("?")[0]?.split("/").filter(Boolean) ?? [];
  // Drop `api/v1` or `apis/<group>/<version>`.
  let rest =
    segments[0] === "api" ? segments.slice(2) : segments[0] === "apis" ? segments.slice(3) : segments;
  if (rest[0] === "namespaces" && rest.length >= 3) rest = rest.slice(2);
  const [resource = "", name, sub] = rest;
  const full = sub ? `${resource}/${sub}` : resource;
  const verbs: Record<string, string> = { POST: "create", PUT: "update", PATCH: "patch", DELETE: "delete" };
  const verb = watch
    ? "watch"
    : method === "GET"
      ? name
        ? "get"
        : "list"
      : (verbs[method] ?? method.toLowerCase());
  return { verb, resource: full };
}

/**
 * Cuts a watch stream into its lines (one JSON event each), as strings, leaving out blank ones.
 * It works on the bytes as they come and decodes each line once, on its own: decoding the stream
 * first (`setEncoding`) made a string of each chunk, often several pieces joined, which every
 * search for a newline and every line taken from it then copied again (the watch's part of a
 * 5,000-pod burst's allocation went from 115 to 97 MiB, `npm run bench -- throughput`). Splitting
 * UTF-8 at newlines is safe: the byte 0x0A is never part of another character. A line that spans
 * chunks is joined from its own pieces.
 */
export class LineSplitter {
  /** The start of a line whose end has not come yet, in pieces. */
  #pending: Uint8Array[] = [];

  /** The lines that `chunk` completes, in order; keeps the start of an unfinished one. */
  push(chunk: Uint8Array): string[] {
    const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const lines: string[] = [];
    let start = 0;
    for (let nl = bytes.indexOf(NEWLINE); nl >= 0; nl = bytes.indexOf(NEWLINE, start)) {
      let line: string;
      if (this.#pending.length === 0) line = bytes.toString("utf8", start, nl);
      else {
        this.#pending.push(bytes.subarray(start, nl));
        line = Buffer.concat(this.#pending).toString("utf8");
        this.#pending = [];
      }
      if (!blank(line)) lines.push(line);
      start = nl + 1;
    }
    if (start < bytes.length) this.#pending.push(bytes.subarray(start));
    return lines;
  }
}

const NEWLINE = 0x0a;
/** Whether a line is only white space (JSON.parse takes white space around a value). */
const blank = (line: string): boolean => line === "" || (line.charCodeAt(0) <= 0x20 && line.trim() === "");

export interface KubeTransportOptions {
  /** Where and as whom: see `loadKubeconfig`. */
  readonly kubeconfig: Kubeconfig;
  /** The default lane's budget; every request of both lanes is counted here. */
  readonly budget: RequestBudget;
  /** The heartbeat lane's own tokens; default: the same budget as the rest. */
  readonly heartbeatBudget?: RequestBudget;
  /** Timeout of a request that names none (watch streams have none); default 30 s. */
  readonly requestTimeoutMs?: number;
  readonly logger: Logger;
  readonly userAgent: string;
  /** Times the re-reads of a token file; default the system clock. */
  readonly clock?: Clock;
}

export class KubeTransport {
  readonly #kubeconfig: Kubeconfig;
  readonly #clock: Clock;
  readonly #budget: RequestBudget;
  readonly #heartbeat: RequestBudget;
  readonly #timeoutMs: number;
  readonly #log: Logger;
  readonly #userAgent: string;
  /** Requests in flight per lane, at most the lane's cap (watches are not counted). */
  readonly #slots = {
    default: new Slots(MAX_IN_FLIGHT.default),
    heartbeat: new Slots(MAX_IN_FLIGHT.heartbeat),
  };
  /** Node writes in flight, within the heartbeat lane's. */
  readonly #nodeWrites = new Slots(MAX_NODE_WRITES_IN_FLIGHT);
  readonly #server: string;
  /** Opened on the first request (client-node, when needed, is imported then); retried if it failed. */
  #access: Promise<KubeAccess> | undefined;
  /** Set by `close`: what fails from then on failed because devicelet is stopping. */
  #closed = false;
  /** Whether the last request got no answer at all (refused, reset, timed out). */
  #unreachable = false;
  /** When the API server last became reachable: process start, or the end of an outage. */
  #reachableSince = performance.now();

  constructor(options: KubeTransportOptions) {
    this.#kubeconfig = options.kubeconfig;
    this.#clock = options.clock ?? systemClock;
    this.#budget = options.budget;
    this.#heartbeat = options.heartbeatBudget ?? options.budget;
    this.#timeoutMs = options.requestTimeoutMs ?? 30_000;
    this.#log = options.logger;
    this.#userAgent = options.userAgent;
    this.#server = options.kubeconfig.cluster.server.replace(/\/+$/, "");
  }

  /** Requests of `lane` waiting for a connection of theirs (not yet built, let alone sent). */
  waiting(lane: "default" | "heartbeat" = "default"): number {
    return this.#slots[lane].waiting;
  }

  /** The API server's base URL from the kubeconfig. */
  get server(): string {
    return this.#server;
  }

  /**
   * Sends one request after taking a budget token, and resolves with the parsed JSON body of a
   * 2xx answer. Anything else rejects with client-node's `ApiException` (`code`, `body` the Status
   * as a JSON string), network failures with undici's or the socket's error, a timeout with a
   * {@link RequestTimeoutError}; read them with `errors.ts`.
   */
  async request<T>(req: TransportRequest): Promise<T> {
    const { verb, resource } = describeRequest(req.method, req.path);
    if (this.#closed) throw new ClientClosedError(verb, resource, new Error("the API client is closed"));
    // The timeout starts once the request may go: waiting for a token is the budget's business.
    await (req.lane === "heartbeat" ? this.#heartbeat : this.#budget).take(req.signal);
    const timeoutMs = req.timeoutMs ?? this.#timeoutMs;
    // A connection of the lane's, or a turn in line for one: only then is the request built, so
    // what waits costs a closure, not a request with its buffers. The wait counts towards the
    // timeout, except for heartbeats: each node has at most one in line, and an API server too
    // busy for them all (5,000 nodes renew 500 Leases a second) met a line in which every renewal
    // had nearly timed out by its turn, was sent, then given up on while the server worked on it:
    // more than half the server's work on Leases was wasted, and the nodes went NotReady. Waiting
    // its turn, each renewal is answered in the time the server takes.
    const heartbeat = req.lane === "heartbeat";
    let deadline = heartbeat ? undefined : new Deadline(req.signal, timeoutMs);
    let release: (() => void) | undefined;
    let releaseNodeWrite: (() => void) | undefined;
    let sent = false;
    let response: UndiciResponse;
    let text: string;
    let started: number;
    try {
      if (req.nodeWrite) releaseNodeWrite = await this.#nodeWrites.acquire(deadline?.signal ?? req.signal);
      release = await this.#slots[req.lane ?? "default"].acquire(deadline?.signal ?? req.signal);
      deadline ??= new Deadline(req.signal, timeoutMs);
      const signal = deadline.signal;
      const options = await this.#prepare(req.method, signal, req.accept);
      if (req.body !== undefined) {
        options.headers["Content-Type"] = req.contentType ?? "application/json";
        options.body = JSON.stringify(req.body);
      }
      this.#budget.record(verb, resource);
      started = performance.now();
      sent = true;
      response = await undici().request(this.#url(req.path, req.query), options);
      text = await response.body.text();
    } catch (err) {
      // Closed while this request waited or ran (read through a method: the field was checked above).
      if (this.#isClosed()) throw new ClientClosedError(verb, resource, err);
      if (sent && !req.signal?.aborted) {
        this.#unreachable = true;
        this.#budget.answered(verb, "error");
      }
      // undici and the line reject with the signal's reason: name a timeout, so logs and guards tell it.
      if (deadline?.timedOut && !req.signal?.aborted) throw new RequestTimeoutError(verb, resource, err);
      if (sent && !req.signal?.aborted) throw new RequestFailedError(verb, resource, err);
      throw err;
    } finally {
      release?.();
      releaseNodeWrite?.();
      deadline?.done();
    }
    if (this.#unreachable) {
      this.#unreachable = false;
      this.#reachableSince = performance.now();
    }
    const code = response.statusCode;
    this.#budget.answered(verb, String(code));
    const ms = Math.round(performance.now() - started);
    this.#log.trace({ verb, resource, path: req.path, code, ms }, "kube request");
    if (code >= 200 && code < 300) {
      return (text === "" ? undefined : JSON.parse(text)) as T;
    }
    const error = apiException(code, req.method, req.path, text, flatHeaders(response.headers));
    // An API server that has just started answers 403 until its authorizer has loaded the RBAC
    // rules (seen on 1.36 right after a restart), and a fresh install may bind devicelet's role a
    // moment after devicelet starts: a 403 that soon is worth retrying, not a verdict.
    if (error.code === 403 && performance.now() - this.#reachableSince < FRESH_FORBIDDEN_MS)
      error.transient = true;
    throw error;
  }

  /**
   * Opens a watch (`?watch=true`) after taking a budget token and yields its events as they
   * arrive. Ends when the server closes the stream or `signal` aborts (then it just returns). An
   * HTTP error or an `ERROR` event (e.g. 410 Expired) rejects with an `ApiException`. Breaking out
   * of the loop closes the connection.
   */
  async *watch<T>(req: WatchRequest): AsyncGenerator<WatchEvent<T>, void, undefined> {
    const { resource } = describeRequest("GET", req.path, true);
    const local = new AbortController();
    const signal = req.signal ? AbortSignal.any([req.signal, local.signal]) : local.signal;
    const query = { ...req.query, watch: true };
    const options = await this.#prepare("GET", signal, req.accept);
    await this.#budget.take(req.signal);
    this.#budget.record("watch", resource);
    try {
      const response = await undici().request(this.#url(req.path, query), options);
      this.#budget.answered("watch", String(response.statusCode));
      if (response.statusCode !== 200) {
        const text = await response.body.text();
        throw apiException(response.statusCode, "GET", req.path, text, flatHeaders(response.headers));
      }
      const lines = new LineSplitter();
      // Leaving the loop (a `break` by the caller, an error, the end) destroys the body.
      for await (const chunk of response.body) {
        for (const line of lines.push(chunk)) {
          const event = JSON.parse(line) as { type: string; object: unknown };
          if (event.type === "ERROR") {
            const status = event.object as { code?: number };
            throw apiException(status.code ?? 500, "GET", req.path, JSON.stringify(status), {});
          }
          yield event as WatchEvent<T>;
        }
      }
    } catch (err) {
      if (req.signal?.aborted) return;
      if (err instanceof KubeApiError || err instanceof SyntaxError) throw err;
      throw new RequestFailedError("watch", resource, err);
    } finally {
      local.abort();
    }
  }

  #isClosed(): boolean {
    return this.#closed;
  }

  /** Releases pooled connections. Requests after this fail. */
  async close(): Promise<void> {
    this.#closed = true;
    const access = await this.#access?.catch(() => undefined);
    await access?.close();
  }

  #url(path: string, query: Query | undefined): RequestTarget {
    const url = new URL(this.#server + path);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    return { origin: url.origin, path: url.pathname + url.search };
  }

  /** A request's options but its body: headers with the credentials, the dispatcher. */
  async #prepare(
    method: TransportRequest["method"],
    signal: AbortSignal,
    accept = "application/json",
  ): Promise<UndiciRequestOptions & { headers: Record<string, string>; body?: string }> {
    const access = await this.#openAccess();
    const headers = { Accept: accept, "User-Agent": this.#userAgent, ...(await access.headers()) };
    const { dispatcher } = access;
    return { method, headers, signal, ...(dispatcher ? { dispatcher } : {}) };
  }

  #openAccess(): Promise<KubeAccess> {
    if (this.#access) return this.#access;
    const kubeconfig = this.#kubeconfig;
    // client-node (its whole package) is imported only for what only it can do.
    const opened =
      kubeconfig.clientNodeReason === undefined
        ? Promise.resolve(openKubeAccess(kubeconfig, { clock: this.#clock }))
        : import("./access-client-node.ts").then((m) => m.openClientNodeAccess(kubeconfig));
    // A failed opening (an exec plugin's first run) is retried on the next request, not kept.
    opened.catch(() => {
      if (this.#access === opened) this.#access = undefined;
    });
    this.#access = opened;
    return opened;
  }
}

/**
 * A request's signal: aborts with the caller's signal or after `ms`; `done()` drops the timer and
 * the listener once the request is over. Not `AbortSignal.any([signal, AbortSignal.timeout(ms)])`:
 * Node keeps such a signal alive while it has abort listeners (fetch, used then, left one) until
 * it fires, and with it all the request held, for the whole timeout. At 1,000 requests a second
 * and a 10 s timeout that pinned 10,000 finished fetches (700 MB at 5,000 nodes).
 */
class Deadline {
  readonly #controller = new AbortController();
  readonly #parent: AbortSignal | undefined;
  readonly #timer: NodeJS.Timeout;
  #timedOut = false;
  readonly #onAbort = () => {
    this.#controller.abort(this.#parent?.reason);
  };

  constructor(parent: AbortSignal | undefined, ms: number) {
    this.#parent = parent;
    this.#timer = setTimeout(() => {
      this.#timedOut = true;
      this.#controller.abort(new DOMException("The operation was aborted due to timeout", "TimeoutError"));
    }, ms);
    if (parent?.aborted) this.#onAbort();
    else parent?.addEventListener("abort", this.#onAbort, { once: true });
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Whether it was the time that ran out. */
  get timedOut(): boolean {
    return this.#timedOut;
  }

  done(): void {
    clearTimeout(this.#timer);
    this.#parent?.removeEventListener("abort", this.#onAbort);
  }
}

/** A request that got no complete answer in time; retryable (`isRetryableKubeError`). */
export class RequestTimeoutError extends Error {
  override readonly name = "TimeoutError";
  constructor(verb: string, resource: string, cause: unknown) {
    super(`${verb} ${resource}: no answer from the API server in time`, { cause });
  }
}

/**
 * A request that got no answer, or half of one: refused, reset, closed, a TLS handshake that
 * failed. The socket's or undici's error is the `cause`. Retryable (`isRetryableKubeError`), as a
 * failed connection may work the next time (an API server restarting, a certificate rotating).
 */
export class RequestFailedError extends Error {
  override readonly name = "RequestFailedError";
  constructor(verb: string, resource: string, cause: unknown) {
    super(`${verb} ${resource}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

/**
 * A request that failed because the client was closed while it waited or ran: devicelet is
 * stopping. Not retryable, and not worth a warning (`isClientClosed`).
 */
export class ClientClosedError extends Error {
  override readonly name = "ClientClosedError";
  constructor(verb: string, resource: string, cause: unknown) {
    super(`${verb} ${resource}: not sent or not answered, devicelet is stopping`, { cause });
  }
}

/**
 * client-node's `ApiException` (so `instanceof ApiException` and `code`/`body` work as callers of
 * client-node expect) with a one-line message instead of its multi-line dump of body and headers.
 */
export class KubeApiError extends ApiException<string> {
  /** Set when an error that is usually permanent (403) is worth retrying this time. */
  transient = false;

  constructor(
    code: number,
    message: string,
    body: string,
    headers: Record<string, string>,
    options?: ErrorOptions,
  ) {
    super(code, message, body, headers);
    this.name = "KubeApiError";
    this.message = message;
    if (options?.cause !== undefined) this.cause = options.cause;
  }
}

/** undici's response headers as one string each (a repeated header's values joined, as HTTP does). */
function flatHeaders(headers: UndiciResponse["headers"]): Record<string, string> {
  const flat: Record<string, string> = {};
  for (const [key, value] of Object.entries(headers)) {
    if (value !== undefined) flat[key] = Array.isArray(value) ? value.join(", ") : value;
  }
  return flat;
}

function apiException(
  code: number,
  method: string,
  path: string,
  body: string,
  headers: Record<string, string>,
): KubeApiError {
  let detail = body.slice(0, 300);
  try {
    const status = JSON.parse(body) as { reason?: string; message?: string };
    detail = `${status.reason ?? ""}: ${status.message ?? ""}`;
  } catch {
    // not a Status; keep the raw text
  }
  return new KubeApiError(code, `${method} ${path}: HTTP ${code} ${detail}`, body, headers);
}
