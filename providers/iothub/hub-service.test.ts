/**
 * HttpsHubService against the local IoT Hub emulator (its real HTTPS service API), and the client
 * budgets on a fake clock.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { FakeClock } from "../../src/base/fake-clock.ts";
import { startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import { OperationBudget, type OperationRates } from "./budget.ts";
import {
  HttpsHubService,
  HubServiceError,
  isTransient,
  isUnauthorized,
  PreconditionFailed,
} from "./hub-service.ts";

const logger = pino({ level: "silent" });
const generous: OperationRates = {
  queriesPerMinute: 6000,
  twinReadsPerSecond: 1000,
  twinUpdatesPerSecond: 1000,
  methodsPerSecond: 1000,
};

let emulator: IotHubEmulator;
const services: HttpsHubService[] = [];
beforeAll(async () => {
  emulator = await startIotHubEmulator({ name: "svc-test" });
});
afterAll(async () => {
  await emulator.close();
});
afterEach(() => {
  emulator.hub.setThrottle({});
  for (const s of services.splice(0)) s.close();
});

function service(o: { connectionString?: string } = {}): HttpsHubService {
  const s = new HttpsHubService({
    connectionString: o.connectionString ?? emulator.serviceConnectionString,
    endpoint: emulator.serviceUrl,
    ca: emulator.ca,
    rates: generous,
    logger,
  });
  services.push(s);
  return s;
}

let counter = 0;
const newDevice = (tags: Record<string, string> = {}) => {
  counter += 1;
  const id = `svc-${counter}`;
  emulator.addDevice(id);
  if (Object.keys(tags).length > 0) emulator.hub.patchTwin(id, { tags }, "*");
  return id;
};

describe("HttpsHubService", () => {
  it("reads a twin and patches its desired section only under the current etag", async () => {
    const hub = service();
    const id = newDevice();
    const twin = await hub.getTwin(id);
    expect(twin.deviceId).toBe(id);
    expect(twin.etag).not.toBe("");
    const patched = await hub.patchTwinDesired(id, { devicelet: { n: 1, p0: "{}" } }, twin.etag);
    expect(patched.properties.desired.devicelet).toEqual({ n: 1, p0: "{}" });

    const stale = await hub.patchTwinDesired(id, { devicelet: null }, twin.etag).catch((e: unknown) => e);
    expect(stale).toBeInstanceOf(PreconditionFailed);
    expect(stale).toMatchObject({ status: 412, code: "PreconditionFailed" });
    expect((await hub.getTwin(id)).properties.desired.devicelet).toEqual({ n: 1, p0: "{}" });
    expect(hub.operations()).toEqual({ query: 0, twinRead: 2, twinUpdate: 2, method: 0 });
  });

  it("pages a query with continuation tokens", async () => {
    const hub = service();
    const ids = [1, 2, 3, 4, 5].map(() => newDevice({ fleet: "paging" }));
    newDevice({ fleet: "other" });
    const seen: string[] = [];
    let continuation: string | undefined;
    let pages = 0;
    do {
      const page = await hub.query("SELECT * FROM devices WHERE tags.fleet = 'paging'", continuation, 2);
      seen.push(...page.items.map((t) => t.deviceId));
      continuation = page.continuation;
      pages += 1;
    } while (continuation !== undefined);
    expect(pages).toBe(3);
    expect(seen.sort()).toEqual([...ids].sort());
    expect(hub.operations().query).toBe(3);
  });

  it("reports the hub's refusals with status, code and transience", async () => {
    const hub = service();
    const id = newDevice();
    const offline = await hub.invokeMethod(id, "devicelet.command", {}, 5).catch((e: unknown) => e);
    expect(offline).toMatchObject({ status: 404, code: "DeviceNotOnline" });
    expect(isTransient(offline)).toBe(false);

    emulator.hub.setThrottle({ twinRead: 0.001 });
    const results = await Promise.allSettled([hub.getTwin(id), hub.getTwin(id)]);
    const throttled = results.find((r) => r.status === "rejected");
    expect(throttled?.status === "rejected" && throttled.reason).toMatchObject({
      status: 429,
      code: "ThrottlingException",
    });
    expect(isTransient(throttled?.status === "rejected" ? throttled.reason : undefined)).toBe(true);
    expect(hub.operations().twinRead).toBe(2);

    const badKey = emulator.serviceConnectionString.replace(
      /SharedAccessKey=[^;]+/,
      `SharedAccessKey=${Buffer.alloc(32, 1).toString("base64")}`,
    );
    const refused = await service({ connectionString: badKey })
      .getTwin(id)
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(HubServiceError);
    expect(refused).toMatchObject({ status: 401, code: "IotHubUnauthorizedAccess" });
    expect(isUnauthorized(refused)).toBe(true);
  });

  it("reports a refused endpoint as status 0, transient", async () => {
    const hub = new HttpsHubService({
      connectionString: emulator.serviceConnectionString,
      endpoint: "https://127.0.0.1:1",
      rates: generous,
      logger,
    });
    services.push(hub);
    const err = await hub.getTwin("x").catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 0, code: "Network" });
    expect(isTransient(err)).toBe(true);
  });
});

describe("HttpsHubService against a plain server", () => {
  it("takes Retry-After of a 503 and reads the code from the body; http is not secure", async () => {
    const server = http.createServer((req, res) => {
      res
        .writeHead(503, { "retry-after": "2", "content-type": "application/json" })
        .end(JSON.stringify({ Message: `ErrorCode:ServerBusy;busy, api ${req.url ?? ""}` }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const hub = new HttpsHubService({
        connectionString: emulator.serviceConnectionString,
        endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        rates: generous,
        logger,
      });
      services.push(hub);
      expect(hub.secure).toBe(false);
      const err = await hub.query("SELECT * FROM devices").catch((e: unknown) => e);
      expect(err).toMatchObject({ status: 503, code: "ServerBusy", retryAfterMs: 2000 });
      expect((err as Error).message).toContain("api /devices/query?api-version=2021-04-12");
      expect(isTransient(err)).toBe(true);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe("OperationBudget", () => {
  it("lets a class's burst through, then one operation per token, in call order", async () => {
    const clock = new FakeClock(1_000);
    const budget = new OperationBudget({ rates: { ...generous, twinReadsPerSecond: 2 }, clock });
    const signal = new AbortController().signal;
    const done: number[] = [];
    const takes = [1, 2, 3, 4].map((n) => budget.take("twinRead", signal).then(() => done.push(n)));
    await clock.settle();
    expect(done).toEqual([1, 2]);
    await clock.advanceAsync(499);
    expect(done).toEqual([1, 2]);
    await clock.advanceAsync(1);
    expect(done).toEqual([1, 2, 3]);
    await clock.advanceAsync(500);
    await Promise.all(takes);
    expect(done).toEqual([1, 2, 3, 4]);
    // Other classes are not held up by an exhausted one.
    expect(budget.available("twinUpdate")).toBe(true);
    expect(budget.counts()).toEqual({ query: 0, twinRead: 4, twinUpdate: 0, method: 0 });
  });

  it("serves an urgent taker before normal ones already waiting (a write's etag read before watches)", async () => {
    const clock = new FakeClock(1_000);
    const budget = new OperationBudget({ rates: { ...generous, twinReadsPerSecond: 2 }, clock });
    const signal = new AbortController().signal;
    const done: string[] = [];
    const takes = ["w1", "w2", "w3", "w4"].map((n) =>
      budget.take("twinRead", signal).then(() => done.push(n)),
    );
    await clock.settle();
    expect(done).toEqual(["w1", "w2"]);
    // Two reads wait for tokens; the urgent one comes later and goes first.
    const urgent = budget.take("twinRead", signal, "urgent").then(() => done.push("etag"));
    await clock.advanceAsync(500);
    expect(done).toEqual(["w1", "w2", "etag"]);
    await clock.advanceAsync(1_000);
    await Promise.all([...takes, urgent]);
    expect(done).toEqual(["w1", "w2", "etag", "w3", "w4"]);
    expect(budget.counts().twinRead).toBe(5);
  });

  it("releases waiting takers at once when their signal aborts, without spending tokens", async () => {
    const clock = new FakeClock(1_000);
    const budget = new OperationBudget({ rates: { ...generous, twinUpdatesPerSecond: 1 }, clock });
    const stop = new AbortController();
    await budget.take("twinUpdate", stop.signal);
    const waiting = [budget.take("twinUpdate", stop.signal), budget.take("twinUpdate", stop.signal)];
    await clock.settle();
    stop.abort();
    await Promise.all(waiting);
    expect(budget.counts().twinUpdate).toBe(1);
  });
});
