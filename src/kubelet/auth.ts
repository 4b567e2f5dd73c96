/**
 * Authentication and authorization of kubelet API requests, as the kubelet does them with
 * `authentication.webhook.enabled: true`, `authorization.mode: Webhook` and anonymous access off
 * (docs/kubelet-api.md, "Authentication and authorization"):
 *
 * 1. Who: a TLS client certificate that verified against the client CA (user = CN, groups = O;
 *    how the API server itself calls kubelets), else a bearer token (`Authorization: Bearer`, or
 *    the WebSocket subprotocol `base64url.bearer.authorization.k8s.io.<token>`) through a
 *    TokenReview. Neither: 401 `Unauthorized`. A certificate that did not verify is no identity.
 * 2. May they: a SubjectAccessReview on `nodes/<subresource>` named after the node, with the verb
 *    from the HTTP method (pkg/kubelet/server/auth.go, Kubernetes 1.36, `KubeletFineGrainedAuthz`
 *    on by default): `/pods` and `/runningpods` ask `nodes/pods` first and fall back to
 *    `nodes/proxy`, `/healthz` `nodes/healthz`, `/configz` `nodes/configz`; `/stats` is
 *    `nodes/stats`, `/metrics` `nodes/metrics`, `/logs` `nodes/log`; the rest (exec, attach,
 *    portForward, containerLogs, run) is `nodes/proxy`. Refused: 403 with the kubelet's message.
 *
 * Answers are cached, bounded (LRU) and keyed by a keyed hash of the token, never the token:
 * tokens 2 min (both outcomes), allowed 5 min, denied 30 s. A failed call to the API server is
 * never cached and never allows: 503 (authentication) or 500 (authorization).
 *
 *   const auth = kubeletAuthenticator({ kube, logger });
 *   const decision = await auth.check(req, nodeName);
 *   if (!decision.allowed) res.status(decision.status).type("text/plain").send(decision.reason);
 */
import { createHash, createHmac, randomBytes } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { TLSSocket } from "node:tls";
import type { Logger } from "pino";
import type { Clock } from "../base/clock.ts";
import type { KubeClient, SubjectAccessReviewSpec } from "../kube/index.ts";
import { ReviewCache } from "./review-cache.ts";

export interface KubeletCaller {
  readonly user: string;
  readonly groups: readonly string[];
  readonly uid?: string;
  readonly extra?: Readonly<Record<string, readonly string[]>>;
}

/**
 * 401: no usable credentials. 403: not allowed. 503: the API server could not be asked who the
 * caller is; 500: it could not be asked what they may do (the kubelet's "Authorization error").
 */
export type AuthDecision =
  | { readonly allowed: true; readonly caller: KubeletCaller }
  | { readonly allowed: false; readonly status: 401 | 403 | 500 | 503; readonly reason: string };

export interface KubeletAuthenticator {
  /** Authenticates one request (client certificate verified by TLS against the client CA, else a bearer token through TokenReview; neither: 401) and authorizes it with SubjectAccessReview on nodes/<subresource> of `nodeName`, verb from the HTTP method, as the kubelet does; cached briefly and bounded. */
  check(req: IncomingMessage, nodeName: string): Promise<AuthDecision>;
}

export interface KubeletAuthenticatorOptions {
  readonly kube: KubeClient;
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly cache?: {
    readonly authenticationTTLSeconds?: number;
    readonly authorizedTTLSeconds?: number;
    readonly unauthorizedTTLSeconds?: number;
    readonly size?: number;
  };
}

/** The kubelet's defaults (KubeletConfiguration `authentication.webhook.cacheTTL`, `authorization.webhook.*`). */
export const AUTH_CACHE_DEFAULTS = {
  authenticationTTLSeconds: 120,
  authorizedTTLSeconds: 300,
  unauthorizedTTLSeconds: 30,
  size: 4096,
} as const;

/** The WebSocket subprotocol that carries a bearer token (k8s.io/apiserver's websocket protocol authenticator). */
const WS_TOKEN_PROTOCOL = "base64url.bearer.authorization.k8s.io.";

