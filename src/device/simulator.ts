/**
 * Thousands of simulated devices in one process, speaking the real protocol to a real broker:
 * gateways (one MQTT connection each, carrying their child microcontrollers, which go down with
 * the gateway) and standalone microcontrollers (one connection each). Apps are simulated by
 * {@link SimRuntime}: no processes, a start time with jitter, a failure rate, capacity admission.
 *
 *   const sim = await startSimulator({
 *     brokerUrl: broker.url,
 *     devices: fleetSpec({ gateways: 10, childrenPerGateway: 4, mcus: 10, prefix: "t1" }),
 *     appStartMs: 20,
 *   });
 *   sim.device("t1-gw-0").applies;     // desired documents applied (exactly once each)
 *   await sim.device("t1-gw-0").goOffline();   // its children go with it
 *   await sim.stop();
 *
 * Over Azure IoT Hub instead (`iothub` in place of `brokerUrl`), every device runs over its own
 * `IotHubLink` (iothub-link.ts; sim-links.ts builds the links): one SDK client and one TLS
 * connection each, with the same session, runtime and behaviours.
 * Standalone devices only (IoT Hub carries no bridged children), births announce no logs or exec,
 * and connects are paced at `iothub.connectsPerSecond` (default 50) while the fleet starts:
 *
 *   const sim = await startSimulator({
 *     iothub: { connectionString: (id) => emulator.addDevice(id).connectionString, ca: emulator.ca },
 *     devices: fleetSpec({ gateways: 0, childrenPerGateway: 0, mcus: 100, prefix: "h" }),
 *   });
 *
 * Presence of bridged children: one connection has one will, so when a gateway drops only the
 * gateway's `lost` is published. devicelet infers the children lost: every child's birth names its
 * gateway (`device.gateway`), and a `lost` for the gateway's current boot makes all of them lost.
 * When a child alone drops while its gateway stays up, the gateway publishes the child's will; a
 * child that drops while its gateway is down gets its `lost` from the gateway right after the
 * gateway's next birth, while the children it still reaches are born again (docs/protocol.md § 8).
 */
import { setTimeout as delay } from "node:timers/promises";
import pino, { type Logger } from "pino";
import { DEFAULT_MAX_MESSAGE_BYTES } from "../protocol/types.ts";
import { DeviceSession, type AppliedGeneration, type BirthInfo } from "./session.ts";
import { SimRuntime } from "./sim-runtime.ts";
import { iotHubLinks, mqttLinks, type SimIotHubTarget, type SimLinks } from "./sim-links.ts";
import { memoryStore } from "./store.ts";

export type { SimIotHubTarget } from "./sim-links.ts";

/** Exactly one of `brokerUrl` and `iothub` is set. */
export interface SimulatorOptions {
  /** The MQTT broker every device (or its gateway) connects to. */
  brokerUrl?: string;
  /** Azure IoT Hub instead of a broker: standalone devices only, one SDK client each. */
  iothub?: SimIotHubTarget;
  /** PEM CA for `mqtts://` brokers (with `iothub`, use `iothub.ca`). */
  ca?: string;
  /** MQTT version; default 5. IoT Hub speaks 3.1.1. */
  protocolVersion?: 4 | 5;
  devices: SimDeviceSpec[];
  appStartMs?: number;
  appStartJitterMs?: number;
  /** Fraction (0–1) of app starts that crash. */
  failureRate?: number;
  /** Default 20 ms. */
  reportCoalesceMs?: number;
  logger?: Logger;
  /** MQTT 5 will delay of every connection (IoT Hub: none). Default 1 s. */
  willDelaySeconds?: number;
  /** Whether devices keep what they applied across reboot(). Default true. */
  persistState?: boolean;
  /** Seconds between the gateways' `stats` messages (5–3600). Default 15. */
  statsIntervalSeconds?: number;
  /** A simulated app writes a log line this often. Default 5000. */
  logIntervalMs?: number;
  /**
   * startSimulator rejects (and disconnects everything) if not all devices are online this long
   * after the last one started connecting (IoT Hub paces starts). Default 60 s.
   */
  startTimeoutMs?: number;
}

