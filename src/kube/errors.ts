/**
 * Kubernetes API errors read through one helper. Every failure of a call under `src/kube/` is
 * either an `ApiException` from `@kubernetes/client-node` (numeric `code`, `body` the server's
 * `Status` as a JSON string or object) or a network error from fetch; {@link kubeStatus} reads the
 * first kind and the `is*` guards classify both by what the caller should do:
 *
 * | guard                    | when                                   | what to do                       |
 * |--------------------------|----------------------------------------|----------------------------------|
 * | `isNotFound`             | 404                                    | treat as gone / create it        |
 * | `isAlreadyExists`        | 409, reason `AlreadyExists`            | read it and carry on             |
 * | `isConflict`             | 409, reason `Conflict` (stale RV, UID) | re-read and retry, bounded       |
 * | `isGone`                 | 410 (`Expired`/`Gone`)                 | re-list                          |
 * | `isTooManyRequests`      | 429                                    | back off (see `retryAfterSeconds`)|
 * | `isRetryableKubeError`   | 429, 5xx, timeouts, network errors     | retry with backoff, never give up|
 * | `isPermanentKubeError`   | 400, 401, 403, 405, 413, 415, 422      | terminal: log once, record an    |
 * |                          |                                        | Event, retry when the object     |
 * |                          |                                        | changes                          |
 */

import { ApiException } from "@kubernetes/client-node/dist/gen/apis/exception.js";
import { ClientClosedError, KubeApiError, RequestFailedError } from "./transport.ts";

/** What the API server said, whatever shape the error arrived in. */
export interface KubeStatus {
  /** HTTP status code (0 is never returned: non-HTTP errors give `undefined`). */
  readonly code: number;
  /** `Status.reason` (`NotFound`, `Conflict`, `AlreadyExists`, `Expired`, ...), or one derived from the code. */
  readonly reason: string;
  readonly message: string;
  /** `Status.details.retryAfterSeconds` or the `Retry-After` header, when the server gave one. */
  readonly retryAfterSeconds?: number;
}

const reasonByCode: Readonly<Record<number, string>> = {
  400: "BadRequest",
  401: "Unauthorized",
  403: "Forbidden",
  404: "NotFound",
  405: "MethodNotAllowed",
  406: "NotAcceptable",
  409: "Conflict",
  410: "Expired",
  413: "RequestEntityTooLarge",
  415: "UnsupportedMediaType",
  422: "Invalid",
  429: "TooManyRequests",
  500: "InternalError",
  503: "ServiceUnavailable",
  504: "Timeout",
};

interface StatusBody {
  reason?: unknown;
  message?: unknown;
  code?: unknown;
  details?: { retryAfterSeconds?: unknown };
}

function parseBody(body: unknown): StatusBody | undefined {
  if (typeof body === "string") {
    try {
      const parsed: unknown = JSON.parse(body);
      return typeof parsed === "object" && parsed !== null ? parsed : undefined;
    } catch {
      return undefined;
    }
  }
  return typeof body === "object" && body !== null ? body : undefined;
}

/**
 * Reads the API server's answer out of an error: an `ApiException` (`code` + `body`), a watch
 * failure carrying `statusCode`, or a `Status` object itself (`kind: "Status"`, as a watch ERROR
 * event delivers). Returns `undefined` for anything that is not an HTTP answer (network errors,
 * aborts, programming errors).
 */
export function kubeStatus(err: unknown): KubeStatus | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const e = err as {
    code?: unknown;
    statusCode?: unknown;
    body?: unknown;
    headers?: unknown;
    kind?: unknown;
  };
  let code: number | undefined;
  let body: StatusBody | undefined;
  if (e.kind === "Status") {
    body = e;
    code = typeof body.code === "number" ? body.code : undefined;
  } else {
    code = typeof e.code === "number" ? e.code : typeof e.statusCode === "number" ? e.statusCode : undefined;
    body = parseBody(e.body);
  }
  if (code === undefined || code < 100 || code > 599) return undefined;
  const reason =
    typeof body?.reason === "string" && body.reason !== "" ? body.reason : (reasonByCode[code] ?? "Unknown");
  const message =
    typeof body?.message === "string" ? body.message : err instanceof Error ? err.message : `HTTP ${code}`;
  let retryAfterSeconds: number | undefined;
  const fromBody = body?.details?.retryAfterSeconds;
  if (typeof fromBody === "number") retryAfterSeconds = fromBody;
  else if (typeof e.headers === "object" && e.headers !== null) {
    const header = (e.headers as Record<string, unknown>)["retry-after"];
    const seconds = typeof header === "string" ? Number(header) : NaN;
    if (Number.isFinite(seconds)) retryAfterSeconds = seconds;
  }
  return retryAfterSeconds === undefined
    ? { code, reason, message }
    : { code, reason, message, retryAfterSeconds };
}

