import { createHash } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import type { KubeClient, SubjectAccessReviewSpec, TokenReviewStatus } from "../kube/index.ts";
import { kubeletAuthenticator, rawPath, requestAttributes } from "./auth.ts";

const logger = pino({ level: "silent" });

describe("requestAttributes (pkg/kubelet/server/auth.go, KubeletFineGrainedAuthz on)", () => {
  it.each([
    ["GET", "/pods", "get", ["pods", "proxy"]],
    ["GET", "/pods/", "get", ["pods", "proxy"]],
    ["GET", "/runningpods/", "get", ["pods", "proxy"]],
    ["GET", "/runningpods", "get", ["pods", "proxy"]],
    ["GET", "/healthz", "get", ["healthz", "proxy"]],
    ["GET", "/healthz/ping", "get", ["healthz", "proxy"]],
    ["GET", "/configz", "get", ["configz", "proxy"]],
    ["GET", "/stats/summary", "get", ["stats"]],
    ["GET", "/stats", "get", ["stats"]],
    ["GET", "/metrics", "get", ["metrics"]],
    ["GET", "/metrics/resource", "get", ["metrics"]],
    ["GET", "/logs/syslog", "get", ["log"]],
    ["GET", "/containerLogs/ns/pod/c", "get", ["proxy"]],
    ["POST", "/exec/ns/pod/c", "create", ["proxy"]],
    // A WebSocket upgrade is a GET: `get`, as the 1.36 kubelet authorizes it.
    ["GET", "/exec/ns/pod/c", "get", ["proxy"]],
    ["POST", "/attach/ns/pod/c", "create", ["proxy"]],
    ["POST", "/portForward/ns/pod", "create", ["proxy"]],
    ["POST", "/checkpoint/ns/pod/c", "create", ["checkpoint"]],
    ["PUT", "/x", "update", ["proxy"]],
    ["PATCH", "/x", "patch", ["proxy"]],
    ["DELETE", "/x", "delete", ["proxy"]],
    ["HEAD", "/healthz", "get", ["healthz", "proxy"]],
    ["OPTIONS", "/pods", "", ["pods", "proxy"]],
    // Prefixes match whole segments only.
    ["GET", "/podsx", "get", ["proxy"]],
    ["GET", "/statsx/summary", "get", ["proxy"]],
    ["GET", "/metricsfoo", "get", ["proxy"]],
    // No decoding and no dot segments resolved: the path the router sees.
    ["GET", "/exec/../stats/summary", "get", ["proxy"]],
    ["GET", "/%73tats/summary", "get", ["proxy"]],
  ])("%s %s → %s nodes/%j", (method, path, verb, subresources) => {
    expect(requestAttributes(method, path)).toEqual({ verb, subresources });
  });

  it("takes the raw path of a request target", () => {
    expect(rawPath("/stats/summary?only_cpu_and_memory=true")).toBe("/stats/summary");
    expect(rawPath("/exec/%2e%2e/stats/summary")).toBe("/exec/%2e%2e/stats/summary");
    expect(rawPath("https://10.0.0.1:10250/pods?x#y")).toBe("/pods");
    expect(rawPath("")).toBe("/");
    expect(rawPath(undefined)).toBe("/");
  });
});

/** A KubeClient that answers reviews from tables and counts them. */
function fakeKube(o: {
  tokens?: Record<string, TokenReviewStatus>;
  allow?: (spec: SubjectAccessReviewSpec) => boolean;
  failTokenReview?: () => boolean;
  failSar?: () => boolean;
}) {
  const calls = { tokenReviews: [] as string[], sars: [] as SubjectAccessReviewSpec[] };
  const kube = {
    createTokenReview: (token: string) => {
      calls.tokenReviews.push(token);
      if (o.failTokenReview?.()) return Promise.reject(new Error("connection refused"));
      return Promise.resolve(o.tokens?.[token] ?? { authenticated: false, error: "invalid bearer token" });
    },
    createSubjectAccessReview: (spec: SubjectAccessReviewSpec) => {
      calls.sars.push(spec);
      if (o.failSar?.()) return Promise.reject(new Error("connection refused"));
      return Promise.resolve({ allowed: o.allow?.(spec) ?? false });
    },
  } as unknown as KubeClient;
  return { kube, calls };
}

function request(o: {
  method?: string;
  url: string;
  headers?: Record<string, string>;
  cert?: { authorized: boolean; subject: Record<string, string | string[]> };
}): IncomingMessage {
  const socket = o.cert
    ? {
        encrypted: true,
        authorized: o.cert.authorized,
        getPeerCertificate: () => ({ subject: o.cert?.subject, raw: Buffer.from("certificate") }),
      }
    : { encrypted: true, authorized: false, getPeerCertificate: () => ({}) };
  return {
    method: o.method ?? "GET",
    url: o.url,
    headers: { ...o.headers },
    socket,
  } as unknown as IncomingMessage;
}

