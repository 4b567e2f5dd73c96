/**
 * The kubelet API server with a fake authenticator and backend: routing by local port, the
 * refusals, the log endpoint's checks and streaming. The real authenticator and certificate
 * sources run in test/integration/kubelet-server.test.ts.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Pod } from "../kube/index.ts";
import { transient } from "../provider/errors.ts";
import type { LogOptions, PodLifecycleProvider, PodRef, ProviderPod } from "../provider/types.ts";
import type { KubeletAuthenticator } from "./auth.ts";
import { FakeClock } from "../base/fake-clock.ts";
import { isTransient } from "../provider/errors.ts";
import { parseLogQuery } from "./routes-logs.ts";
import { within, type KubeletBackend } from "./routes.ts";
import { KubeletServer } from "./server.ts";
import type { ServingCertificate, ServingCertificateSource } from "./tls.ts";

const logger = pino({ level: "silent" });
let dir = "";
let cert: ServingCertificate;

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "kubelet-server-test-"));
  execFileSync(
    "openssl",
    ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"].concat(
      ["-keyout", path.join(dir, "tls.key"), "-out", path.join(dir, "tls.crt"), "-days", "1"],
      ["-subj", "/CN=kubelet-test", "-addext", "subjectAltName=IP:127.0.0.1"],
    ),
    { stdio: "ignore" },
  );
  cert = {
    cert: readFileSync(path.join(dir, "tls.crt"), "utf8"),
    key: readFileSync(path.join(dir, "tls.key"), "utf8"),
    notBefore: new Date(),
    notAfter: new Date(Date.now() + 86_400_000),
  };
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A certificate source with the test certificate once `give` is called. */
function certificates(): ServingCertificateSource & { give(): void } {
  let current: ServingCertificate | undefined;
  const listeners: ((c: ServingCertificate) => void)[] = [];
  return {
    start: () => Promise.resolve(),
    current: () => current,
    onChange: (l) => listeners.push(l),
    give() {
      current = cert;
      for (const l of listeners) l(cert);
    },
  };
}

/** `Bearer ok` is allowed, `Bearer nope` forbidden, anything else unauthenticated. */
const authenticator: KubeletAuthenticator = {
  check: (req) => {
    const auth = req.headers.authorization;
    if (auth === "Bearer ok") return Promise.resolve({ allowed: true, caller: { user: "u", groups: [] } });
    if (auth === "Bearer nope")
      return Promise.resolve({ allowed: false, status: 403, reason: "forbidden: u" });
    return Promise.resolve({ allowed: false, status: 401, reason: "Unauthorized" });
  },
};

const pod = (node: string, name: string, containers = ["app"]): Pod => ({
  metadata: { namespace: "ns", name, uid: `uid-${name}` },
  spec: { nodeName: node, containers: containers.map((c) => ({ name: c, image: `img-${c}` })) },
  status: { phase: "Running" },
});
const pods = [pod("node-a", "pa"), pod("node-b", "pb")];

interface LogsCall {
  readonly ref: PodRef;
  readonly container: string;
  readonly options: LogOptions;
}

function makeProvider(o: { logs?: boolean }) {
  const calls: LogsCall[] = [];
  let held: ProviderPod[] = pods.map((p) => ({
    pod: { namespace: "ns", name: p.metadata?.name ?? "", uid: p.metadata?.uid ?? "" },
    nodeName: p.spec?.nodeName ?? "",
    hash: "h",
  }));
  const base: PodLifecycleProvider = {
    name: "toy",
    supports: [],
    createPod: () => Promise.resolve(),
    updatePod: () => Promise.resolve(),
    deletePod: () => Promise.resolve(),
    getPodStatus: () => Promise.resolve(undefined),
    listPods: () => Promise.resolve(held),
  };
  const logs = {
    getContainerLogs(ref: PodRef, container: string, options: LogOptions) {
      calls.push({ ref, container, options });
      if (ref.name === "pb") return Promise.reject(transient("device b is offline and nothing is cached"));
      async function* chunks() {
        yield "line 1\n";
        yield "line 2\n";
        if (!options.follow) return;
        // Follows until the client goes.
        await new Promise<void>((resolve) => options.signal.addEventListener("abort", () => resolve()));
      }
      return Promise.resolve({ chunks: chunks(), notice: "device a is offline; log as cached" });
    },
  };
  return {
    provider: o.logs ? Object.assign(base, logs) : base,
    calls,
    drop: (name: string) => (held = held.filter((p) => p.pod.name !== name)),
  };
}

