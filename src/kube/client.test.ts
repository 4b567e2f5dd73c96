/**
 * The client's HTTP behaviour against a local stand-in server: paths, verbs, content types,
 * bodies, pagination, watch stream parsing, error mapping and budget counting. The real API server
 * semantics (preconditions, MicroTime validation) are proven in test/integration/kube.test.ts.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MAX_NODE_WRITES_IN_FLIGHT } from "./access.ts";
import { createKubeClient, type KubeClient } from "./client.ts";
import {
  isClientClosed,
  isConflict,
  isGone,
  isNotFound,
  isRetryableKubeError,
  kubeStatus,
} from "./errors.ts";
import { describeRequest } from "./transport.ts";
import type { Pod } from "./types.ts";

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
}

let server: Server;
let client: KubeClient;
const seen: Seen[] = [];
let handler: (req: Seen, res: ServerResponse) => void = (_req, res) => res.end("{}");

const json = (res: ServerResponse, code: number, body: unknown) => {
  res.writeHead(code, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
};
const status = (code: number, reason: string) => ({
  kind: "Status",
  status: "Failure",
  code,
  reason,
  message: reason,
});

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      const s = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, body };
      seen.push(s);
      handler(s, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  client = clientOfServer();
});

/** A client of the stand-in server. */
function clientOfServer(): KubeClient {
  const { port } = server.address() as AddressInfo;
  return createKubeClient({
    kubeconfig: {
      source: "test",
      context: "ctx",
      cluster: { name: "c", server: `http://127.0.0.1:${port}`, insecureSkipTLSVerify: true },
      user: { name: "u", token: "secret-token" },
    },
    qps: 1000,
    burst: 1000,
    logger: pino({ level: "silent" }),
    userAgent: "t/1",
  });
}

afterAll(async () => {
  await client.close();
  await new Promise((resolve) => server.close(resolve));
});

const last = () => {
  const s = seen.at(-1);
  if (!s) throw new Error("no request");
  return s;
};