export const isNotFound = (err: unknown): boolean => kubeStatus(err)?.code === 404;

/** 409 that is not `AlreadyExists`: a stale resourceVersion or a failed UID precondition. */
export const isConflict = (err: unknown): boolean => {
  const s = kubeStatus(err);
  return s?.code === 409 && s.reason !== "AlreadyExists";
};

/** 409 `AlreadyExists`, from a create. */
export const isAlreadyExists = (err: unknown): boolean => {
  const s = kubeStatus(err);
  return s?.code === 409 && s.reason === "AlreadyExists";
};

/** 410: the resourceVersion asked for is too old (`Expired`); re-list. */
export const isGone = (err: unknown): boolean => kubeStatus(err)?.code === 410;

export const isTooManyRequests = (err: unknown): boolean => kubeStatus(err)?.code === 429;

export const isForbidden = (err: unknown): boolean => kubeStatus(err)?.code === 403;

/** Node and undici error codes of a connection that failed or broke; worth retrying. */
const networkCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "EAI_AGAIN",
  "ENOTFOUND",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
]);

function isNetworkError(err: unknown, depth = 0): boolean {
  if (typeof err !== "object" || err === null || depth > 4) return false;
  const e = err as { code?: unknown; name?: unknown; message?: unknown; cause?: unknown };
  if (typeof e.code === "string" && networkCodes.has(e.code)) return true;
  if (e.name === "TimeoutError") return true;
  // The transport wraps what failed in sending or receiving; fetch (client-node's) in a TypeError.
  if (err instanceof RequestFailedError) return true;
  if (e.name === "TypeError" && e.message === "fetch failed") return true;
  return isNetworkError(e.cause, depth + 1);
}

/**
 * True when the same request may succeed later: 429, 5xx (but not 501), server timeouts, and
 * network failures (refused, reset, DNS, timeouts). An abort by the caller's own signal is not
 * retryable.
 */
export function isRetryableKubeError(err: unknown): boolean {
  if (err instanceof KubeApiError && err.transient) return true;
  if (isClientClosed(err)) return false;
  const s = kubeStatus(err);
  if (s) {
    if (s.code === 429) return true;
    if (s.code >= 500 && s.code !== 501) return true;
    return s.reason === "ServerTimeout" || s.reason === "Timeout";
  }
  return isNetworkError(err);
}

/** The request failed because devicelet's API client was closed: devicelet is stopping. */
export function isClientClosed(err: unknown): boolean {
  return err instanceof ClientClosedError;
}

/** The request itself is wrong or not allowed; sending it again unchanged cannot succeed. */
const permanentCodes = new Set([400, 401, 403, 405, 406, 413, 415, 422]);

/**
 * True when the API server refused the request for what it is (bad request, forbidden, invalid):
 * retrying the same request is pointless until the object (or devicelet's RBAC) changes. Such a
 * failure is terminal for a reconcile: log it once, record an Event, and wait for the next change.
 */
export function isPermanentKubeError(err: unknown): boolean {
  if (err instanceof KubeApiError && err.transient) return false;
  const s = kubeStatus(err);
  return s !== undefined && permanentCodes.has(s.code);
}

/** Milliseconds the server asked us to wait (`Retry-After`, or `details.retryAfterSeconds`), if any. */
export function retryAfterMs(err: unknown): number | undefined {
  const seconds = kubeStatus(err)?.retryAfterSeconds;
  return seconds === undefined || seconds < 0 ? undefined : seconds * 1000;
}

/**
 * A patch has no preconditions field: a `metadata.uid` in the body is checked by validation
 * instead, and a mismatch comes back as 422 Invalid "metadata.uid: field is immutable" (checked
 * on Kubernetes 1.36). Since the uid was only ever a precondition, report it as the Conflict it
 * is, like a failed UID precondition on update or delete.
 */
export function uidPreconditionAsConflict(err: unknown, what: string, uid: string): unknown {
  const status = kubeStatus(err);
  if (status?.code !== 422 || !(err instanceof ApiException)) return err;
  const details = (parseBody(err.body) as { details?: { causes?: { field?: string }[] } } | undefined)
    ?.details;
  const causes = details?.causes ?? [];
  if (!causes.some((c) => c.field === "metadata.uid")) return err;
  const message = `UID precondition failed: ${what} is no longer uid ${uid} (deleted and re-created?)`;
  const body = JSON.stringify({
    kind: "Status",
    apiVersion: "v1",
    status: "Failure",
    code: 409,
    reason: "Conflict",
    message,
  });
  return new KubeApiError(409, message, body, err.headers, { cause: err });
}
