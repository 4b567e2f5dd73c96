/**
 * How the simulator's devices reach devicelet: the one part of a simulated device that differs
 * between an MQTT broker and Azure IoT Hub. Everything above the link (session, runtime, store,
 * behaviours) is the same in both.
 *
 *   const links = mqttLinks({ url: broker.url, protocolVersion: 4, logger });
 *   const gw = links.linkFor("gw-0");                 // its own connection
 *   const child = links.linkFor("gw-0-mcu-0", "gw-0"); // bridged over the gateway's connection
 *
 *   const hub = iotHubLinks({ connectionString: (id) => emulator.deviceConnectionString(id), ca: emulator.ca, logger });
 *   const mcu = hub.linkFor("mcu-0");                 // one SDK client (one TLS connection) per connect
 *   // some devices over WebSockets or with X.509: the target's `transport(id)` and `x509(id)`
 *
 * - MQTT: one {@link MqttTransport} per device with a connection; a child's link is bridged over
 *   its gateway's, which must have been asked for first.
 * - IoT Hub: one {@link IotHubLink} per device. Bridged children are not carried over IoT Hub
 *   (docs/iothub.md, "Not carried yet"): asking for one throws. Neither are logs or exec sessions,
 *   so births over these links announce neither (`carriesSessions` false).
 */
import type { Logger } from "pino";
import { withoutCredentials } from "../log/redact.ts";
import { IotHubLink, type IotHubTransport, type X509Credentials } from "./iothub-link.ts";
import type { DeviceLink } from "./link.ts";
import { MqttTransport } from "./mqtt-link.ts";

/** Links for one simulated fleet; each id is asked for once. */
export interface SimLinks {
  /** The link of `deviceId`; `gateway` names the gateway a bridged child sits behind. */
  linkFor(deviceId: string, gateway?: string): DeviceLink;
  /** Connections made so far (one per device that owns one). */
  readonly connections: number;
  /** Where the devices connect, without credentials, for messages. */
  readonly endpoint: string;
  /** Whether `kubectl logs`/`exec` sessions travel over these links. */
  readonly carriesSessions: boolean;
  /** How many devices may start connecting per second; Infinity: all at once. */
  readonly connectsPerSecond: number;
}

export function mqttLinks(o: { url: string; protocolVersion: 4 | 5; ca?: string; logger: Logger }): SimLinks {
  const transports = new Map<string, MqttTransport>();
  return {
    linkFor(deviceId, gateway) {
      if (gateway !== undefined) {
        const carrier = transports.get(gateway);
        if (!carrier) throw new Error(`simulator: gateway ${gateway} of ${deviceId} has no connection yet`);
        return carrier.bridged(deviceId);
      }
      const transport = new MqttTransport({
        url: o.url,
        clientId: deviceId,
        protocolVersion: o.protocolVersion,
        ...(o.ca === undefined ? {} : { ca: o.ca }),
        logger: o.logger,
      });
      transports.set(deviceId, transport);
      return transport.link(deviceId);
    },
    get connections() {
      return transports.size;
    },
    endpoint: withoutCredentials(o.url),
    carriesSessions: true,
    connectsPerSecond: Infinity,
  };
}

/** An IoT Hub to run simulated devices against (docs/iothub.md, "Mapping onto IoT Hub"). */
export interface SimIotHubTarget {
  /** The device connection string of each simulated device; its `DeviceId` must be that id. */
  connectionString(deviceId: string): string;
  /** PEM of a CA to trust besides the system's (the local emulator's `ca`). */
  ca?: string;
  /** Seconds between presence heartbeats (a reported-property update each). Default 60. */
  heartbeatSeconds?: number;
  /**
   * New device connections per second while the fleet starts. Default 50: IoT Hub admits about
   * 100 new connections per second per S1 unit and refuses the excess (CONNACK 3), which the SDK
   * and the link then retry. Reconnects after goOnline or reboot are not paced.
   */
  connectsPerSecond?: number;
  /** Milliseconds before a device connects again after a failed connect or a drop. Default 2000. */
  reconnectMs?: number;
  /**
   * The transport of each device (default `mqtt`); a device on `mqttWs` needs a connection string
   * that reaches the hub's WebSocket endpoint (the emulator's `webSocketConnectionString`).
   */
  transport?(deviceId: string): IotHubTransport;
  /**
   * The X.509 certificate of each device that authenticates with one (its connection string says
   * `x509=true`); undefined for a SAS device.
   */
  x509?(deviceId: string): X509Credentials | undefined;
}

export function iotHubLinks(target: SimIotHubTarget, logger: Logger): SimLinks {
  const rate = target.connectsPerSecond ?? 50;
  if (!(rate > 0)) throw new Error(`startSimulator: iothub.connectsPerSecond must be positive, not ${rate}`);
  let connections = 0;
  let hostName: string | undefined;
  return {
    linkFor(deviceId, gateway) {
      if (gateway !== undefined)
        throw new Error(
          `startSimulator: ${deviceId} is bridged by gateway ${gateway}, and IoT Hub does not carry bridged children (docs/iothub.md, "Not carried yet")`,
        );
      const connectionString = target.connectionString(deviceId);
      const named = /(?:^|;)DeviceId=([^;]*)/.exec(connectionString)?.[1];
      if (named !== deviceId)
        throw new Error(
          `startSimulator: the IoT Hub connection string for ${deviceId} names DeviceId ${named ?? "(none)"}`,
        );
      hostName ??= /(?:^|;)HostName=([^;]*)/.exec(connectionString)?.[1];
      connections += 1;
      const x509 = target.x509?.(deviceId);
      return new IotHubLink({
        deviceId,
        connectionString,
        logger,
        ...(target.ca === undefined ? {} : { ca: target.ca }),
        ...(target.heartbeatSeconds === undefined ? {} : { heartbeatSeconds: target.heartbeatSeconds }),
        ...(target.reconnectMs === undefined ? {} : { reconnectMs: target.reconnectMs }),
        ...(target.transport === undefined ? {} : { transport: target.transport(deviceId) }),
        ...(x509 === undefined ? {} : { x509: () => Promise.resolve(x509) }),
      });
    },
    get connections() {
      return connections;
    },
    get endpoint() {
      return `IoT Hub ${hostName ?? "(no device yet)"}`;
    },
    carriesSessions: false,
    connectsPerSecond: rate,
  };
}
