/**
 * What the transport sends for a kubeconfig, seen by real servers on 127.0.0.1: a TLS server with
 * the harness PKI (CA, client certificates, tls-server-name, insecure) and a plain one for the
 * credentials (token file rotation, basic auth, impersonation, an exec plugin run by client-node).
 */
import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createSecureServer as createHttp2Server } from "node:http2";
import type { AddressInfo, Server } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import tls, { type TLSSocket } from "node:tls";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { stringify } from "yaml";
import { FakeClock } from "../base/fake-clock.ts";
import { ensurePki, type Pki } from "../testing/controlplane/pki.ts";
import {
  IDLE_CONNECTION_MS,
  MAX_IN_FLIGHT,
  MAX_NODE_WRITES_IN_FLIGHT,
  TOKEN_FILE_REREAD_MS,
  undici,
} from "./access.ts";
import { RequestBudget } from "./budget.ts";
import { loadKubeconfig } from "./kubeconfig.ts";
import { KubeTransport } from "./transport.ts";

interface Seen {
  readonly authorization?: string;
  readonly impersonate?: string;
  /** CN of a client certificate the server's CA verified. */
  readonly clientCN?: string;
  /** SNI the client sent. */
  readonly servername?: string;
}

const dir = mkdtempSync(path.join(tmpdir(), "devicelet-access-"));
let pki: Pki;
let tlsServer: Server;
let plainServer: Server;
let tlsUrl: string;
let plainUrl: string;
const seen: Seen[] = [];
const open: KubeTransport[] = [];

function answer(req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket as Partial<TLSSocket>;
  const peer = socket.authorized ? socket.getPeerCertificate?.() : undefined;
  seen.push({
    ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
    ...(typeof req.headers["impersonate-user"] === "string"
      ? { impersonate: req.headers["impersonate-user"] }
      : {}),
    ...(peer?.subject.CN ? { clientCN: String(peer.subject.CN) } : {}),
    ...(typeof socket.servername === "string" ? { servername: socket.servername } : {}),
  });
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ kind: "Namespace", metadata: { name: "x" } }));
}

const listen = async (server: Server) => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
};

beforeAll(async () => {
  pki = ensurePki(path.join(dir, "pki"), [{ stem: "admin", commonName: "admin" }]);
  const serving = pki.cert("apiserver");
  tlsServer = createHttpsServer(
    {
      cert: readFileSync(serving.cert),
      key: readFileSync(serving.key),
      ca: readFileSync(pki.caCert),
      // Clients without a certificate (token users) are let in; `authorized` tells them apart.
      requestCert: true,
      rejectUnauthorized: false,
    },
    answer,
  );
  plainServer = createHttpServer(answer);
  tlsUrl = `https://127.0.0.1:${await listen(tlsServer)}`;
  plainUrl = `http://127.0.0.1:${await listen(plainServer)}`;
});

afterEach(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
});