describe("KubeClient over HTTP", () => {
  it("authenticates, identifies itself and counts each request by verb and resource", async () => {
    handler = (_req, res) => json(res, 200, { metadata: { name: "c", namespace: "ns" } });
    const before = client.budget.counts()["get configmaps"] ?? 0;
    const configMap = await client.getConfigMap("ns", "c");
    expect(configMap?.metadata?.name).toBe("c");
    expect(last()).toMatchObject({ method: "GET", url: "/api/v1/namespaces/ns/configmaps/c" });
    expect(last().headers.authorization).toBe("Bearer secret-token");
    expect(last().headers["user-agent"]).toBe("t/1");
    expect(client.budget.counts()["get configmaps"]).toBe(before + 1);
  });

  it("maps 404 on get to undefined and other errors to ApiExceptions the guards read", async () => {
    handler = (_req, res) => json(res, 404, status(404, "NotFound"));
    expect(await client.getSecret("ns", "s")).toBeUndefined();
    expect(await client.getConfigMap("ns", "c")).toBeUndefined();
    await expect(client.patchNode("n", {})).rejects.toSatisfy(isNotFound);
    handler = (_req, res) => json(res, 409, status(409, "Conflict"));
    await expect(client.replaceLease({ metadata: { name: "l", resourceVersion: "1" } })).rejects.toSatisfy(
      isConflict,
    );
  });

  it("patches pod status as a merge patch with the uid (and resourceVersion) preconditions", async () => {
    handler = (_req, res) => json(res, 200, {});
    await client.patchPodStatus({ namespace: "ns", name: "p", uid: "u1", status: { phase: "Running" } });
    expect(last().method).toBe("PATCH");
    expect(last().url).toBe("/api/v1/namespaces/ns/pods/p/status");
    expect(last().headers["content-type"]).toBe("application/merge-patch+json");
    expect(JSON.parse(last().body)).toEqual({ metadata: { uid: "u1" }, status: { phase: "Running" } });
    await client.patchPodStatus({ namespace: "ns", name: "p", uid: "u1", status: {}, resourceVersion: "42" });
    expect(JSON.parse(last().body)).toEqual({ metadata: { uid: "u1", resourceVersion: "42" }, status: {} });
    expect(client.budget.counts()["patch pods/status"]).toBe(2);
  });

  it("writes Nodes at most MAX_NODE_WRITES_IN_FLIGHT at once, and a status patch's labels in its body", async () => {
    const held: ServerResponse[] = [];
    handler = (req, res) => {
      if (req.url.startsWith("/api/v1/nodes")) held.push(res);
      else json(res, 200, {});
    };
    const from = seen.length;
    const writes = Array.from({ length: 20 }, (_, i) => [
      client.createNode({ metadata: { name: `c-${i}` } }),
      client.patchNode(`p-${i}`, { metadata: { labels: { a: "b" } } }),
      client.patchNodeStatus(`s-${i}`, { conditions: [] }, { labels: { "devicelet.dev/in-sync": "true" } }),
    ]).flat();
    const lease = client.createLease({ metadata: { name: "renewed-meanwhile" } });
    // A Lease write passes them by; of the 60 node writes, their places' worth reach the server.
    await lease;
    for (let i = 0; i < 100 && held.length < MAX_NODE_WRITES_IN_FLIGHT; i++)
      await new Promise((resolve) => setTimeout(resolve, 10));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(held).toHaveLength(MAX_NODE_WRITES_IN_FLIGHT);
    // Each answer lets one more go, until all are written.
    let answered = 0;
    while (answered < writes.length) {
      const res = held.shift();
      if (res) {
        json(res, 200, {});
        answered++;
      } else await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await Promise.all(writes);
    const status = seen.slice(from).find((r) => r.url === "/api/v1/nodes/s-0/status");
    expect(JSON.parse(status?.body ?? "{}")).toEqual({
      metadata: { labels: { "devicelet.dev/in-sync": "true" } },
      status: { conditions: [] },
    });
  });

  it("reports the API server's 422 on a mismatched metadata.uid as a Conflict, and other 422s as they are", async () => {
    const invalid = (field: string) => ({
      ...status(422, "Invalid"),
      details: { causes: [{ reason: "FieldValueInvalid", message: "field is immutable", field }] },
    });
    handler = (_req, res) => json(res, 422, invalid("metadata.uid"));
    const err: unknown = await client
      .patchPodStatus({ namespace: "ns", name: "p", uid: "u1", status: {} })
      .catch((e: unknown) => e);
    expect(isConflict(err)).toBe(true);
    expect((err as Error).message).toContain("UID precondition failed");
    expect((err as Error).cause).toBeDefined();
    handler = (_req, res) => json(res, 422, invalid("status.phase"));
    const other: unknown = await client
      .patchPodStatus({ namespace: "ns", name: "p", uid: "u1", status: {} })
      .catch((e: unknown) => e);
    expect(isConflict(other)).toBe(false);
    expect(kubeStatus(other)?.code).toBe(422);
  });

  it("deletes a pod with a uid precondition; 404 and a uid conflict both mean our pod is gone", async () => {
    handler = (_req, res) => json(res, 200, {});
    expect(await client.deletePod({ namespace: "ns", name: "p", uid: "u1", gracePeriodSeconds: 0 })).toBe(
      true,
    );
    expect(JSON.parse(last().body)).toMatchObject({ gracePeriodSeconds: 0, preconditions: { uid: "u1" } });
    handler = (_req, res) => json(res, 404, status(404, "NotFound"));
    expect(await client.deletePod({ namespace: "ns", name: "p", uid: "u1", gracePeriodSeconds: 0 })).toBe(
      false,
    );
    handler = (_req, res) => json(res, 409, status(409, "Conflict"));
    expect(await client.deletePod({ namespace: "ns", name: "p", uid: "u1", gracePeriodSeconds: 0 })).toBe(
      false,
    );
    handler = (_req, res) => json(res, 500, status(500, "InternalError"));
    await expect(
      client.deletePod({ namespace: "ns", name: "p", uid: "u1", gracePeriodSeconds: 0 }),
    ).rejects.toThrow("HTTP 500");
  });

  it("sends Lease times as six-digit MicroTime, in kube-node-lease by default", async () => {
    handler = (req, res) => json(res, 201, JSON.parse(req.body));
    await client.createLease({
      metadata: { name: "dev-1" },
      spec: { holderIdentity: "dev-1", renewTime: "2026-11-02T10:20:30.123Z", leaseDurationSeconds: 40 },
    });
    expect(last().url).toBe("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases");
    expect(JSON.parse(last().body)).toMatchObject({
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      spec: { renewTime: "2026-11-02T10:20:30.123000Z" },
    });
    await expect(client.replaceLease({ metadata: { name: "dev-1" } })).rejects.toThrow("resourceVersion");
  });

  it("lists Leases by label and deletes one with a resourceVersion precondition", async () => {
    handler = (_req, res) =>
      json(res, 200, { items: [{ metadata: { name: "m" } }], metadata: { resourceVersion: "9" } });
    const before = client.budget.counts()["list leases"] ?? 0;
    const list = await client.listLeases("ns", "devicelet.dev/shard-member=devicelet");
    expect(list.items.map((l) => l.metadata?.name)).toEqual(["m"]);
    const url = new URL(last().url, "http://x");
    expect(url.pathname).toBe("/apis/coordination.k8s.io/v1/namespaces/ns/leases");
    expect(url.searchParams.get("labelSelector")).toBe("devicelet.dev/shard-member=devicelet");
    expect(client.budget.counts()["list leases"]).toBe(before + 1);

    handler = (_req, res) => json(res, 200, {});
    expect(await client.deleteLease("m", "ns", "41")).toBe(true);
    expect(last().method).toBe("DELETE");
    expect(last().url).toBe("/apis/coordination.k8s.io/v1/namespaces/ns/leases/m");
    expect(JSON.parse(last().body)).toMatchObject({ preconditions: { resourceVersion: "41" } });
    expect(await client.deleteLease("m", "ns")).toBe(true);
    expect(JSON.parse(last().body)).not.toHaveProperty("preconditions");
    handler = (_req, res) => json(res, 409, status(409, "Conflict"));
    expect(await client.deleteLease("m", "ns", "41")).toBe(false);
    handler = (_req, res) => json(res, 404, status(404, "NotFound"));
    expect(await client.deleteLease("m", "ns", "41")).toBe(false);
    handler = (_req, res) => json(res, 500, status(500, "InternalError"));
    await expect(client.deleteLease("m", "ns")).rejects.toThrow("HTTP 500");
  });

  it("reads lists in pages and keeps the snapshot's resourceVersion", async () => {
    handler = (req, res) => {
      const url = new URL(req.url, "http://x");
      if (url.searchParams.get("continue") === "next") {
        json(res, 200, { items: [{ metadata: { name: "b" } }], metadata: { resourceVersion: "7" } });
      } else {
        json(res, 200, {
          items: [{ metadata: { name: "a" } }],
          metadata: { resourceVersion: "7", continue: "next" },
        });
      }
    };
    const before = client.budget.counts()["list pods"] ?? 0;
    const list = await client.listPods({ fieldSelector: "spec.nodeName=dev-1", limit: 1 });
    expect(list.items.map((p) => p.metadata?.name)).toEqual(["a", "b"]);
    expect(list.resourceVersion).toBe("7");
    expect(client.budget.counts()["list pods"]).toBe(before + 2);
    const url = new URL(last().url, "http://x");
    expect(url.searchParams.get("fieldSelector")).toBe("spec.nodeName=dev-1");
    expect(url.searchParams.get("limit")).toBe("1");
  });

  it("applies `each` to a page's items before it asks for the next page, and drops what it drops", async () => {
    const seen: string[] = [];
    handler = (req, res) => {
      const url = new URL(req.url, "http://x");
      seen.push(`page ${url.searchParams.get("continue") ?? "first"}`);
      const names = url.searchParams.get("continue") === "next" ? ["c", "d"] : ["a", "b"];
      const continued = url.searchParams.get("continue") === "next" ? {} : { continue: "next" };
      json(res, 200, {
        items: names.map((name) => ({ metadata: { name, managedFields: [{ manager: "x" }] } })),
        metadata: { resourceVersion: "9", ...continued },
      });
    };
    const list = await client.list<Pod>("/api/v1/pods", undefined, {
      limit: 2,
      each: (pod) => {
        seen.push(`item ${pod.metadata?.name ?? ""}`);
        return pod.metadata?.name === "b" ? undefined : { metadata: { name: pod.metadata?.name } };
      },
    });
    expect(seen).toEqual(["page first", "item a", "item b", "page next", "item c", "item d"]);
    expect(list.items).toEqual([
      { metadata: { name: "a" } },
      { metadata: { name: "c" } },
      { metadata: { name: "d" } },
    ]);
    expect(list.resourceVersion).toBe("9");
  });

  it("streams watch events split across chunks and surfaces an ERROR event as an ApiException", async () => {
    handler = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      const lines = [
        JSON.stringify({ type: "ADDED", object: { metadata: { name: "a", resourceVersion: "2" } } }),
        JSON.stringify({ type: "BOOKMARK", object: { metadata: { resourceVersion: "3" } } }),
        JSON.stringify({ type: "ERROR", object: status(410, "Expired") }),
      ].join("\n");
      res.write(lines.slice(0, 10));
      setTimeout(() => res.end(`${lines.slice(10)}\n`), 20);
    };
    const got: string[] = [];
    const run = async () => {
      for await (const event of client.watch<Pod>("/api/v1/pods", { resourceVersion: "1" })) {
        got.push(`${event.type} ${event.object.metadata?.resourceVersion ?? ""}`);
      }
    };
    await expect(run()).rejects.toSatisfy(isGone);
    expect(got).toEqual(["ADDED 2", "BOOKMARK 3"]);
    const url = new URL(last().url, "http://x");
    expect(url.searchParams.get("watch")).toBe("true");
    expect(url.searchParams.get("resourceVersion")).toBe("1");
    expect(client.budget.counts()["watch pods"]).toBeGreaterThanOrEqual(1);
  });

  it("ends a watch quietly when its signal aborts", async () => {
    handler = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.write(
        `${JSON.stringify({ type: "ADDED", object: { metadata: { name: "a", resourceVersion: "2" } } })}\n`,
      );
    };
    const controller = new AbortController();
    const got: string[] = [];
    for await (const event of client.watch<Pod>("/api/v1/pods", {}, { signal: controller.signal })) {
      got.push(event.type);
      controller.abort();
    }
    expect(got).toEqual(["ADDED"]);
  });

  it("creates core/v1 Events named like client-go's, in default for cluster-scoped objects", async () => {
    handler = (req, res) => json(res, 201, JSON.parse(req.body));
    const event = await client.createEvent({
      involvedObject: { kind: "Node", name: "dev-1", uid: "n1", apiVersion: "v1" },
      type: "Normal",
      reason: "Registered",
      message: "hello",
    });
    expect(last().url).toBe("/api/v1/namespaces/default/events");
    expect(event.metadata.name).toMatch(/^dev-1\.[0-9a-f]+$/);
    expect(event).toMatchObject({
      count: 1,
      source: { component: "devicelet" },
      reportingComponent: "devicelet",
      type: "Normal",
    });
    expect(event.firstTimestamp).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  });
});

