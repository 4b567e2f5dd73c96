/**
 * The outcome of an exec or attach as the kubelet reports it on the error channel, and the plain
 * HTTP refusal of an upgrade. Both carry a `metav1.Status`, the shape kubectl and client-go decode.
 */

import type { Duplex } from "node:stream";

// Not an ES import, which loads Node.js's own undici (see `src/base/plain-server.ts`).
const { STATUS_CODES } = process.getBuiltinModule("node:http");

/** A `metav1.Status` as written on the wire (only the fields the kubelet fills in). */
export interface KubeStatus {
  readonly kind?: "Status";
  readonly apiVersion?: "v1";
  readonly metadata: Record<string, never>;
  readonly status: "Success" | "Failure";
  readonly message?: string;
  readonly reason?: string;
  readonly details?: { readonly causes: readonly { readonly reason?: string; readonly message: string }[] };
  readonly code?: number;
}

/** The reasons `metav1.Status` gives an HTTP code (k8s.io/apimachinery StatusReason). */
const reasonByCode: Readonly<Record<number, string>> = {
  400: "BadRequest",
  401: "Unauthorized",
  403: "Forbidden",
  404: "NotFound",
  405: "MethodNotAllowed",
  406: "NotAcceptable",
  409: "Conflict",
  415: "UnsupportedMediaType",
  429: "TooManyRequests",
  500: "InternalError",
  503: "ServiceUnavailable",
  504: "Timeout",
};

/** What the kubelet writes when the command exited 0 (`{"metadata":{},"status":"Success"}`). */
export const successStatus = (): KubeStatus => ({ metadata: {}, status: "Success" });

/**
 * A non-zero exit, as the kubelet reports it: reason `NonZeroExitCode` with one `ExitCode` cause
 * whose message is the code. client-go parses that cause as an 8-bit unsigned number and makes it
 * kubectl's exit code, so a code outside 1..255 is folded the way a POSIX wait status folds it
 * (modulo 256), and one that folds to 0 becomes 255 rather than turning a failure into success.
 */
export function exitStatus(exitCode: number): KubeStatus {
  let code = Number.isInteger(exitCode) ? ((exitCode % 256) + 256) % 256 : 255;
  if (code === 0) code = 255;
  return {
    metadata: {},
    status: "Failure",
    message: `command terminated with non-zero exit code: command exited with code ${exitCode}`,
    reason: "NonZeroExitCode",
    details: { causes: [{ reason: "ExitCode", message: String(code) }] },
  };
}

/**
 * Any other failure (the provider threw: unsupported, offline, not found). The kubelet wraps such
 * errors as an InternalError; kubectl prints the message as its error, so it is kept as given.
 */
export const failureStatus = (message: string): KubeStatus => ({
  metadata: {},
  status: "Failure",
  message,
  reason: "InternalError",
  details: { causes: [{ message }] },
  code: 500,
});

/**
 * The error-channel bytes for a protocol: v4 and later carry the Status as JSON; earlier
 * protocols carry only a failure's message as text, and nothing at all on success.
 */
export function statusBytes(status: KubeStatus, json: boolean): Buffer | undefined {
  if (json) return Buffer.from(JSON.stringify(status));
  return status.status === "Success" ? undefined : Buffer.from(status.message ?? "error");
}

/**
 * Refuses an upgrade request with a plain HTTP response carrying a metav1.Status JSON body, then
 * ends the socket. Safe to call on a socket that is already closed.
 */
export function refuseUpgrade(socket: Duplex, code: number, message: string): void {
  const status: KubeStatus = {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    ...(reasonByCode[code] === undefined ? {} : { reason: reasonByCode[code] }),
    code,
  };
  const body = Buffer.from(JSON.stringify(status));
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(
    Buffer.concat([
      Buffer.from(
        `HTTP/1.1 ${code} ${STATUS_CODES[code] ?? "Error"}\r\n` +
          "Content-Type: application/json\r\n" +
          `Content-Length: ${body.length}\r\n` +
          "Connection: close\r\n\r\n",
      ),
      body,
    ]),
  );
}
