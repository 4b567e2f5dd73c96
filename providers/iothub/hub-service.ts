/**
 * The one seam to IoT Hub's service REST API (api-version 2021-04-12): twin reads and conditional
 * desired-property patches, device queries page by page, and direct methods. {@link HttpsHubService}
 * implements it over node:https with a keep-alive agent, a SAS token per request (sas.ts), an
 * optional extra CA and an optional endpoint override (the local emulator, a private gateway)
 * while tokens still name the hub's real host name. Every call first takes a token from its
 * operation class's budget (budget.ts), so devicelet keeps to its share of the hub's quotas.
 *
 * Failures are {@link HubServiceError}s carrying the HTTP status (0: no answer), IoT Hub's error
 * code and, for 429 and 503, how long the hub asked to wait (`Retry-After`); a 412 on a patch is
 * the subclass {@link PreconditionFailed}. Nothing here retries: the caller decides (hub-connection).
 *
 *   const service = new HttpsHubService({ connectionString, rates: DEFAULT_RATES, logger });
 *   const twin = await service.getTwin("gw-1");
 *   await service.patchTwinDesired("gw-1", { devicelet: null }, twin.etag);
 *   service.operations();   // { query: 0, twinRead: 1, twinUpdate: 1, method: 0 }
 *   service.close();
 */
import type { Agent, IncomingHttpHeaders } from "node:http";
import https from "node:https";
import type { Logger } from "pino";
import type { Clock } from "../../src/base/clock.ts";
import { OperationBudget, type OperationClass, type OperationRates, type Priority } from "./budget.ts";
import { parseServiceConnectionString, SasTokenSource } from "./sas.ts";

// Not an ES import, which loads Node.js's own undici (see `src/base/plain-server.ts`).
const http = process.getBuiltinModule("node:http");

export const API_VERSION = "2021-04-12";
/** IoT Hub returns at most this many twins per query page. */
export const MAX_QUERY_PAGE = 100;

/** A device twin as the service API returns it (the parts devicelet reads). */
export interface ServiceTwin {
  readonly deviceId: string;
  readonly etag: string;
  /** Grows with every change of the twin. */
  readonly version?: number;
  /** `Connected` | `Disconnected` (coarse on the real hub). */
  readonly connectionState?: string;
  readonly tags?: Record<string, unknown>;
  readonly properties: {
    readonly desired: Record<string, unknown>;
    readonly reported: Record<string, unknown>;
  };
}

export interface QueryPage {
  readonly items: readonly ServiceTwin[];
  /** Pass to the next call for the following page; undefined after the last. */
  readonly continuation: string | undefined;
}

/** The service API as devicelet uses it; small enough to fake. */
export interface HubService {
  /** The hub's host name (as in the connection string). */
  readonly hostName: string;
  /** TLS with the server's certificate verified. */
  readonly secure: boolean;
  /** `urgent`: ahead of other reads in the twin-read budget (a write waits on it). */
  getTwin(deviceId: string, priority?: Priority): Promise<ServiceTwin>;
  /**
   * Merge-patches the desired section, only if the twin's etag is still `etag` (412 otherwise).
   * Given a function, the etag is asked for once the call's turn in the twin-update budget came,
   * right before the request goes out: a twin read there leaves a device that reports often
   * little time to change the twin first.
   */
  patchTwinDesired(
    deviceId: string,
    desiredPatch: Record<string, unknown>,
    etag: string | (() => Promise<string>),
  ): Promise<ServiceTwin>;
  query(sql: string, continuation?: string, pageSize?: number): Promise<QueryPage>;
  /** `status` and `payload` are the device's answer; a device that is offline or silent rejects. */
  invokeMethod(
    deviceId: string,
    methodName: string,
    payload: unknown,
    responseTimeoutSeconds: number,
  ): Promise<{ status: number; payload: unknown }>;
  /** Operations sent, by class. */
  operations(): Record<OperationClass, number>;
  /** Ends pending budget waits and closes idle sockets. Idempotent. */
  close(): void;
}

/** A refusal or failure of the service API. */
export class HubServiceError extends Error {
  /** HTTP status; 0 when no answer came (network, TLS, timeout). */
  readonly status: number;
  /** IoT Hub's error code (`ThrottlingException`, `DeviceNotOnline`, …); `Network` without answer. */
  readonly code: string;
  /** How long the hub asked to wait before trying again (429 / 503 `Retry-After`). */
  readonly retryAfterMs: number | undefined;
  constructor(o: { status: number; code: string; message: string; retryAfterMs?: number | undefined }) {
    super(o.message);
    this.name = "HubServiceError";
    this.status = o.status;
    this.code = o.code;
    this.retryAfterMs = o.retryAfterMs;
  }
}