describe("a closed KubeClient", () => {
  it("fails what is asked of it afterwards as devicelet stopping: not retryable, not a network failure", async () => {
    handler = (_req, res) => json(res, 200, { metadata: { name: "c", namespace: "ns" } });
    const closing = clientOfServer();
    expect((await closing.getConfigMap("ns", "c"))?.metadata?.name).toBe("c");
    const sent = seen.length;
    await closing.close();
    const err: unknown = await closing
      .patchLeaseSpec("n", "kube-node-lease", { holderIdentity: "n" })
      .catch((e: unknown) => e);
    expect(isClientClosed(err)).toBe(true);
    expect(isRetryableKubeError(err)).toBe(false);
    expect(seen.length).toBe(sent);
    // An error of a client still open is not taken for the shutdown.
    handler = () => server.closeAllConnections();
    const failed: unknown = await client.getNode("n").catch((e: unknown) => e);
    expect(isRetryableKubeError(failed)).toBe(true);
    expect(isClientClosed(failed)).toBe(false);
  });
});

describe("describeRequest", () => {
  it.each([
    ["GET", "/api/v1/namespaces/a/pods", false, "list pods"],
    ["GET", "/api/v1/pods", true, "watch pods"],
    ["GET", "/api/v1/namespaces/a/pods/p", false, "get pods"],
    ["PATCH", "/api/v1/namespaces/a/pods/p/status", false, "patch pods/status"],
    ["DELETE", "/api/v1/namespaces/a/pods/p", false, "delete pods"],
    ["POST", "/api/v1/nodes", false, "create nodes"],
    ["PATCH", "/api/v1/nodes/n/status", false, "patch nodes/status"],
    ["PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n", false, "update leases"],
    ["GET", "/api/v1/namespaces", false, "list namespaces"],
    ["GET", "/api/v1/namespaces/a", false, "get namespaces"],
  ])("%s %s → %s", (method, path, watch, expected) => {
    const { verb, resource } = describeRequest(method, path, watch);
    expect(`${verb} ${resource}`).toBe(expected);
  });
});
