import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { EngineReadiness, startHealthServer, type HealthServer, type ReadinessCheck } from "./index.ts";

const logger = pino({ level: "silent" });
const started: HealthServer[] = [];

async function serve(checks: readonly ReadinessCheck[]): Promise<HealthServer> {
  const server = await startHealthServer({ port: 0, bindAddress: "127.0.0.1", checks, logger });
  started.push(server);
  return server;
}

async function get(server: HealthServer, path: string, method = "GET") {
  const res = await fetch(`${server.url}${path}`, { method });
  return { status: res.status, body: await res.text() };
}

afterEach(async () => {
  await Promise.all(started.splice(0).map((s) => s.close()));
});

describe("health endpoints", () => {
  it("answers /healthz whatever readiness says", async () => {
    const server = await serve([new EngineReadiness()]);
    expect(await get(server, "/healthz")).toEqual({ status: 200, body: "ok\n" });
  });

  it("is not ready while starting, ready once started, and never again once stopping", async () => {
    const readiness = new EngineReadiness();
    const server = await serve([readiness]);
    const before = await get(server, "/readyz");
    expect(before.status).toBe(503);
    expect(before.body).toContain("engine: starting");

    readiness.ready();
    expect(await get(server, "/readyz")).toEqual({ status: 200, body: "ok\n" });

    readiness.stopping();
    readiness.ready();
    const after = await get(server, "/readyz");
    expect(after.status).toBe(503);
    expect(after.body).toContain("engine: stopping");
  });

  it("needs every check and names each one that fails", async () => {
    const readiness = new EngineReadiness();
    readiness.ready();
    let leader: string | undefined = "no lease yet";
    const server = await serve([readiness, { name: "leader", notReadyReason: () => leader }]);
    expect(await get(server, "/readyz")).toEqual({ status: 503, body: "not ready\nleader: no lease yet\n" });
    leader = undefined;
    expect((await get(server, "/readyz")).status).toBe(200);
  });

  it("answers 404 for other paths and 405 for other methods", async () => {
    const server = await serve([]);
    expect((await get(server, "/")).status).toBe(404);
    expect((await get(server, "/healthz/extra")).status).toBe(404);
    expect((await get(server, "/readyz", "POST")).status).toBe(405);
    expect(await get(server, "/readyz", "HEAD")).toEqual({ status: 200, body: "" });
  });

  it("refuses to start on a port that is taken", async () => {
    const first = await serve([]);
    await expect(
      startHealthServer({ port: first.port, bindAddress: "127.0.0.1", checks: [], logger }),
    ).rejects.toThrow(/EADDRINUSE/);
  });
});
