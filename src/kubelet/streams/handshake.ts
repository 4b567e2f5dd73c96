/**
 * Upgrade negotiation shared by exec, attach and port-forward (k8s.io/apimachinery
 * pkg/util/httpstream: Handshake, IsUpgradeRequest; wsstream: IsWebSocketRequest).
 */

import type { IncomingMessage } from "node:http";

/** SPDY exec/attach protocols; v5 over SPDY is v4 (its close signal is WebSocket only). */
export const SPDY_EXEC_PROTOCOLS = [
  "v5.channel.k8s.io",
  "v4.channel.k8s.io",
  "v3.channel.k8s.io",
  "v2.channel.k8s.io",
  "channel.k8s.io",
] as const;
export const PORT_FORWARD_PROTOCOL = "portforward.k8s.io";

/** Every value of a header, however the client spread it over lines and commas. */
export function headerValues(req: IncomingMessage, name: string): string[] {
  const values = req.headersDistinct[name.toLowerCase()] ?? [];
  return values
    .flatMap((v) => v.split(","))
    .map((v) => v.trim())
    .filter((v) => v !== "");
}

export function isWebSocketRequest(req: IncomingMessage): boolean {
  const upgrade = headerValues(req, "upgrade").map((v) => v.toLowerCase());
  const connection = headerValues(req, "connection").map((v) => v.toLowerCase());
  return upgrade.includes("websocket") && connection.includes("upgrade");
}

export function isSpdyRequest(req: IncomingMessage): boolean {
  const upgrade = headerValues(req, "upgrade").map((v) => v.toLowerCase());
  const connection = headerValues(req, "connection").map((v) => v.toLowerCase());
  return upgrade.includes("spdy/3.1") && connection.includes("upgrade");
}

/**
 * The protocol to speak: the client's first offer (X-Stream-Protocol-Version, in its order) that
 * the server accepts; `fallback` when the client offered none (the kubelet then speaks the first
 * protocol version); undefined when nothing offered is accepted.
 */
export function negotiate(
  offered: readonly string[],
  accepted: readonly string[],
  fallback: string,
): string | undefined {
  if (offered.length === 0) return fallback;
  return offered.find((p) => accepted.includes(p));
}

/** The 101 response the kubelet writes before speaking SPDY/3.1. */
export function spdyUpgradeResponse(protocol: string): string {
  return (
    "HTTP/1.1 101 Switching Protocols\r\n" +
    "Connection: Upgrade\r\n" +
    "Upgrade: SPDY/3.1\r\n" +
    `X-Stream-Protocol-Version: ${protocol}\r\n\r\n`
  );
}
