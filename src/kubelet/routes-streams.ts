/**
 * `/exec`, `/attach` and `/portForward`: upgrade requests (SPDY/3.1 or WebSocket), answered on the
 * server's `upgrade` event. Each is authenticated like any request, the pod looked up on the node
 * the request arrived for, and then handed to the stream protocols (streams/) with a `run` that
 * calls the provider's capability. The kubelet's paths (pkg/kubelet/server/server.go):
 *
 *   /exec/{namespace}/{pod}/{container}        /exec/{namespace}/{pod}/{uid}/{container}
 *   /attach/{namespace}/{pod}/{container}      /attach/{namespace}/{pod}/{uid}/{container}
 *   /portForward/{namespace}/{pod}             /portForward/{namespace}/{pod}/{uid}
 *
 * Whatever cannot be served is refused at once with a Status body (`refuseUpgrade`): an unknown
 * pod or container 404, a provider without the capability 400 naming the provider, the pod and the
 * node. The same paths without an upgrade get 400, as from the kubelet.
 */
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { hasAttach, hasExec, hasPortForward, type PodRef } from "../provider/types.ts";
import type { KubeletAuthenticator } from "./auth.ts";
import { hasContainer, podOnNode } from "./routes-logs.ts";
import type { RouteContext } from "./routes.ts";
import {
  InvalidStreamOptions,
  portForwardPorts,
  refuseUpgrade,
  serveExecStream,
  servePortForward,
  streamOptions,
} from "./streams/index.ts";

export type StreamKind = "exec" | "attach" | "portForward";

export interface StreamTarget {
  readonly kind: StreamKind;
  readonly namespace: string;
  readonly pod: string;
  readonly uid?: string;
  /** exec and attach only. */
  readonly container?: string;
}

/** The stream request a path names, or undefined for any other path. */
export function streamTarget(pathname: string): StreamTarget | undefined {
  const parts = pathname.split("/").slice(1).map(decodeSegment);
  if (parts.some((p) => p === undefined || p === "")) return undefined;
  const [kind, namespace = "", pod = "", ...rest] = parts as string[];
  if (kind === "exec" || kind === "attach") {
    if (rest.length === 1) return { kind, namespace, pod, container: rest[0] ?? "" };
    if (rest.length === 2) return { kind, namespace, pod, uid: rest[0] ?? "", container: rest[1] ?? "" };
    return undefined;
  }
  if (kind === "portForward") {
    if (rest.length === 0) return { kind, namespace, pod };
    if (rest.length === 1) return { kind, namespace, pod, uid: rest[0] ?? "" };
  }
  return undefined;
}

function decodeSegment(s: string): string | undefined {
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}

export interface UpgradeContext extends RouteContext {
  readonly authenticator: KubeletAuthenticator;
  /** The node that owns the local port, or undefined (released meanwhile). */
  readonly nodeAt: (localPort: number | undefined) => string | undefined;
}

/**
 * Answers one upgrade request. Never throws and never leaves the socket hanging: every path ends
 * in the stream protocols or in `refuseUpgrade`.
 */
export async function handleUpgrade(
  ctx: UpgradeContext,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
): Promise<void> {
  // The HTTP server no longer watches an upgraded socket: a client reset must not crash devicelet.
  socket.on("error", (err) => ctx.logger.debug({ err, url: req.url }, "kubelet API upgrade socket error"));
  try {
    await upgrade(ctx, req, socket, head);
  } catch (err) {
    ctx.logger.error({ err, url: req.url }, "kubelet API upgrade request failed");
    if (!socket.destroyed) refuseUpgrade(socket, 500, err instanceof Error ? err.message : String(err));
  }
}

async function upgrade(
  ctx: UpgradeContext,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
): Promise<void> {
  const nodeName = ctx.nodeAt(req.socket.localPort);
  if (nodeName === undefined) {
    refuseUpgrade(socket, 404, "this port serves no node any more");
    return;
  }
  const decision = await ctx.authenticator.check(req, nodeName);
  if (!decision.allowed) {
    refuseUpgrade(socket, decision.status, decision.reason);
    return;
  }
  const url = new URL(req.url ?? "/", "https://kubelet");
  const target = streamTarget(url.pathname);
  if (!target) {
    refuseUpgrade(socket, 404, `${url.pathname} is not a stream endpoint of the kubelet API`);
    return;
  }
  const checked = checkTarget(ctx, nodeName, target);
  if ("refused" in checked) {
    refuseUpgrade(socket, 404, checked.refused);
    return;
  }
  const { ref } = checked;
  const provider = ctx.backend.providerOf(nodeName);
  if (!provider) {
    refuseUpgrade(
      socket,
      503,
      `node ${nodeName} is not served by this devicelet now (its shard moved); try again`,
    );
    return;
  }
  const log = ctx.logger.child({ pod: `${ref.namespace}/${ref.name}`, node: nodeName, stream: target.kind });
  const container = target.container ?? "";
  try {
    if (target.kind === "portForward" && hasPortForward(provider)) {
      const ports = portForwardPorts(url.searchParams);
      servePortForward(req, socket, head, ports, (port, c) => provider.portForward(ref, port, c), log);
      return;
    }
    if (target.kind === "exec" && hasExec(provider)) {
      const options = streamOptions(url.searchParams);
      if (options.command.length === 0) {
        refuseUpgrade(socket, 400, "you must specify at least one command for the container");
        return;
      }
      serveExecStream(
        req,
        socket,
        head,
        options,
        (io) => provider.execInContainer(ref, container, options.command, io),
        log,
      );
      return;
    }
    if (target.kind === "attach" && hasAttach(provider)) {
      const options = streamOptions(url.searchParams);
      serveExecStream(
        req,
        socket,
        head,
        options,
        (io) => provider.attachToContainer(ref, container, io),
        log,
      );
      return;
    }
  } catch (err) {
    if (!(err instanceof InvalidStreamOptions)) throw err;
    refuseUpgrade(socket, 400, err.message);
    return;
  }
  refuseUpgrade(socket, 400, unsupportedMessage(provider.name, target, nodeName));
}

/** The pod to stream to, or why it is not found (a 404). */
export function checkTarget(
  ctx: RouteContext,
  nodeName: string,
  target: StreamTarget,
): { readonly ref: PodRef } | { readonly refused: string } {
  const pod = podOnNode(ctx, nodeName, target.namespace, target.pod);
  const uid = pod?.metadata?.uid ?? "";
  if (!pod || (target.uid !== undefined && target.uid !== uid)) {
    return { refused: `pod "${target.namespace}/${target.pod}" does not exist on node ${nodeName}` };
  }
  if (target.container !== undefined && !hasContainer(pod, target.container)) {
    return {
      refused: `container "${target.container}" not found in pod "${target.namespace}/${target.pod}"`,
    };
  }
  return { ref: { namespace: target.namespace, name: target.pod, uid } };
}

const WHAT: Record<StreamKind, string> = { exec: "exec", attach: "attach", portForward: "port forwarding" };

export const unsupportedMessage = (providerName: string, target: StreamTarget, nodeName: string): string =>
  `${providerName} devices do not support ${WHAT[target.kind]} (pod ${target.namespace}/${target.pod} on node ${nodeName})`;