export interface SimDeviceSpec {
  id: string;
  kind: "gateway" | "mcu";
  /** For a microcontroller behind a gateway: the gateway's id (it must be in the same spec). */
  gateway?: string;
  capacity?: Record<string, string>;
  labels?: Record<string, string>;
  arch?: string;
  os?: string;
  zone?: string;
  maxMessageBytes?: number;
  /**
   * false: a device without a wall clock, which expires commands only by `ttlSeconds` from their
   * arrival (docs/protocol.md § 7). Default true.
   */
  wallClock?: boolean;
  /**
   * Keep the will of the first connection of a boot on every reconnect, as MQTT libraries that fix
   * the will at client creation do (DeviceSessionOptions.keepFirstWill). Own connections only: a
   * bridged child's `lost` comes from its gateway. Default false.
   */
  keepFirstWill?: boolean;
}

export interface Simulator {
  readonly devices: ReadonlyMap<string, SimDevice>;
  /** Throws for an unknown id. */
  device(id: string): SimDevice;
  /** Every device publishes `offline` and disconnects; children first. */
  stop(): Promise<void>;
}

export interface SimDevice {
  readonly id: string;
  readonly online: boolean;
  readonly bootId: string;
  /** Desired documents applied (each (epoch, generation) at most once). */
  applies: number;
  /** Applied documents that changed what the device runs (exactly one per queued change). */
  readonly changes: number;
  appliedGenerations: { epoch: string; generation: number }[];
  runningPods(): string[] /* uids */;
  goOffline(): Promise<void>;
  goOnline(): Promise<void>;
  reboot(): Promise<void>;
  sleep(wakeAt: Date): Promise<void>;
  publishRaw(subtopic: string, payload: string | Buffer, opts?: { retain?: boolean }): Promise<void>;
}

/**
 * A fleet: `gateways` gateways with `childrenPerGateway` microcontrollers each, plus `mcus`
 * standalone microcontrollers, ids `{prefix}-gw-{i}`, `{prefix}-gw-{i}-mcu-{j}`, `{prefix}-mcu-{k}`,
 * spread over zones `zone-a`…`zone-c`. Gateways take `podsPerGateway` pods (default 110),
 * microcontrollers one.
 */
export function fleetSpec(o: {
  gateways: number;
  childrenPerGateway: number;
  mcus: number;
  prefix: string;
  podsPerGateway?: number;
}): SimDeviceSpec[] {
  const zones = ["zone-a", "zone-b", "zone-c"] as const;
  const zone = (i: number) => zones[i % zones.length] ?? "zone-a";
  const specs: SimDeviceSpec[] = [];
  for (let g = 0; g < o.gateways; g++) {
    const id = `${o.prefix}-gw-${g}`;
    specs.push({
      id,
      kind: "gateway",
      zone: zone(g),
      capacity: { cpu: "4", memory: "4Gi", pods: String(o.podsPerGateway ?? 110) },
    });
    for (let c = 0; c < o.childrenPerGateway; c++)
      specs.push({ id: `${id}-mcu-${c}`, kind: "mcu", gateway: id, zone: zone(g) });
  }
  for (let m = 0; m < o.mcus; m++) specs.push({ id: `${o.prefix}-mcu-${m}`, kind: "mcu", zone: zone(m) });
  return specs;
}

/**
 * Connects every device and resolves once all are online (births published). Throws before
 * connecting anything for a spec it cannot run (duplicate ids, an unknown gateway, bridged children
 * over IoT Hub).
 */