const alice: TokenReviewStatus = {
  authenticated: true,
  user: { username: "alice", uid: "u-1", groups: ["devs", "system:authenticated"], extra: { scope: ["a"] } },
};

describe("kubeletAuthenticator", () => {
  it("answers 401 without credentials, with a rejected token, and with a certificate that did not verify", async () => {
    const { kube, calls } = fakeKube({ allow: () => true });
    const auth = kubeletAuthenticator({ kube, logger });
    expect(await auth.check(request({ url: "/pods" }), "n1")).toEqual({
      allowed: false,
      status: 401,
      reason: "Unauthorized",
    });
    expect(
      await auth.check(request({ url: "/pods", headers: { authorization: "Bearer nope" } }), "n1"),
    ).toMatchObject({ status: 401 });
    expect(
      await auth.check(request({ url: "/pods", headers: { authorization: "Basic YTpi" } }), "n1"),
    ).toMatchObject({ status: 401 });
    const forged = request({
      url: "/pods",
      cert: { authorized: false, subject: { CN: "kube-apiserver-kubelet-client", O: "system:masters" } },
    });
    expect(await auth.check(forged, "n1")).toMatchObject({ status: 401 });
    expect(calls.sars).toEqual([]);
  });

  it("takes a verified client certificate's CN as the user, its O values as groups and its fingerprint as credential id", async () => {
    const { kube, calls } = fakeKube({ allow: (s) => s.user === "kube-apiserver-kubelet-client" });
    const auth = kubeletAuthenticator({ kube, logger });
    const req = request({
      url: "/exec/ns/p/c",
      method: "POST",
      cert: {
        authorized: true,
        subject: { CN: "kube-apiserver-kubelet-client", O: ["system:masters", "x"] },
      },
    });
    // sha256("certificate"), as the API server's x509 authenticator names the credential.
    const extra = {
      "authentication.kubernetes.io/credential-id": [
        `X509SHA256=${createHash("sha256").update("certificate").digest("hex")}`,
      ],
    };
    const groups = ["system:masters", "x", "system:authenticated"];
    expect(await auth.check(req, "n1")).toEqual({
      allowed: true,
      caller: { user: "kube-apiserver-kubelet-client", groups, extra },
    });
    expect(calls.tokenReviews).toEqual([]);
    expect(calls.sars[0]).toEqual({
      user: "kube-apiserver-kubelet-client",
      groups,
      extra,
      resourceAttributes: {
        verb: "create",
        group: "",
        version: "v1",
        resource: "nodes",
        subresource: "proxy",
        name: "n1",
      },
    });
  });

  it("reviews a bearer token once per cache TTL and passes uid, groups and extra to the SubjectAccessReview", async () => {
    const clock = new FakeClock();
    const { kube, calls } = fakeKube({ tokens: { t1: alice }, allow: () => true });
    const auth = kubeletAuthenticator({ kube, logger, clock, cache: { authenticationTTLSeconds: 120 } });
    const req = () => request({ url: "/stats/summary", headers: { authorization: "Bearer t1" } });
    expect(await auth.check(req(), "n1")).toMatchObject({
      allowed: true,
      caller: { user: "alice", uid: "u-1" },
    });
    clock.advance(119_000);
    await auth.check(req(), "n1");
    expect(calls.tokenReviews).toHaveLength(1);
    clock.advance(1_000);
    await auth.check(req(), "n1");
    expect(calls.tokenReviews).toHaveLength(2);
    expect(calls.sars[0]).toEqual({
      user: "alice",
      uid: "u-1",
      groups: ["devs", "system:authenticated"],
      extra: { scope: ["a"] },
      resourceAttributes: {
        verb: "get",
        group: "",
        version: "v1",
        resource: "nodes",
        subresource: "stats",
        name: "n1",
      },
    });
  });

  it("caches a rejected token too, for the same TTL", async () => {
    const clock = new FakeClock();
    const { kube, calls } = fakeKube({});
    const auth = kubeletAuthenticator({ kube, logger, clock });
    const req = () => request({ url: "/pods", headers: { authorization: "Bearer bad" } });
    await auth.check(req(), "n1");
    await auth.check(req(), "n1");
    expect(calls.tokenReviews).toHaveLength(1);
    clock.advance(120_000);
    await auth.check(req(), "n1");
    expect(calls.tokenReviews).toHaveLength(2);
  });

  it("caches allowed answers 5 min and denied ones 30 s, per node and subresource", async () => {
    const clock = new FakeClock();
    let allowed = true;
    const { kube, calls } = fakeKube({ tokens: { t1: alice }, allow: () => allowed });
    const auth = kubeletAuthenticator({ kube, logger, clock });
    const check = (url: string, node = "n1") =>
      auth.check(request({ url, headers: { authorization: "Bearer t1" } }), node);
    await check("/stats/summary");
    allowed = false;
    clock.advance(299_000);
    expect(await check("/stats/summary")).toMatchObject({ allowed: true });
    expect(calls.sars).toHaveLength(1);
    expect(await check("/stats/summary", "n2")).toMatchObject({ allowed: false, status: 403 });
    expect(calls.sars).toHaveLength(2);
    clock.advance(1_000);
    expect(await check("/stats/summary")).toMatchObject({ allowed: false });
    expect(calls.sars).toHaveLength(3);
    allowed = true;
    clock.advance(29_000);
    expect(await check("/stats/summary")).toMatchObject({ allowed: false });
    clock.advance(1_000);
    expect(await check("/stats/summary")).toMatchObject({ allowed: true });
  });

  it("bounds its caches", async () => {
    const { kube, calls } = fakeKube({ allow: () => true, tokens: { a: alice, b: alice, c: alice } });
    const auth = kubeletAuthenticator({ kube, logger, cache: { size: 2 } });
    for (const t of ["a", "b", "c", "a"])
      await auth.check(request({ url: "/metrics", headers: { authorization: `Bearer ${t}` } }), "n1");
    // a was evicted by c, so it is reviewed again.
    expect(calls.tokenReviews).toEqual(["a", "b", "c", "a"]);
  });

  it("tries nodes/pods before nodes/proxy for /pods and says which were refused", async () => {
    const { kube, calls } = fakeKube({
      tokens: { t1: alice },
      allow: (s) => s.resourceAttributes?.subresource === "proxy",
    });
    const auth = kubeletAuthenticator({ kube, logger });
    const req = (url: string) => request({ url, headers: { authorization: "Bearer t1" } });
    expect(await auth.check(req("/pods"), "n1")).toMatchObject({ allowed: true });
    expect(calls.sars.map((s) => s.resourceAttributes?.subresource)).toEqual(["pods", "proxy"]);

    const none = fakeKube({ tokens: { t1: alice }, allow: () => false });
    const strict = kubeletAuthenticator({ kube: none.kube, logger });
    expect(await strict.check(req("/pods"), "n1")).toEqual({
      allowed: false,
      status: 403,
      reason: "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[pods proxy])",
    });
    expect(
      await strict.check(
        request({ method: "POST", url: "/exec/a/b/c", headers: { authorization: "Bearer t1" } }),
        "n1",
      ),
    ).toEqual({
      allowed: false,
      status: 403,
      reason: "Forbidden (user=alice, verb=create, resource=nodes, subresource(s)=[proxy])",
    });
  });

  it("never allows when the API server cannot be asked, and asks again next time", async () => {
    let down = true;
    const { kube, calls } = fakeKube({
      tokens: { t1: alice },
      allow: () => true,
      failTokenReview: () => down,
      failSar: () => down,
    });
    const auth = kubeletAuthenticator({ kube, logger });
    const req = () => request({ url: "/pods", headers: { authorization: "Bearer t1" } });
    expect(await auth.check(req(), "n1")).toMatchObject({ allowed: false, status: 503 });
    const cert = () =>
      request({ url: "/pods", cert: { authorized: true, subject: { CN: "admin", O: "system:masters" } } });
    expect(await auth.check(cert(), "n1")).toEqual({
      allowed: false,
      status: 500,
      reason: "Authorization error (user=admin, verb=get, resource=nodes, subresource=pods)",
    });
    down = false;
    expect(await auth.check(req(), "n1")).toMatchObject({ allowed: true });
    expect(await auth.check(cert(), "n1")).toMatchObject({ allowed: true });
    expect(calls.tokenReviews).toHaveLength(2);
  });

  it("takes a token from the WebSocket subprotocol and removes it from the header", async () => {
    const { kube, calls } = fakeKube({ tokens: { t1: alice }, allow: () => true });
    const auth = kubeletAuthenticator({ kube, logger });
    const protocol = `base64url.bearer.authorization.k8s.io.${Buffer.from("t1").toString("base64url")}`;
    const req = request({
      url: "/exec/ns/p/c?command=ls",
      headers: { "sec-websocket-protocol": `v5.channel.k8s.io, ${protocol}` },
    });
    expect(await auth.check(req, "n1")).toMatchObject({ allowed: true, caller: { user: "alice" } });
    expect(calls.tokenReviews).toEqual(["t1"]);
    expect(req.headers["sec-websocket-protocol"]).toBe("v5.channel.k8s.io");
  });
});
