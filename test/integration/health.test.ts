/**
 * devicelet's own health endpoints as its pod's probes see them, on the real `devicelet run`:
 * `/healthz` answers from the first moments of start, `/readyz` only once nodes are registered,
 * the provider started and pods synced, and never again once SIGTERM has begun the stop.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { startEmbeddedBroker, type EmbeddedBroker } from "../../src/broker/embedded.ts";
import { freePort } from "../../src/testing/controlplane/process.ts";
import { runDevicelet, startDevicelet, type DeviceletProcess } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { getJson } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The URL devicelet logged for its health endpoints (the port is picked at start). */
const healthUrl = (d: DeviceletProcess) =>
  eventually(() => {
    const line = d
      .logLines()
      .find((l) => typeof l.url === "string" && String(l.msg).startsWith("health endpoints on"));
    if (!line) throw new Error("no health endpoints logged yet");
    return line.url as string;
  });

/** Status and body, or "refused" when nothing listens. */
async function probe(url: string): Promise<{ status: number; body: string } | "refused"> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
    return { status: res.status, body: await res.text() };
  } catch {
    return "refused";
  }
}

describe("health endpoints of devicelet run", () => {
  it("is alive but not ready while the provider waits for its broker, then ready", async () => {
    const id = uniqueName("health-mqtt");
    const brokerPort = await freePort();
    const brokers: EmbeddedBroker[] = [];
    const d = await runDevicelet({
      id,
      config: () => ({
        provider: {
          type: "mqtt",
          config: {
            broker: {
              url: `mqtt://127.0.0.1:${brokerPort}`,
              clientId: `devicelet-${id}`,
              reconnect: { minDelayMs: 100, maxDelayMs: 500 },
            },
            devices: { allow: [`${id}-*`] },
          },
        },
      }),
    });
    cleanups.push(
      () => d.stop(),
      () => Promise.all(brokers.map((b) => b.close())),
    );
    const url = await healthUrl(d);
    await eventually(async () =>
      expect(await probe(`${url}/healthz`)).toEqual({ status: 200, body: "ok\n" }),
    );
    // The engine is past its nodes and blocked in the provider's start: alive, not ready.
    await eventually(() => {
      if (!d.logLines().some((l) => l.msg === "nodes are heartbeating; waiting for the provider"))
        throw new Error("not waiting for the provider yet");
    });
    const waiting = await probe(`${url}/readyz`);
    expect(waiting).toMatchObject({ status: 503 });
    expect(waiting !== "refused" && waiting.body).toContain("engine: starting");
    expect(await probe(`${url}/healthz`)).toEqual({ status: 200, body: "ok\n" });

    brokers.push(await startEmbeddedBroker({ port: brokerPort }));
    await eventually(async () => expect(await probe(`${url}/readyz`)).toEqual({ status: 200, body: "ok\n" }));
    // Ready means started: the pod controller has synced, which `devicelet is running` follows.
    await eventually(() => {
      if (!d.logLines().some((l) => l.msg === "devicelet is running")) throw new Error("not running yet");
    });
  });

  it("is ready with its nodes registered, and never ready again once SIGTERM arrives", async () => {
    const id = uniqueName("health-mock");
    const d = await startDevicelet({ id, provider: { devices: { count: 3, idPrefix: id } } });
    cleanups.push(() => d.stop());
    const url = await healthUrl(d);
    await eventually(async () => expect(await probe(`${url}/readyz`)).toEqual({ status: 200, body: "ok\n" }));
    const nodes = await getJson<{ items: unknown[] }>(["nodes", "-l", d.nodeSelector]);
    expect(nodes.items).toHaveLength(3);

    // Once devicelet has logged that it is stopping (the signal handled), probe as fast as a probe
    // can until nothing listens: no answer may be 200 from then on.
    const exit = d.stop();
    const run = { exited: false };
    void exit.finally(() => (run.exited = true));
    while (!run.exited && !d.logLines().some((l) => String(l.msg).startsWith("stopping:"))) await sleep(2);
    const answers: ({ status: number; body: string } | "refused")[] = [];
    for (;;) {
      const answer = await probe(`${url}/readyz`);
      answers.push(answer);
      if (answer === "refused") break;
    }
    expect(await exit).toBe(0);
    expect(answers.filter((a) => a !== "refused" && a.status !== 503)).toEqual([]);
    // The window between SIGTERM and exit is short; when a probe landed in it, it said why.
    for (const a of answers) if (a !== "refused") expect(a.body).toContain("engine: stopping");
  });
});