/** 412: the twin's etag is not the one given (another writer changed the twin). */
export class PreconditionFailed extends HubServiceError {
  constructor(o: { code: string; message: string }) {
    super({ status: 412, ...o });
    this.name = "PreconditionFailed";
  }
}

/** Worth trying again later: no answer, throttled, or a server-side failure (not a 4xx refusal). */
export const isTransient = (err: unknown): boolean =>
  err instanceof HubServiceError && (err.status === 0 || err.status === 429 || err.status >= 500);
/** The hub refused the credentials (401) or the policy's rights (403). */
export const isUnauthorized = (err: unknown): boolean =>
  err instanceof HubServiceError && (err.status === 401 || err.status === 403);

export interface HttpsHubServiceOptions {
  /** `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` of a policy with service connect rights. */
  readonly connectionString: string;
  /** Base URL to send requests to instead of `https://{HostName}` (the emulator). */
  readonly endpoint?: string;
  /** PEM of a CA to trust besides the system's. */
  readonly ca?: string;
  readonly rates: OperationRates;
  /** Timeout of a request without a device in the loop. Default 30 s. */
  readonly requestTimeoutMs?: number;
  readonly logger: Logger;
  /** For the budgets (default: the system clock). */
  readonly clock?: Clock;
  /** Wall-clock milliseconds, for SAS expiry. */
  readonly now?: () => number;
}

export class HttpsHubService implements HubService {
  readonly hostName: string;
  readonly secure: boolean;
  readonly #base: URL;
  readonly #tokens: SasTokenSource;
  readonly #budget: OperationBudget;
  readonly #agent: Agent;
  readonly #timeoutMs: number;
  readonly #log: Logger;
  readonly #closed = new AbortController();

  constructor(o: HttpsHubServiceOptions) {
    const credentials = parseServiceConnectionString(o.connectionString);
    this.hostName = credentials.hostName;
    this.#tokens = new SasTokenSource({ credentials, ...(o.now ? { now: o.now } : {}) });
    this.#base = new URL(o.endpoint ?? `https://${credentials.hostName}`);
    if (this.#base.protocol !== "https:" && this.#base.protocol !== "http:")
      throw new Error(`IoT Hub endpoint must be an https URL, not ${this.#base.protocol}`);
    this.secure = this.#base.protocol === "https:";
    this.#agent = this.secure
      ? new https.Agent({ keepAlive: true, maxSockets: 16, ...(o.ca === undefined ? {} : { ca: o.ca }) })
      : new http.Agent({ keepAlive: true, maxSockets: 16 });
    this.#budget = new OperationBudget({ rates: o.rates, ...(o.clock ? { clock: o.clock } : {}) });
    this.#timeoutMs = o.requestTimeoutMs ?? 30_000;
    this.#log = o.logger;
  }

  async getTwin(deviceId: string, priority: Priority = "normal"): Promise<ServiceTwin> {
    const { body } = await this.#call("twinRead", {
      method: "GET",
      path: `/twins/${enc(deviceId)}`,
      priority,
    });
    return body as ServiceTwin;
  }

  async patchTwinDesired(
    deviceId: string,
    desiredPatch: Record<string, unknown>,
    etag: string | (() => Promise<string>),
  ): Promise<ServiceTwin> {
    const ifMatch = (tag: string) => ({ "if-match": `"${tag.replace(/^"(.*)"$/, "$1")}"` });
    const { body } = await this.#call("twinUpdate", {
      method: "PATCH",
      path: `/twins/${enc(deviceId)}`,
      body: { properties: { desired: desiredPatch } },
      headers: typeof etag === "string" ? ifMatch(etag) : async () => ifMatch(await etag()),
    });
    return body as ServiceTwin;
  }

  async query(sql: string, continuation?: string, pageSize = MAX_QUERY_PAGE): Promise<QueryPage> {
    const headers: Record<string, string> = {
      "x-ms-max-item-count": String(Math.max(1, Math.min(MAX_QUERY_PAGE, Math.floor(pageSize)))),
    };
    if (continuation !== undefined) headers["x-ms-continuation"] = continuation;
    const answer = await this.#call("query", {
      method: "POST",
      path: "/devices/query",
      body: { query: sql },
      headers,
    });
    const next = answer.headers["x-ms-continuation"];
    return {
      items: Array.isArray(answer.body) ? (answer.body as ServiceTwin[]) : [],
      continuation: typeof next === "string" && next !== "" ? next : undefined,
    };
  }

  async invokeMethod(
    deviceId: string,
    methodName: string,
    payload: unknown,
    responseTimeoutSeconds: number,
  ): Promise<{ status: number; payload: unknown }> {
    const { body } = await this.#call("method", {
      method: "POST",
      path: `/twins/${enc(deviceId)}/methods`,
      body: {
        methodName,
        payload,
        responseTimeoutInSeconds: responseTimeoutSeconds,
        connectTimeoutInSeconds: 0,
      },
      timeoutMs: responseTimeoutSeconds * 1000 + this.#timeoutMs,
    });
    const answer = (body ?? {}) as { status?: unknown; payload?: unknown };
    return { status: typeof answer.status === "number" ? answer.status : 0, payload: answer.payload ?? null };
  }

  operations(): Record<OperationClass, number> {
    return this.#budget.counts();
  }

  close(): void {
    this.#closed.abort(new Error("hub service closed"));
    this.#agent.destroy();
  }

  async #call(
    kind: OperationClass,
    o: {
      method: string;
      path: string;
      body?: unknown;
      /** A function is called once the budget gave the call its turn. */
      headers?: Record<string, string> | (() => Promise<Record<string, string>>);
      timeoutMs?: number;
      priority?: Priority;
    },
  ): Promise<{ body: unknown; headers: IncomingHttpHeaders }> {
    const signal = this.#closed.signal;
    await this.#budget.take(kind, signal, o.priority);
    if (signal.aborted)
      throw new HubServiceError({ status: 0, code: "Closed", message: "hub service closed" });
    const extra = typeof o.headers === "function" ? await o.headers() : o.headers;
    const url = new URL(this.#base.pathname.replace(/\/$/, "") + o.path, this.#base);
    url.searchParams.set("api-version", API_VERSION);
    const payload = o.body === undefined ? undefined : Buffer.from(JSON.stringify(o.body));
    const headers: Record<string, string> = {
      authorization: this.#tokens.token(),
      accept: "application/json",
      ...extra,
    };
    if (payload) {
      headers["content-type"] = "application/json; charset=utf-8";
      headers["content-length"] = String(payload.length);
    }
    const started = performance.now();
    const answer = await send({
      url,
      method: o.method,
      headers,
      payload,
      agent: this.#agent,
      timeoutMs: o.timeoutMs ?? this.#timeoutMs,
      signal,
    });
    this.#log.debug(
      {
        op: kind,
        method: o.method,
        path: o.path,
        status: answer.status,
        ms: Math.round(performance.now() - started),
      },
      "iothub service call",
    );
    const text = answer.body.toString("utf8");
    if (answer.status >= 200 && answer.status < 300)
      return { body: parseJson(text), headers: answer.headers };
    throw errorOf(answer.status, answer.headers, text, `${o.method} ${o.path}`);
  }
}

