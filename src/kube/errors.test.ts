import { ApiException } from "@kubernetes/client-node/dist/gen/apis/exception.js";
import { describe, expect, it } from "vitest";
import {
  isAlreadyExists,
  isConflict,
  isForbidden,
  isGone,
  isNotFound,
  isPermanentKubeError,
  isRetryableKubeError,
  isTooManyRequests,
  kubeStatus,
} from "./errors.ts";
import { KubeApiError, RequestFailedError } from "./transport.ts";

const status = (code: number, reason: string, message = "m", extra: object = {}) =>
  JSON.stringify({ kind: "Status", apiVersion: "v1", status: "Failure", code, reason, message, ...extra });

const api = (code: number, body: unknown, headers: Record<string, string> = {}) =>
  new ApiException<unknown>(code, "x", body, headers);

describe("kubeStatus", () => {
  it("reads an ApiException whose body is the Status as a JSON string", () => {
    expect(kubeStatus(api(404, status(404, "NotFound", 'pods "a" not found')))).toEqual({
      code: 404,
      reason: "NotFound",
      message: 'pods "a" not found',
    });
  });

  it("reads a parsed Status body, our KubeApiError, and a bare Status (watch ERROR event)", () => {
    expect(kubeStatus(api(409, { reason: "AlreadyExists", message: "exists" }))?.reason).toBe(
      "AlreadyExists",
    );
    expect(kubeStatus(new KubeApiError(410, "gone", status(410, "Expired"), {}))?.reason).toBe("Expired");
    expect(kubeStatus({ kind: "Status", code: 410, reason: "Expired", message: "too old" })).toEqual({
      code: 410,
      reason: "Expired",
      message: "too old",
    });
  });

  it("derives a reason from the code when the body is not a Status", () => {
    expect(kubeStatus(api(503, "<html>busy</html>"))?.reason).toBe("ServiceUnavailable");
    expect(kubeStatus(api(418, undefined))?.reason).toBe("Unknown");
    expect(kubeStatus({ statusCode: 410, message: "Gone" })?.reason).toBe("Expired");
  });

  it("reads retry-after from the Status details or the header", () => {
    expect(
      kubeStatus(api(429, status(429, "TooManyRequests", "slow", { details: { retryAfterSeconds: 3 } }))),
    ).toEqual({ code: 429, reason: "TooManyRequests", message: "slow", retryAfterSeconds: 3 });
    expect(kubeStatus(api(429, "", { "retry-after": "7" }))?.retryAfterSeconds).toBe(7);
  });

  it("is undefined for what is not an HTTP answer", () => {
    expect(kubeStatus(new Error("boom"))).toBeUndefined();
    expect(kubeStatus(Object.assign(new Error("x"), { code: "ECONNRESET" }))).toBeUndefined();
    expect(kubeStatus(undefined)).toBeUndefined();
    expect(kubeStatus("404")).toBeUndefined();
  });
});

describe("guards", () => {
  it("tell Conflict from AlreadyExists on 409", () => {
    const conflict = api(409, status(409, "Conflict", "the object has been modified"));
    const exists = api(409, status(409, "AlreadyExists", "already exists"));
    expect(isConflict(conflict)).toBe(true);
    expect(isAlreadyExists(conflict)).toBe(false);
    expect(isConflict(exists)).toBe(false);
    expect(isAlreadyExists(exists)).toBe(true);
    // A 409 without a Status body is a conflict.
    expect(isConflict(api(409, ""))).toBe(true);
  });

  it("classify not found, gone, throttled and forbidden", () => {
    expect(isNotFound(api(404, ""))).toBe(true);
    expect(isNotFound(api(409, ""))).toBe(false);
    expect(isGone(api(410, status(410, "Expired")))).toBe(true);
    expect(isTooManyRequests(api(429, ""))).toBe(true);
    expect(isForbidden(api(403, ""))).toBe(true);
  });

  it("call 429, 5xx, server timeouts and network failures retryable, nothing else", () => {
    expect(isRetryableKubeError(api(429, ""))).toBe(true);
    expect(isRetryableKubeError(api(500, ""))).toBe(true);
    expect(isRetryableKubeError(api(503, ""))).toBe(true);
    expect(isRetryableKubeError(api(501, ""))).toBe(false);
    expect(isRetryableKubeError(api(504, status(504, "Timeout")))).toBe(true);
    expect(isRetryableKubeError(api(409, status(409, "Conflict")))).toBe(false);
    expect(isRetryableKubeError(api(404, ""))).toBe(false);
    expect(isRetryableKubeError(api(422, status(422, "Invalid")))).toBe(false);
    const refused = new TypeError("fetch failed", {
      cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }),
    });
    expect(isRetryableKubeError(refused)).toBe(true);
    const tls = Object.assign(new Error("self-signed certificate"), { code: "SELF_SIGNED_CERT_IN_CHAIN" });
    expect(isRetryableKubeError(tls)).toBe(false);
    expect(isRetryableKubeError(new RequestFailedError("get", "leases", tls))).toBe(true);
    expect(isRetryableKubeError(Object.assign(new Error("socket"), { code: "UND_ERR_SOCKET" }))).toBe(true);
    expect(isRetryableKubeError(new DOMException("timed out", "TimeoutError"))).toBe(true);
    expect(isRetryableKubeError(new DOMException("aborted", "AbortError"))).toBe(false);
    expect(isRetryableKubeError(new Error("bug"))).toBe(false);
  });

  it("call 400, 403 and 422 permanent, unless a 403 came from an API server just starting", () => {
    expect(isPermanentKubeError(api(400, status(400, "BadRequest")))).toBe(true);
    expect(isPermanentKubeError(api(403, status(403, "Forbidden")))).toBe(true);
    expect(isPermanentKubeError(api(422, status(422, "Invalid")))).toBe(true);
    expect(isPermanentKubeError(api(409, status(409, "Conflict")))).toBe(false);
    expect(isPermanentKubeError(api(503, ""))).toBe(false);
    expect(isPermanentKubeError(new Error("bug"))).toBe(false);
    const starting = new KubeApiError(403, "forbidden", status(403, "Forbidden"), {});
    starting.transient = true;
    expect(isPermanentKubeError(starting)).toBe(false);
    expect(isRetryableKubeError(starting)).toBe(true);
  });
});