/**
 * The SubjectAccessReview verb and the `nodes` subresources to try in order for a request, as
 * pkg/kubelet/server/auth.go's GetRequestAttributes. `path` is the raw request path, not decoded
 * and with no dot segments resolved, as the router sees it: `/exec/%2e%2e/stats` stays `proxy`.
 *
 * A WebSocket upgrade is a GET and so `get`, also for `/exec`, `/attach` and `/portForward`: the
 * 1.36 kubelet does the same (a change forcing `create` there was not merged), which is why `get`
 * on `nodes/proxy` is not a read-only grant (docs/kubelet-api.md).
 */
export function requestAttributes(method: string, path: string): { verb: string; subresources: string[] } {
  const verbs: Record<string, string> = {
    GET: "get",
    // The kubelet leaves HEAD without a verb (so only a `*` rule allows it); a HEAD is a GET without body.
    HEAD: "get",
    POST: "create",
    PUT: "update",
    PATCH: "patch",
    DELETE: "delete",
  };
  const verb = verbs[method.toUpperCase()] ?? "";
  const subresources: string[] = [];
  // KubeletFineGrainedAuthz: a narrower subresource first, `proxy` as the fallback.
  if (isSubpath(path, "/pods") || isSubpath(path, "/runningpods/")) subresources.push("pods");
  else if (isSubpath(path, "/healthz")) subresources.push("healthz");
  else if (isSubpath(path, "/configz")) subresources.push("configz");
  else if (isSubpath(path, "/statusz")) subresources.push("statusz");
  if (isSubpath(path, "/stats/")) subresources.push("stats");
  else if (isSubpath(path, "/metrics")) subresources.push("metrics");
  else if (isSubpath(path, "/logs/")) subresources.push("log");
  else if (isSubpath(path, "/checkpoint/")) subresources.push("checkpoint");
  else subresources.push("proxy");
  return { verb, subresources };
}

/** `path` is `prefix` (a trailing slash of the prefix aside) or below it. */
function isSubpath(path: string, prefix: string): boolean {
  const base = prefix.replace(/\/$/, "");
  return path === base || (path.startsWith(base) && path[base.length] === "/");
}