function backend(provider: PodLifecycleProvider): KubeletBackend {
  return {
    providerOf: () => provider,
    deviceOf: (n) => n,
    podsOn: (n) => pods.filter((p) => p.spec?.nodeName === n),
    pod: (ns, name) => pods.find((p) => p.metadata?.namespace === ns && p.metadata.name === name),
    nodeStartTime: () => new Date("2026-12-02T00:00:00Z"),
  };
}

interface Answer {
  readonly status: number;
  readonly type: string;
  readonly body: string;
}

function get(port: number, urlPath: string, o: { token?: string; headers?: Record<string, string> } = {}) {
  return new Promise<Answer>((resolve, reject) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port,
        path: urlPath,
        ca: cert.cert,
        headers: { ...(o.token ? { authorization: `Bearer ${o.token}` } : {}), ...o.headers },
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"]), body }),
        );
      },
    );
    req.on("error", reject);
    req.end();
  });
}

async function serve(o: { logs?: boolean } = {}) {
  const certs = certificates();
  const fake = makeProvider(o);
  const server = new KubeletServer({
    ports: { bindAddress: "127.0.0.1", port: 0, portCount: 1 },
    certificates: certs,
    clientCA: cert.cert,
    authenticator,
    backend: backend(fake.provider),
    logger,
  });
  const signal = new AbortController();
  server.start(signal.signal);
  const a = await server.ports.assign("node-a");
  const b = await server.ports.assign("node-b");
  return {
    a,
    b,
    certs,
    fake,
    close: async () => {
      signal.abort();
      await server.close();
    },
  };
}

const names = (body: string) =>
  (JSON.parse(body) as { items: { metadata: { name: string } }[] }).items.map((p) => p.metadata.name);