afterAll(async () => {
  await new Promise((resolve) => tlsServer.close(resolve));
  await new Promise((resolve) => plainServer.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
/** A transport for a one-context kubeconfig written to a file. */
function transport(cluster: object, user: object, clock = new FakeClock()): KubeTransport {
  const file = path.join(dir, `kubeconfig-${++seq}`);
  writeFileSync(
    file,
    stringify({
      clusters: [{ name: "c", cluster }],
      users: [{ name: "u", user }],
      contexts: [{ name: "ctx", context: { cluster: "c", user: "u" } }],
      "current-context": "ctx",
    }),
  );
  const t = new KubeTransport({
    kubeconfig: loadKubeconfig({ path: file }),
    budget: new RequestBudget({ qps: Infinity, burst: 1 }),
    logger: pino({ level: "silent" }),
    userAgent: "access-test",
    requestTimeoutMs: 10_000,
    clock,
  });
  open.push(t);
  return t;
}

/** One GET; resolves with what the server saw of it. */
async function call(t: KubeTransport): Promise<Seen> {
  const before = seen.length;
  await t.request({ method: "GET", path: "/api/v1/namespaces/x" });
  expect(seen).toHaveLength(before + 1);
  return seen[before] ?? {};
}

const b64File = (file: string) => readFileSync(file).toString("base64");

/** How many TLS connections the server accepted while `run` ran. */
async function tlsConnectionsDuring(run: () => Promise<void>): Promise<number> {
  let connections = 0;
  const count = () => connections++;
  tlsServer.on("secureConnection", count);
  try {
    await run();
  } finally {
    tlsServer.off("secureConnection", count);
  }
  return connections;
}

describe("TLS from the kubeconfig", () => {
  it("presents the client certificate and trusts the CA, from files", async () => {
    const admin = pki.cert("admin");
    const t = transport(
      { server: tlsUrl, "certificate-authority": pki.caCert },
      { "client-certificate": admin.cert, "client-key": admin.key },
    );
    expect(await call(t)).toEqual({ clientCN: "admin" });
  });

  it("presents the client certificate and trusts the CA, from -data fields, over shared connections", async () => {
    const admin = pki.cert("admin");
    const t = transport(
      { server: tlsUrl, "certificate-authority-data": b64File(pki.caCert) },
      { "client-certificate-data": b64File(admin.cert), "client-key-data": b64File(admin.key) },
    );
    const connections = await tlsConnectionsDuring(async () => {
      for (let i = 0; i < 5; i++) expect(await call(t)).toEqual({ clientCN: "admin" });
    });
    // One dispatcher for all: a dispatcher per request would open five. (undici resolves
    // the body a moment before it frees the connection, so the next request may open a second.)
    expect(connections).toBeLessThanOrEqual(2);
  });

  it("keeps an idle connection for the next request longer than undici's 4 s", async () => {
    const admin = pki.cert("admin");
    const t = transport(
      { server: tlsUrl, "certificate-authority": pki.caCert },
      { "client-certificate": admin.cert, "client-key": admin.key },
    );
    // As the API server (Go): no `Keep-Alive: timeout=5` hint, which Node's server sends and undici
    // would follow; idle connections kept 90 s.
    const https = tlsServer as Server & { keepAliveTimeout: number };
    const serverIdle = https.keepAliveTimeout;
    https.keepAliveTimeout = 0;
    let connections: number;
    try {
      connections = await tlsConnectionsDuring(async () => {
        await call(t);
        // Past undici's default idle timeout (4 s), which closed it: a burst after a pause paid a handshake.
        await new Promise((r) => setTimeout(r, 4_500));
        await call(t);
      });
    } finally {
      https.keepAliveTimeout = serverIdle;
    }
    expect(connections).toBe(1);
    expect(IDLE_CONNECTION_MS).toBeGreaterThanOrEqual(30_000);
    expect(IDLE_CONNECTION_MS).toBeLessThan(90_000);
  }, 15_000);

  it("parses the CA, certificate and key once, not for each connection", async () => {
    const admin = pki.cert("admin");
    const contexts = vi.spyOn(tls, "createSecureContext");
    try {
      const t = transport(
        { server: tlsUrl, "certificate-authority": pki.caCert },
        { "client-certificate": admin.cert, "client-key": admin.key },
      );
      const contextsBefore = contexts.mock.calls.length;
      const connections = await tlsConnectionsDuring(async () => {
        const before = seen.length;
        await Promise.all(
          Array.from({ length: 8 }, () => t.request({ method: "GET", path: "/api/v1/namespaces/x" })),
        );
        expect(seen.slice(before).map((s) => s.clientCN)).toEqual(Array(8).fill("admin"));
      });
      expect(connections).toBeGreaterThan(1);
      // Node's tls.connect builds a context from PEM options for each connection it opens.
      expect(contexts.mock.calls.length - contextsBefore).toBe(0);
    } finally {
      contexts.mockRestore();
    }
  });

  it("verifies the server against tls-server-name and sends it as SNI", async () => {
    const ca = { server: tlsUrl, "certificate-authority": pki.caCert };
    const named = transport({ ...ca, "tls-server-name": "kubernetes.default" }, { token: "t" });
    expect(await call(named)).toEqual({ authorization: "Bearer t", servername: "kubernetes.default" });
    const wrong = transport({ ...ca, "tls-server-name": "elsewhere.example" }, { token: "t" });
    await expect(call(wrong)).rejects.toMatchObject({ cause: { code: "ERR_TLS_CERT_ALTNAME_INVALID" } });
  });

  it("skips verification only with insecure-skip-tls-verify", async () => {
    const insecure = transport({ server: tlsUrl, "insecure-skip-tls-verify": true }, { token: "t" });
    expect(await call(insecure)).toEqual({ authorization: "Bearer t" });
    const strict = transport({ server: tlsUrl }, { token: "t" });
    await expect(call(strict)).rejects.toMatchObject({ cause: { code: "SELF_SIGNED_CERT_IN_CHAIN" } });
  });
});

describe("connections to the API server", () => {
  it("speaks HTTP/1.1 to a server that offers HTTP/2, each lane capped on its own", async () => {
    const serving = pki.cert("apiserver");
    const pods = MAX_IN_FLIGHT.default + 40;
    const leases = 50;
    const versions = new Set<string>();
    /** The lane of each request, in the order the server got them. */
    const arrivals: string[] = [];
    const inFlight = { default: 0, heartbeat: 0 };
    const peak = { default: 0, heartbeat: 0 };
    let connections = 0;
    let heartbeats = 0;
    let released = false;
    /**
     * Pod work, held until it fills its connections and every heartbeat has arrived: no pod
     * connection frees up before that, so pod work past the cap can only come after.
     */
    const held: (() => void)[] = [];
    const release = () => {
      released = true;
      for (const answer of held.splice(0)) answer();
    };
    // Heartbeats that wait behind pod work never all arrive: answer anyway, and fail below.
    const giveUp = setTimeout(release, 10_000);
    const server = createHttp2Server(
      { cert: readFileSync(serving.cert), key: readFileSync(serving.key), allowHTTP1: true },
      (req, res) => {
        versions.add(req.httpVersion);
        const lane = req.url.includes("/leases/") ? "heartbeat" : "default";
        arrivals.push(lane);
        peak[lane] = Math.max(peak[lane], ++inFlight[lane]);
        const answer = () => {
          inFlight[lane]--;
          res.writeHead(200, { "content-type": "application/json" });
          res.end("{}");
        };
        // Held as a loaded API server would hold them, so the requests pile up meanwhile: until
        // the point is made rather than for a set time, which the TLS handshakes (300 of them,
        // both ends in this process) once outlasted on a busy machine.
        if (lane === "heartbeat") {
          heartbeats++;
          setTimeout(answer, 100);
        } else {
          held.push(answer);
        }
        if (released) release();
        else if (heartbeats === leases && held.length >= MAX_IN_FLIGHT.default) release();
      },
    );
    server.on("secureConnection", () => connections++);
    const url = `https://127.0.0.1:${await listen(server)}`;
    try {
      const t = transport({ server: url, "certificate-authority": pki.caCert }, { token: "t" });
      // Pod work first, more than its connections carry at once; the heartbeats after it.
      const answers = await Promise.all([
        ...Array.from({ length: pods }, () => t.request({ method: "GET", path: "/api/v1/pods/x" })),
        ...Array.from({ length: leases }, () =>
          t.request({ method: "GET", path: "/apis/coordination.k8s.io/v1/leases/x", lane: "heartbeat" }),
        ),
      ]);
      expect(answers).toHaveLength(pods + leases);
      expect([...versions]).toEqual(["1.1"]);
      expect(connections).toBeLessThanOrEqual(MAX_IN_FLIGHT.default + MAX_IN_FLIGHT.heartbeat);
      // Pod work went in parallel, up to its cap and never past it.
      expect(peak.default).toBe(MAX_IN_FLIGHT.default);
      // No heartbeat waited behind the pod work queued past the cap: all arrived before it.
      const lastHeartbeat = arrivals.lastIndexOf("heartbeat");
      const podsBefore = arrivals.slice(0, lastHeartbeat).filter((lane) => lane === "default").length;
      expect(podsBefore).toBeLessThanOrEqual(MAX_IN_FLIGHT.default);
    } finally {
      clearTimeout(giveUp);
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe("one pool for both lanes", () => {
  it("serves heartbeats on the connections a burst of pod work opened, once they are idle", async () => {
    const serving = pki.cert("apiserver");
    const burst = MAX_IN_FLIGHT.default;
    let connections = 0;
    /** Requests held until `count` are in flight at once, so each needs a connection of its own. */
    let held: (() => void)[] = [];
    let count = burst;
    const server = createHttp2Server(
      { cert: readFileSync(serving.cert), key: readFileSync(serving.key), allowHTTP1: true },
      (_req, res) => {
        held.push(() => {
          res.writeHead(200, { "content-type": "application/json" });
          res.end("{}");
        });
        if (held.length >= count) for (const answer of held.splice(0)) answer();
      },
    );
    server.on("secureConnection", () => connections++);
    const url = `https://127.0.0.1:${await listen(server)}`;
    try {
      const t = transport({ server: url, "certificate-authority": pki.caCert }, { token: "t" });
      await Promise.all(
        Array.from({ length: burst }, () => t.request({ method: "GET", path: "/api/v1/pods/x" })),
      );
      expect(connections).toBe(burst);
      // A moment for the pool to take the connections back once their answers are read.
      await new Promise((resolve) => setTimeout(resolve, 100));
      // Then as many heartbeats at once, as a fleet's renewals fall due: no new connection (a pool
      // per lane opened as many again).
      held = [];
      count = burst;
      const leases = Array.from({ length: burst }, () =>
        t.request({ method: "GET", path: "/apis/coordination.k8s.io/v1/leases/x", lane: "heartbeat" }),
      );
      await Promise.all(leases);
      expect(connections).toBe(burst);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe("requests waiting for a connection", () => {
  /** A TLS server answering every request after 1.5 s; counts what reached it. */
  async function slowServer() {
    const serving = pki.cert("apiserver");
    const server = createHttp2Server(
      { cert: readFileSync(serving.cert), key: readFileSync(serving.key), allowHTTP1: true },
      (_req, res) => {
        slow.arrived++;
        setTimeout(() => {
          res.writeHead(200, { "content-type": "application/json" });
          res.end("{}");
        }, 1_500);
      },
    );
    const url = `https://127.0.0.1:${await listen(server)}`;
    const slow = {
      arrived: 0,
      transport: transport({ server: url, "certificate-authority": pki.caCert }, { token: "t" }),
      close: () => new Promise((resolve) => server.close(resolve)),
    };
    return slow;
  }

  it("wait unbuilt, and time out as any request does when none frees in time", async () => {
    const slow = await slowServer();
    const t = slow.transport;
    try {
      const held = Array.from({ length: MAX_IN_FLIGHT.default }, () =>
        t.request({ method: "GET", path: "/api/v1/namespaces/n/pods/x" }),
      );
      const late = t.request({ method: "GET", path: "/api/v1/namespaces/n/pods/y", timeoutMs: 1_000 });
      // It waits in devicelet's line, as a closure, not in the connection pool's as a request.
      for (let i = 0; i < 80 && t.waiting("default") === 0; i++)
        await new Promise((resolve) => setTimeout(resolve, 10));
      expect(t.waiting("default")).toBe(1);
      expect(t.waiting("heartbeat")).toBe(0);
      await expect(late).rejects.toMatchObject({
        name: "TimeoutError",
        message: "get pods: no answer from the API server in time",
      });
      expect(t.waiting("default")).toBe(0);
      await Promise.all(held);
      // The late one never reached the server.
      expect(slow.arrived).toBe(MAX_IN_FLIGHT.default);
    } finally {
      await slow.close();
    }
  });

  it("node writes take at most their share of the heartbeat lane, and Lease renewals pass them by", async () => {
    const slow = await slowServer();
    const t = slow.transport;
    try {
      // Every node's status at once (a burst's first pods turn each node's DeviceInSync), then renewals.
      const nodes = Array.from({ length: 3 * MAX_NODE_WRITES_IN_FLIGHT }, (_, i) =>
        t.request({
          method: "PATCH",
          path: `/api/v1/nodes/n-${i}/status`,
          body: {},
          lane: "heartbeat",
          nodeWrite: true,
        }),
      );
      const leases = Array.from({ length: 20 }, () =>
        t.request({ method: "GET", path: "/apis/coordination.k8s.io/v1/leases/x", lane: "heartbeat" }),
      );
      // Before the first answers (1.5 s): the node writes' places, and every renewal, reached it.
      for (let i = 0; i < 100 && slow.arrived < MAX_NODE_WRITES_IN_FLIGHT + 20; i++)
        await new Promise((resolve) => setTimeout(resolve, 10));
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(slow.arrived).toBe(MAX_NODE_WRITES_IN_FLIGHT + 20);
      expect(t.waiting("heartbeat")).toBe(0);
      await Promise.all([...nodes, ...leases]);
      expect(slow.arrived).toBe(3 * MAX_NODE_WRITES_IN_FLIGHT + 20);
    } finally {
      await slow.close();
    }
  });

  it("a heartbeat waits its turn and times out only on the wire", async () => {
    const slow = await slowServer();
    const t = slow.transport;
    const lease = (name: string, timeoutMs?: number) =>
      t.request({
        method: "GET",
        path: `/apis/coordination.k8s.io/v1/leases/${name}`,
        lane: "heartbeat",
        ...(timeoutMs === undefined ? {} : { timeoutMs }),
      });
    try {
      const held = Array.from({ length: MAX_IN_FLIGHT.heartbeat }, () => lease("x"));
      // 1 s would run out in line (the connections free after 1.5 s); it counts from the sending.
      const late = lease("y", 1_000).catch((err: unknown) => err);
      for (let i = 0; i < 80 && t.waiting("heartbeat") === 0; i++)
        await new Promise((resolve) => setTimeout(resolve, 10));
      expect(t.waiting("heartbeat")).toBe(1);
      await Promise.all(held);
      // Sent at about 1.5 s, held 1.5 s by the server: longer than 1 s on the wire, so it fails...
      expect(await late).toMatchObject({ name: "TimeoutError" });
      expect(slow.arrived).toBe(MAX_IN_FLIGHT.heartbeat + 1);
      // ...while one whose wire time fits is answered, however long it waited in line.
      const more = Array.from({ length: MAX_IN_FLIGHT.heartbeat }, () => lease("x"));
      const patient = lease("z", 2_500);
      await Promise.all(more);
      await expect(patient).resolves.toEqual({});
    } finally {
      await slow.close();
    }
  });
});

describe("credentials from the kubeconfig", () => {
  const plain = () => ({ server: plainUrl, "insecure-skip-tls-verify": true });

  it("re-reads a token file a minute after the last read, keeping the last token when it is gone", async () => {
    const tokenFile = path.join(dir, "token");
    writeFileSync(tokenFile, "one\n");
    const clock = new FakeClock();
    const t = transport(plain(), { "token-file": tokenFile }, clock);
    expect(await call(t)).toEqual({ authorization: "Bearer one" });
    writeFileSync(tokenFile, "two\n");
    clock.advance(TOKEN_FILE_REREAD_MS - 1);
    expect(await call(t)).toEqual({ authorization: "Bearer one" });
    clock.advance(1);
    expect(await call(t)).toEqual({ authorization: "Bearer two" });
    unlinkSync(tokenFile);
    clock.advance(TOKEN_FILE_REREAD_MS);
    expect(await call(t)).toEqual({ authorization: "Bearer two" });
  });

  it("sends basic auth and impersonation; a token wins over basic auth", async () => {
    const basic = transport(plain(), { username: "admin", password: "pw", as: "alice" });
    expect(await call(basic)).toEqual({
      authorization: `Basic ${Buffer.from("admin:pw").toString("base64")}`,
      impersonate: "alice",
    });
    const both = transport(plain(), { username: "admin", password: "pw", token: "tok" });
    expect(await call(both)).toEqual({ authorization: "Bearer tok" });
  });

  it("hands an exec user to client-node, which runs the plugin", async () => {
    const credential = {
      apiVersion: "client.authentication.k8s.io/v1",
      kind: "ExecCredential",
      status: { token: "from-exec" },
    };
    const exec = {
      apiVersion: "client.authentication.k8s.io/v1",
      command: process.execPath,
      args: ["-e", `process.stdout.write(${JSON.stringify(JSON.stringify(credential))})`],
    };
    const t = transport(plain(), { exec });
    expect(await call(t)).toEqual({ authorization: "Bearer from-exec" });
  });
});

describe("undici's request", () => {
  it("goes through undici's global dispatcher when the access brings none (a client-node identity)", async () => {
    const server = createHttpServer((req, res) => res.end(`${req.method ?? ""} ${req.url ?? ""}`));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const response = await undici().request(
        { origin: `http://127.0.0.1:${String(port)}`, path: "/api/v1/pods?limit=1" },
        { method: "GET", headers: {} },
      );
      expect(response.statusCode).toBe(200);
      expect(await response.body.text()).toBe("GET /api/v1/pods?limit=1");
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});
