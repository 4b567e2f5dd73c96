/**
 * The example's conformance target: what the kit of `devicelet/provider/testing` needs to run
 * its scenarios against this provider, with simulated devices (src/device.ts) polling it. Both
 * layers of the kit take it:
 *
 *   describeProviderContract(httpTarget({ name: "http example", devices: ["c-0", "c-1"] }));
 *   describeEngineConformance(httpTarget({ name: "http example", devices: ["e-0", "e-1"] }));
 *
 * Every provider instance the kit builds (a restart is a new one, on the same store) listens on
 * the one port the devices were given in `setUp`, as devicelet restarted with the same
 * configuration would.
 */
import { createServer, type AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import type { ProviderContext } from "devicelet/provider";
import type { ProviderTarget } from "devicelet/provider/testing";
import type { HttpProviderConfig } from "../src/config.ts";
import { SimulatedDevice } from "../src/device.ts";
import { HttpProvider } from "../src/provider.ts";

/** Short timings: a device that stops polling is offline within half a second. */
const timings = { pollSeconds: 0.1, offlineAfterSeconds: 0.5, startDelayMs: 100 } as const;

export function httpTarget(o: {
  readonly name: string;
  readonly devices: readonly [string, ...string[]];
}): ProviderTarget<HttpProvider> {
  let config: HttpProviderConfig | undefined;
  const devices = new Map<string, SimulatedDevice>();
  return {
    name: o.name,
    devices: o.devices,
    image: "example/app:1",
    patienceMs: 10_000,
    async setUp() {
      const port = await freePort();
      config = {
        listen: { host: "127.0.0.1", port },
        pollSeconds: timings.pollSeconds,
        offlineAfterSeconds: timings.offlineAfterSeconds,
        devices: { allow: [...o.devices] },
      };
      for (const id of o.devices) {
        const device = new SimulatedDevice({
          id,
          url: `http://127.0.0.1:${port}`,
          startDelayMs: timings.startDelayMs,
          retryMs: 50,
        });
        devices.set(id, device);
        await device.setOnline(true);
      }
    },
    async tearDown() {
      await Promise.all([...devices.values()].map((d) => d.setOnline(false)));
    },
    create: (context) => {
      if (!config) throw new Error("httpTarget: create before setUp");
      return new ProviderWithDevices(config, context, o.devices);
    },
    async setDeviceOnline(provider, deviceId, online) {
      const device = devices.get(deviceId);
      if (!device) throw new Error(`httpTarget: no device ${deviceId}`);
      await device.setOnline(online);
      await until(`${deviceId} ${online ? "online" : "offline"}`, async () => {
        const info = (await provider.listDevices()).find((d) => d.id === deviceId);
        return info?.connected === online;
      });
    },
  };
}

/**
 * The kit wants its devices known when a scenario starts, and this provider knows a device from
 * its first poll on: `start` here also waits until every device is known. Only the first instance
 * waits (for the first polls); later ones read the devices back from the store.
 */
class ProviderWithDevices extends HttpProvider {
  readonly #deviceIds: readonly string[];

  constructor(config: HttpProviderConfig, context: ProviderContext, deviceIds: readonly string[]) {
    super(config, context);
    this.#deviceIds = deviceIds;
  }

  override async start(signal: AbortSignal): Promise<void> {
    await super.start(signal);
    await until("every device known to the provider", async () => {
      const known = await this.listDevices();
      return this.#deviceIds.every((id) => known.some((d) => d.id === id));
    });
  }
}

/** Polls `done` until it says true; rejects after 10 s. */
async function until(what: string, done: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`httpTarget: not within 10 s: ${what}`);
    await sleep(20);
  }
}

/** A port nothing listens on now (the system's choice for port 0). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