describe("KubeletServer", () => {
  it("closes connections until it has a certificate, then serves", async () => {
    const s = await serve();
    try {
      await expect(get(s.a, "/healthz", { token: "ok" })).rejects.toMatchObject({ code: "ECONNRESET" });
      s.certs.give();
      expect(await get(s.a, "/healthz", { token: "ok" })).toMatchObject({ status: 200, body: "ok" });
    } finally {
      await s.close();
    }
  });

  it("answers for the node that owns the port the request came to", async () => {
    const s = await serve();
    s.certs.give();
    try {
      expect(names((await get(s.a, "/pods", { token: "ok" })).body)).toEqual(["pa"]);
      expect(names((await get(s.b, "/pods", { token: "ok" })).body)).toEqual(["pb"]);
      const running = await get(s.b, "/runningpods/", { token: "ok" });
      expect(JSON.parse(running.body)).toEqual({
        kind: "PodList",
        apiVersion: "v1",
        metadata: {},
        items: [
          {
            metadata: { name: "pb", namespace: "ns", uid: "uid-pb", creationTimestamp: null },
            spec: { containers: [{ name: "app", image: "img-app", resources: {} }] },
            status: {},
          },
        ],
      });
      s.fake.drop("pa");
      expect(names((await get(s.a, "/runningpods", { token: "ok" })).body)).toEqual([]);
      const summary = JSON.parse((await get(s.a, "/stats/summary", { token: "ok" })).body) as {
        node: { nodeName: string };
        pods: { podRef: { name: string } }[];
      };
      expect(summary.node.nodeName).toBe("node-a");
      expect(summary.pods.map((p) => p.podRef.name)).toEqual(["pa"]);
      const metrics = await get(s.b, "/metrics/resource", { token: "ok" });
      expect(metrics.type).toBe("text/plain; version=0.0.4; charset=utf-8");
      expect(metrics.body).toBe(
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n" +
          "# TYPE resource_scrape_error gauge\nresource_scrape_error 0\n",
      );
    } finally {
      await s.close();
    }
  });

  it("refuses without credentials (401) and without rights (403) with a Status, and 404s the rest", async () => {
    const s = await serve();
    s.certs.give();
    try {
      const none = await get(s.a, "/pods");
      expect(none.status).toBe(401);
      expect(JSON.parse(none.body)).toMatchObject({ kind: "Status", code: 401, reason: "Unauthorized" });
      const forbidden = await get(s.a, "/pods", { token: "nope" });
      expect(forbidden.status).toBe(403);
      expect(JSON.parse(forbidden.body)).toMatchObject({ message: "forbidden: u", reason: "Forbidden" });
      expect((await get(s.a, "/nothing/here", { token: "ok" })).status).toBe(404);
      expect((await get(s.a, "/exec/ns/pa/app?command=ls", { token: "ok" })).status).toBe(400);
    } finally {
      await s.close();
    }
  });

  it("refuses exec on a provider without it, clearly and at once", async () => {
    const s = await serve();
    s.certs.give();
    try {
      const upgrade = {
        connection: "Upgrade",
        upgrade: "SPDY/3.1",
        "x-stream-protocol-version": "v4.channel.k8s.io",
      };
      const refused = await get(s.a, "/exec/ns/pa/app?command=ls&stdout=1", {
        token: "ok",
        headers: upgrade,
      });
      expect(refused.status).toBe(400);
      expect(JSON.parse(refused.body)).toMatchObject({
        message: "toy devices do not support exec (pod ns/pa on node node-a)",
      });
      const elsewhere = await get(s.a, "/exec/ns/pb/app?command=ls&stdout=1", {
        token: "ok",
        headers: upgrade,
      });
      expect(elsewhere.status).toBe(404);
      const noAuth = await get(s.a, "/attach/ns/pa/app?stdout=1", { headers: upgrade });
      expect(noAuth.status).toBe(401);
    } finally {
      await s.close();
    }
  });

  it("streams logs with the notice first, cut at limitBytes, and maps provider errors", async () => {
    const s = await serve({ logs: true });
    s.certs.give();
    try {
      const all = await get(s.a, "/containerLogs/ns/pa/app?tailLines=5&timestamps=true", { token: "ok" });
      expect(all).toMatchObject({
        status: 200,
        body: "device a is offline; log as cached\nline 1\nline 2\n",
      });
      expect(s.fake.calls[0]?.options).toMatchObject({ tailLines: 5, timestamps: true });
      const cut = await get(s.a, "/containerLogs/ns/pa/app?limitBytes=40", { token: "ok" });
      expect(cut.body).toBe("device a is offline; log as cached\nline ");
      const offline = await get(s.b, "/containerLogs/ns/pb/app", { token: "ok" });
      expect(offline.status).toBe(503);
      expect(JSON.parse(offline.body)).toMatchObject({
        message: "device b is offline and nothing is cached",
      });
      expect((await get(s.a, "/containerLogs/ns/pb/app", { token: "ok" })).status).toBe(404);
      expect((await get(s.a, "/containerLogs/ns/pa/other", { token: "ok" })).status).toBe(404);
      expect((await get(s.a, "/containerLogs/ns/pa/app?tailLines=x", { token: "ok" })).status).toBe(400);
      expect((await get(s.a, "/containerLogs/ns/pa/app?limitBytes=0", { token: "ok" })).status).toBe(422);
    } finally {
      await s.close();
    }
  });

  it("ends a follow when the client goes, aborting the provider's stream", async () => {
    const s = await serve({ logs: true });
    s.certs.give();
    try {
      const got = await new Promise<string>((resolve, reject) => {
        const req = https.get(
          {
            host: "127.0.0.1",
            port: s.a,
            path: "/containerLogs/ns/pa/app?follow=true",
            ca: cert.cert,
            headers: { authorization: "Bearer ok" },
          },
          (res) => {
            let body = "";
            res.on("data", (d: Buffer) => {
              body += d.toString();
              if (body.endsWith("line 2\n")) {
                req.destroy();
                resolve(body);
              }
            });
          },
        );
        req.on("error", (err) => {
          if (!req.destroyed) reject(err);
        });
      });
      expect(got).toContain("line 2");
      const signal = s.fake.calls[0]?.options.signal;
      await new Promise<void>((resolve) => {
        if (signal?.aborted) resolve();
        else signal?.addEventListener("abort", () => resolve());
      });
      expect(signal?.aborted).toBe(true);
    } finally {
      await s.close();
    }
  });

  it("ends open follows when it closes, and closes promptly", async () => {
    const s = await serve({ logs: true });
    s.certs.give();
    const ended = new Promise<void>((resolve) => {
      https.get(
        {
          host: "127.0.0.1",
          port: s.a,
          path: "/containerLogs/ns/pa/app?follow=1",
          ca: cert.cert,
          headers: { authorization: "Bearer ok" },
        },
        (res) => {
          res.on("data", () => undefined);
          res.on("close", () => resolve());
        },
      );
    });
    await new Promise<void>((resolve) => {
      const wait = () => (s.fake.calls.length > 0 ? resolve() : setTimeout(wait, 10));
      wait();
    });
    await s.close();
    await ended;
    const signal = s.fake.calls[0]?.options.signal;
    await new Promise<void>((resolve) => {
      if (signal?.aborted) resolve();
      else signal?.addEventListener("abort", () => resolve());
    });
    expect(signal?.aborted).toBe(true);
  });

  it("says so when the provider keeps no logs", async () => {
    const s = await serve();
    s.certs.give();
    try {
      const answer = await get(s.a, "/containerLogs/ns/pa/app", { token: "ok" });
      expect(answer.status).toBe(400);
      expect(JSON.parse(answer.body)).toMatchObject({
        message: "toy devices keep no container logs (pod ns/pa on node node-a)",
      });
    } finally {
      await s.close();
    }
  });
});