/** The request path as sent: no query, no scheme and host (absolute-form), no decoding. */
export function rawPath(url: string | undefined): string {
  const target = (url ?? "/").replace(/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i, "");
  const end = target.search(/[?#]/);
  const path = end < 0 ? target : target.slice(0, end);
  return path === "" ? "/" : path;
}

interface TokenOutcome {
  readonly caller?: KubeletCaller;
  readonly error?: string;
}

export function kubeletAuthenticator(o: KubeletAuthenticatorOptions): KubeletAuthenticator {
  const ttl = { ...AUTH_CACHE_DEFAULTS, ...o.cache };
  const log = o.logger.child({ component: "kubelet-auth" });
  const size = ttl.size;
  const tokens = new ReviewCache<TokenOutcome>({ size, ...(o.clock ? { clock: o.clock } : {}) });
  const decisions = new ReviewCache<boolean>({ size, ...(o.clock ? { clock: o.clock } : {}) });
  // Cache keys are an HMAC of the token under a key of this process, so the cache (a heap dump, a
  // log line by mistake) never holds a usable token, as k8s.io/apiserver's token cache does.
  const hmacKey = randomBytes(32);
  const tokenKey = (token: string) => createHmac("sha256", hmacKey).update(token).digest("base64");

  const reviewToken = (token: string): Promise<TokenOutcome> =>
    tokens.resolve(tokenKey(token), async () => {
      const status = await o.kube.createTokenReview(token);
      const user = status.user;
      const outcome: TokenOutcome =
        status.authenticated && user?.username
          ? {
              caller: {
                user: user.username,
                groups: user.groups ?? [],
                ...(user.uid ? { uid: user.uid } : {}),
                ...(user.extra ? { extra: user.extra } : {}),
              },
            }
          : { error: status.error ?? "token not authenticated" };
      return { value: outcome, ttlMs: ttl.authenticationTTLSeconds * 1000 };
    });

  const authorize = (caller: KubeletCaller, verb: string, subresource: string, nodeName: string) => {
    const spec: SubjectAccessReviewSpec = {
      user: caller.user,
      groups: [...caller.groups],
      ...(caller.uid ? { uid: caller.uid } : {}),
      ...(caller.extra
        ? { extra: Object.fromEntries(Object.entries(caller.extra).map(([k, v]) => [k, [...v]])) }
        : {}),
      resourceAttributes: { verb, group: "", version: "v1", resource: "nodes", subresource, name: nodeName },
    };
    return decisions.resolve(JSON.stringify(spec), async () => {
      const status = await o.kube.createSubjectAccessReview(spec);
      const allowed = status.allowed;
      return {
        value: allowed,
        ttlMs: (allowed ? ttl.authorizedTTLSeconds : ttl.unauthorizedTTLSeconds) * 1000,
      };
    });
  };

  /** The caller; undefined without credentials or with rejected ones; throws when the review failed. */
  const authenticate = async (req: IncomingMessage): Promise<KubeletCaller | undefined> => {
    const socket = req.socket as Partial<TLSSocket>;
    if (socket.encrypted && socket.authorized && socket.getPeerCertificate) {
      const peer = socket.getPeerCertificate();
      const subject = peer.subject as Record<string, string | string[] | undefined> | undefined;
      const cn = [subject?.CN ?? []].flat()[0];
      if (cn) {
        // As k8s.io/apiserver's x509 authenticator: the certificate's fingerprint as credential id.
        const id = `X509SHA256=${createHash("sha256").update(peer.raw).digest("hex")}`;
        return withAuthenticatedGroup({
          user: cn,
          groups: [subject?.O ?? []].flat(),
          extra: { "authentication.kubernetes.io/credential-id": [id] },
        });
      }
    }
    const token = bearerToken(req);
    if (token === undefined) return undefined;
    const outcome = await reviewToken(token);
    if (!outcome.caller) log.debug({ error: outcome.error }, "bearer token rejected");
    return outcome.caller && withAuthenticatedGroup(outcome.caller);
  };

  return {
    async check(req, nodeName) {
      let caller: KubeletCaller | undefined;
      try {
        caller = await authenticate(req);
      } catch (err) {
        log.error({ err }, "unable to authenticate the request due to an error");
        return {
          allowed: false,
          status: 503,
          reason: "Unable to authenticate the request: the API server did not answer a TokenReview",
        };
      }
      if (!caller) return { allowed: false, status: 401, reason: "Unauthorized" };
      const { verb, subresources } = requestAttributes(req.method ?? "", rawPath(req.url));
      const who = `user=${caller.user}, verb=${verb}, resource=nodes`;
      for (const subresource of subresources) {
        try {
          if (await authorize(caller, verb, subresource, nodeName)) return { allowed: true, caller };
        } catch (err) {
          log.error({ err, user: caller.user, verb, subresource }, "authorization error");
          return {
            allowed: false,
            status: 500,
            reason: `Authorization error (${who}, subresource=${subresource})`,
          };
        }
      }
      log.debug({ user: caller.user, verb, subresources, node: nodeName }, "forbidden");
      return {
        allowed: false,
        status: 403,
        reason: `Forbidden (${who}, subresource(s)=[${subresources.join(" ")}])`,
      };
    },
  };
}

/**
 * The bearer token of a request: `Authorization: Bearer <token>`, else (a browser's WebSocket
 * cannot set headers) the `base64url.bearer.authorization.k8s.io.<token>` subprotocol, which is
 * then removed from `Sec-WebSocket-Protocol` so the stream negotiation never echoes it.
 */
function bearerToken(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (header !== undefined) {
    const [scheme = "", token = ""] = header.trim().split(/\s+/, 2);
    if (scheme.toLowerCase() === "bearer" && token !== "") return token;
  }
  const protocols = req.headers["sec-websocket-protocol"];
  if (typeof protocols !== "string") return undefined;
  const list = protocols.split(",").map((p) => p.trim());
  const carrier = list.find((p) => p.startsWith(WS_TOKEN_PROTOCOL));
  if (!carrier) return undefined;
  const token = Buffer.from(carrier.slice(WS_TOKEN_PROTOCOL.length), "base64url").toString("utf8");
  const rest = list.filter((p) => p !== carrier);
  if (rest.length > 0) req.headers["sec-websocket-protocol"] = rest.join(", ");
  else Reflect.deleteProperty(req.headers, "sec-websocket-protocol");
  return token === "" ? undefined : token;
}

/**
 * Every authenticated caller is in `system:authenticated`, as the kubelet's delegating
 * authenticator adds it (a TokenReview's user has it already; a certificate's does not).
 */
function withAuthenticatedGroup(caller: KubeletCaller): KubeletCaller {
  return caller.groups.includes("system:authenticated")
    ? caller
    : { ...caller, groups: [...caller.groups, "system:authenticated"] };
}