const enc = (deviceId: string) => encodeURIComponent(deviceId);

function parseJson(text: string): unknown {
  if (text === "") return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function send(o: {
  url: URL;
  method: string;
  headers: Record<string, string>;
  payload: Buffer | undefined;
  agent: Agent;
  timeoutMs: number;
  signal: AbortSignal;
}): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
  const request = o.url.protocol === "https:" ? https.request : http.request;
  return new Promise((resolve, reject) => {
    const req = request(
      o.url,
      { method: o.method, headers: o.headers, agent: o.agent, signal: o.signal },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on("error", (err) => reject(networkError(err, o)));
      },
    );
    req.setTimeout(o.timeoutMs, () => req.destroy(new Error(`no answer within ${o.timeoutMs} ms`)));
    req.on("error", (err) => reject(networkError(err, o)));
    req.end(o.payload);
  });
}

function networkError(err: Error, o: { method: string; url: URL }): HubServiceError {
  return new HubServiceError({
    status: 0,
    code: "Network",
    message: `IoT Hub ${o.method} ${o.url.pathname} failed: ${err.message}`,
  });
}

/** `Retry-After` as seconds or an HTTP date, in milliseconds from now. */
function retryAfter(value: string | string[] | undefined): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined || text.trim() === "") return undefined;
  const seconds = Number(text);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** The error of a non-2xx answer: IoT Hub puts `ErrorCode:{code};{message}` in the body's `Message`. */
function errorOf(status: number, headers: IncomingHttpHeaders, text: string, what: string): HubServiceError {
  const body = parseJson(text) as { Message?: unknown; message?: unknown } | undefined;
  const raw =
    typeof body?.Message === "string"
      ? body.Message
      : typeof body?.message === "string"
        ? body.message
        : text;
  const coded = /^ErrorCode:([^;]*);(.*)$/s.exec(raw);
  const header = headers["iothub-errorcode"];
  const code = (typeof header === "string" && header) || coded?.[1] || `Http${status}`;
  const detail = (coded?.[2] ?? raw).trim().slice(0, 500);
  const message = `IoT Hub ${what} answered ${status} ${code}${detail ? `: ${detail}` : ""}`;
  if (status === 412) return new PreconditionFailed({ code, message });
  const wait = status === 429 || status === 503 ? retryAfter(headers["retry-after"]) : undefined;
  return new HubServiceError({ status, code, message, retryAfterMs: wait });
}
