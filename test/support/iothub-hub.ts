/**
 * Test support for providers/iothub: the local IoT Hub emulator, real
 * devices on it (the unchanged DeviceSession over IotHubLink), and HubConnections pointed at it
 * whose messages are recorded.
 *
 *   const t = await startTestHub();
 *   const device = await t.onlineDevice();
 *   const { conn, messages } = await t.connection({ ids: [device.deviceId] });
 *   await t.close();
 */
import pino from "pino";
import type { Clock } from "../../src/base/clock.ts";
import { IotHubLink } from "../../src/device/iothub-link.ts";
import { DeviceSession, type BirthInfo } from "../../src/device/session.ts";
import { SimRuntime } from "../../src/device/sim-runtime.ts";
import { startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import type { OperationRates } from "../../providers/iothub/budget.ts";
import { HubConnection, type HubConnectionOptions } from "../../providers/iothub/hub-connection.ts";
import { HttpsHubService, type HubService } from "../../providers/iothub/hub-service.ts";

export const logger = pino({ level: process.env.DEVICELET_TEST_LOG ?? "silent" });

export const GENEROUS: OperationRates = {
  queriesPerMinute: 6000,
  twinReadsPerSecond: 1000,
  twinUpdatesPerSecond: 1000,
  methodsPerSecond: 1000,
};

const birth: BirthInfo = {
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  capacity: { cpu: "2", memory: "1Gi", pods: "10" },
  labels: { "example.com/line": "a" },
  capabilities: { maxMessageBytes: 65536, encodings: ["json"], runtime: "process", logs: false, exec: false },
};

export interface Recorded {
  readonly topic: string;
  readonly text: string;
  readonly retained: boolean;
}

export interface TestHub {
  readonly emulator: IotHubEmulator;
  /** Added to the connections' local clock (presence staleness). */
  offsetMs: number;
  newDeviceId(): string;
  onlineDevice(o?: { clock?: Clock; heartbeatSeconds?: number }): Promise<{
    deviceId: string;
    session: DeviceSession;
  }>;
  service(o?: { connectionString?: string; rates?: OperationRates }): HttpsHubService;
  connection(
    selection: HubConnectionOptions["selection"],
    o?: Partial<Omit<HubConnectionOptions, "selection">> & { start?: boolean; service?: HubService },
  ): Promise<{ conn: HubConnection; messages: Recorded[] }>;
  close(): Promise<void>;
}

let counter = 0;

export async function startTestHub(): Promise<TestHub> {
  const emulator = await startIotHubEmulator();
  const sessions: DeviceSession[] = [];
  const connections: HubConnection[] = [];
  const t: TestHub = {
    emulator,
    offsetMs: 0,
    newDeviceId() {
      counter += 1;
      const id = `hc-${counter}`;
      emulator.addDevice(id);
      return id;
    },
    async onlineDevice(o = {}) {
      const deviceId = t.newDeviceId();
      const link = new IotHubLink({
        deviceId,
        connectionString: emulator.deviceConnectionString(deviceId),
        ca: emulator.ca,
        logger,
        reconnectMs: 100,
        ...o,
      });
      const runtime = new SimRuntime();
      const session = new DeviceSession({
        deviceId,
        link,
        runtime,
        device: birth,
        logger,
        reportCoalesceMs: 1,
      });
      sessions.push(session);
      await session.start();
      await session.whenOnline();
      return { deviceId, session };
    },
    service(o = {}) {
      return new HttpsHubService({
        connectionString: o.connectionString ?? emulator.serviceConnectionString,
        endpoint: emulator.serviceUrl,
        ca: emulator.ca,
        rates: o.rates ?? GENEROUS,
        logger,
      });
    },
    async connection(selection, o = {}) {
      const { start = true, service, ...rest } = o;
      const conn = new HubConnection({
        service: service ?? t.service(),
        selection,
        sweepIntervalMs: 200,
        watchForMs: 5_000,
        methodResponseTimeoutSeconds: 5,
        presenceMarginMs: 200,
        graceMs: 60_000,
        logger,
        now: () => Date.now() + t.offsetMs,
        ...rest,
      });
      connections.push(conn);
      const messages: Recorded[] = [];
      conn.onMessage((topic, payload, retained) =>
        messages.push({ topic, text: payload.toString(), retained }),
      );
      if (start) await conn.start(new AbortController().signal);
      return { conn, messages };
    },
    async close() {
      await Promise.all(connections.splice(0).map((c) => c.stop()));
      await Promise.all(sessions.splice(0).map((s) => s.stop().catch(() => undefined)));
      await emulator.close();
    },
  };
  return t;
}

/**
 * The iothub provider's `hub` section for tests against the emulator: its service API and CA,
 * sweeps every second, presence lost soon, and no query budget to wait on.
 */
export const emulatorHubConfig = (emulator: IotHubEmulator, caFile: string) => ({
  connectionString: emulator.serviceConnectionString,
  endpoint: emulator.serviceUrl,
  caFile,
  sweepIntervalSeconds: 1,
  presenceMarginSeconds: 2,
  budget: { queriesPerMinute: 6000 },
});