export async function startSimulator(o: SimulatorOptions): Promise<Simulator> {
  const logger = o.logger ?? pino({ level: "warn" });
  const links = simLinks(o, logger);
  const devices = new Map<string, SimDeviceImpl>();
  // Owners of a connection first, so children find their gateway's transport.
  const ordered = [...o.devices].sort(
    (a, b) => Number(a.gateway !== undefined) - Number(b.gateway !== undefined),
  );
  for (const spec of ordered) {
    const link = links.linkFor(spec.id, spec.gateway);
    const runtime = new SimRuntime({
      appStartMs: o.appStartMs ?? 0,
      appStartJitterMs: o.appStartJitterMs ?? 0,
      failureRate: o.failureRate ?? 0,
      capacity: capacityOf(spec),
      ...(o.logIntervalMs === undefined ? {} : { logIntervalMs: o.logIntervalMs }),
    });
    const session = new DeviceSession({
      deviceId: spec.id,
      link,
      runtime,
      device: birthOf(spec, { statsIntervalSeconds: o.statsIntervalSeconds ?? 15, links }),
      logger,
      ...(o.persistState === false ? {} : { store: memoryStore() }),
      reportCoalesceMs: o.reportCoalesceMs ?? 20,
      willDelaySeconds: o.willDelaySeconds ?? 1,
      wallClock: spec.wallClock ?? true,
      keepFirstWill: spec.keepFirstWill ?? false,
    });
    devices.set(spec.id, new SimDeviceImpl(spec, session, runtime));
  }
  let stopped: Promise<void> | undefined;
  const simulator: Simulator = {
    devices,
    device(id) {
      const d = devices.get(id);
      if (!d) throw new Error(`simulator: no device ${id}`);
      return d;
    },
    stop() {
      stopped ??= (async () => {
        const all = [...devices.values()];
        await Promise.all(all.filter((d) => d.spec.gateway !== undefined).map((d) => d.session.stop()));
        await Promise.all(all.filter((d) => d.spec.gateway === undefined).map((d) => d.session.stop()));
      })();
      return stopped;
    },
  };
  await startPaced([...devices.values()], links.connectsPerSecond);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<"timeout">(
    (resolve) => (timer = setTimeout(() => resolve("timeout"), o.startTimeoutMs ?? 60_000)),
  );
  const outcome = await Promise.race([
    Promise.all([...devices.values()].map((d) => d.session.whenOnline())),
    timedOut,
  ]);
  clearTimeout(timer);
  if (outcome === "timeout") {
    const offline = [...devices.values()].filter((d) => !d.online).map((d) => d.id);
    await simulator.stop();
    throw new Error(
      `startSimulator: ${offline.length} devices not online in time (${offline.slice(0, 5).join(", ")}…) at ${links.endpoint}`,
    );
  }
  logger.info({ devices: devices.size, connections: links.connections }, "simulator online");
  return simulator;
}

/** The links of the fleet, after checking the spec against what they can carry. */
function simLinks(o: SimulatorOptions, logger: Logger): SimLinks {
  if ((o.brokerUrl === undefined) === (o.iothub === undefined))
    throw new Error("startSimulator: give exactly one of brokerUrl (MQTT) and iothub (Azure IoT Hub)");
  const byId = new Map(o.devices.map((d) => [d.id, d]));
  if (byId.size !== o.devices.length) throw new Error("startSimulator: device ids must be unique");
  for (const d of o.devices) {
    if (d.gateway !== undefined && byId.get(d.gateway)?.kind !== "gateway") {
      throw new Error(
        `startSimulator: ${d.id} names gateway ${d.gateway}, which is not a gateway of this simulator`,
      );
    }
  }
  if (o.iothub === undefined)
    return mqttLinks({
      url: o.brokerUrl ?? "",
      protocolVersion: o.protocolVersion ?? 5,
      ...(o.ca === undefined ? {} : { ca: o.ca }),
      logger,
    });
  const children = o.devices.filter((d) => d.gateway !== undefined);
  if (children.length > 0)
    throw new Error(
      `startSimulator: IoT Hub carries no bridged children (docs/iothub.md, "Not carried yet"), but ${children.length} devices sit behind gateways (${children
        .slice(0, 3)
        .map((d) => d.id)
        .join(", ")}…); run standalone devices only (fleetSpec childrenPerGateway: 0)`,
    );
  return iotHubLinks(o.iothub, logger);
}