describe("parseLogQuery", () => {
  const now = new Date("2026-12-02T07:00:00Z");
  const parse = (q: string) => parseLogQuery(new URLSearchParams(q), now);

  it("reads the kubelet's parameters", () => {
    expect(parse("tailLines=10&sinceSeconds=60&limitBytes=100&follow=1&previous=false&timestamps=")).toEqual({
      ok: true,
      query: {
        tailLines: 10,
        since: new Date("2026-12-02T06:59:00Z"),
        limitBytes: 100,
        follow: true,
        // An empty value is true, as the kubelet's parameter codec reads it.
        timestamps: true,
      },
    });
    expect(parse("sinceTime=2026-12-02T06:00:00Z")).toEqual({
      ok: true,
      query: { since: new Date("2026-12-02T06:00:00Z") },
    });
    expect(parse("tail=3")).toEqual({ ok: true, query: { tailLines: 3 } });
    expect(parse("tail=all&tailLines=3")).toEqual({ ok: true, query: {} });
  });

  it("answers 400 for what does not parse and 422 for what is out of range", () => {
    expect(parse("tailLines=ten")).toMatchObject({ ok: false, code: 400 });
    expect(parse("sinceTime=yesterday")).toMatchObject({ ok: false, code: 400 });
    expect(parse("tailLines=-1")).toMatchObject({ ok: false, code: 422 });
    expect(parse("sinceSeconds=0")).toMatchObject({ ok: false, code: 422 });
    expect(parse("limitBytes=0")).toMatchObject({ ok: false, code: 422 });
    expect(parse("sinceSeconds=5&sinceTime=2026-12-02T06:00:00Z")).toMatchObject({
      ok: false,
      code: 422,
      message: "at most one of `sinceTime` or `sinceSeconds` may be specified",
    });
  });
});

describe("within", () => {
  it("answers a provider call that never settles with a Transient error after five seconds", async () => {
    const clock = new FakeClock(0);
    const answer = within({ clock }, "stats of device d", () => new Promise<never>(() => undefined));
    clock.advance(4_999);
    clock.advance(1);
    await expect(answer).rejects.toSatisfy(isTransient);
    await expect(answer).rejects.toThrow("the provider did not answer for stats of device d within 5 s");
  });
});