/** Starts the sessions, at most `perSecond` of them in each second (the connects they begin). */
async function startPaced(devices: readonly SimDeviceImpl[], perSecond: number): Promise<void> {
  if (perSecond === Infinity) {
    await Promise.all(devices.map((d) => d.session.start()));
    return;
  }
  const began = Date.now();
  const starts: Promise<void>[] = [];
  for (const [i, d] of devices.entries()) {
    const due = began + (i * 1000) / perSecond - Date.now();
    // A rate limit, not a wait for an event: the hub refuses connects beyond its rate.
    if (due > 0) await delay(due);
    const started = d.session.start();
    started.catch(() => undefined); // handled by Promise.all below, not unhandled meanwhile
    starts.push(started);
  }
  await Promise.all(starts);
}

class SimDeviceImpl implements SimDevice {
  readonly spec: SimDeviceSpec;
  readonly session: DeviceSession;
  readonly #runtime: SimRuntime;
  constructor(spec: SimDeviceSpec, session: DeviceSession, runtime: SimRuntime) {
    this.spec = spec;
    this.session = session;
    this.#runtime = runtime;
  }
  get id(): string {
    return this.spec.id;
  }
  get online(): boolean {
    return this.session.online;
  }
  get bootId(): string {
    return this.session.bootId;
  }
  get changes(): number {
    return this.session.changes;
  }

  get applies(): number {
    return this.session.applies;
  }
  get appliedGenerations(): AppliedGeneration[] {
    return this.session.appliedGenerations;
  }
  runningPods(): string[] {
    return this.#runtime.runningPods();
  }
  goOffline(): Promise<void> {
    return this.session.goOffline();
  }
  goOnline(): Promise<void> {
    return this.session.goOnline();
  }
  reboot(): Promise<void> {
    return this.session.reboot();
  }
  sleep(wakeAt: Date): Promise<void> {
    return this.session.sleep(wakeAt);
  }
  publishRaw(subtopic: string, payload: string | Buffer, opts?: { retain?: boolean }): Promise<void> {
    return this.session.publishRaw(subtopic, payload, opts);
  }
}

function capacityOf(spec: SimDeviceSpec): Record<string, string> {
  return (
    spec.capacity ??
    (spec.kind === "gateway"
      ? { cpu: "4", memory: "4Gi", pods: "110" }
      : { cpu: "1", memory: "512Ki", pods: "1" })
  );
}

/**
 * Gateways serve logs and exec (no tty; not over links that do not carry them, such as IoT Hub)
 * and send stats; microcontrollers, single firmware images without a shell or captured output,
 * announce none of them, so devicelet refuses at once.
 */
function birthOf(spec: SimDeviceSpec, o: { statsIntervalSeconds: number; links: SimLinks }): BirthInfo {
  const gateway = spec.kind === "gateway";
  const sessions = gateway && o.links.carriesSessions;
  return {
    deviceClass: spec.kind,
    os: spec.os ?? (gateway ? "linux" : "freertos"),
    arch: spec.arch ?? (gateway ? "arm64" : "arm"),
    ...(spec.zone === undefined ? {} : { zone: spec.zone }),
    ...(spec.gateway === undefined ? {} : { gateway: spec.gateway }),
    labels: { simulated: "true", ...spec.labels },
    capacity: capacityOf(spec),
    osImage: gateway ? "devicelet simulated gateway" : "devicelet simulated microcontroller",
    capabilities: {
      maxMessageBytes: spec.maxMessageBytes ?? (gateway ? DEFAULT_MAX_MESSAGE_BYTES : 32 * 1024),
      encodings: ["json"],
      runtime: gateway ? "process" : "firmware",
      logs: sessions,
      exec: sessions,
      ...(gateway ? { tty: false, stats: true, statsIntervalSeconds: o.statsIntervalSeconds } : {}),
      commandTtl: true,
    },
  };
}
