/**
 * The MQTT provider: devices (gateways and microcontrollers) reached over any MQTT 3.1.1 or 5
 * broker, speaking the devicelet protocol (docs/protocol.md, `src/protocol`).
 *
 * - Devices become nodes from their birth (retained `state` online), filtered by `devices.allow`;
 *   presence, reboots (boot ids) and gateway loss show as `DeviceConnected`, never as NotReady.
 * - Each device gets one retained `desired` document with all its pods and tombstones; changes are
 *   coalesced per device, generations are reserved in the engine's durable store before use, and a
 *   restarted devicelet reads its documents back and re-publishes nothing unchanged.
 * - Pod status comes from the device's acks and reports: never Running before the device says so.
 * - One-shot commands wait in a bounded per-device queue with a time to live, kept in the durable
 *   store so they survive a devicelet restart; expiry becomes a `CommandExpired` Event. The
 *   `devicelet.dev/restart-requested` annotation sends `restart-app`.
 * - `kubectl logs` and `exec` run as sessions with online devices that announce them, `kubectl top`
 *   reads the stats samples devices publish (docs/protocol.md §§ 3.9, 3.10; device-io.ts); an
 *   offline device is refused at once, its last log text served from a bounded cache.
 * - Two processes on the same state never reuse a generation (compare-and-swap reservations,
 *   floored by what devices report), and back off instead of taking one client id from each other.
 * - An engine serving one shard (`ProviderContext.owns`) subscribes to every device's `state` and
 *   to each owned device's own topics only, so the broker splits the traffic (subscriptions.ts).
 *
 * ```ts
 * const provider = createMqttProvider(
 *   { broker: { url: "mqtts://broker:8883", tls: { ca: "/etc/ca.pem" } }, devices: { allow: ["*"] } },
 *   { logger, store, recordEvent },
 * );
 * await provider.start(signal);           // connected, documents read back
 * await provider.listDevices();           // one DeviceInfo per born device
 * await provider.sendCommand("gw-1", { command: "reboot" }, { ttlSeconds: 60 });
 * const log = await provider.getContainerLogs(pod, "sensor", { tailLines: 10, signal });
 * provider.metrics().rejected.schema;     // counters, see MqttMetricsSnapshot
 * ```
 */
import { validateWithSchema } from "../../src/config/index.ts";
import type { ProviderContext } from "../../src/provider/types.ts";
import { MqttProvider } from "./provider.ts";
import { mqttConfigSchema, type MqttConfig, type MqttConfigInput } from "./schema.ts";

export { MqttProvider } from "./provider.ts";
export { RESTART_ANNOTATION, RESTART_TTL_ANNOTATION } from "./restart.ts";
export {
  allowListMatcher,
  MQTT_DEFAULT_SUPPORTS,
  mqttConfigSchema,
  type MqttConfig,
  type MqttConfigInput,
} from "./schema.ts";
export type { CommandRequest, CommandResult } from "./commands.ts";
export type { MqttMetricsSnapshot, RejectReason } from "./metrics.ts";
export type { Presence } from "./devices.ts";

/**
 * Builds an MqttProvider. `config` may be the `provider.config` that parseConfig already validated,
 * or any object the schema accepts: it is validated again (same messages, paths under
 * `/provider/config`) and defaulted on a copy. Call `start(signal)` before anything else.
 * @throws ConfigError when the config is invalid.
 */
export const createMqttProvider = (config: MqttConfigInput, context: ProviderContext): MqttProvider =>
  new MqttProvider(
    validateWithSchema(mqttConfigSchema, config, "mqtt provider config", "/provider/config") as MqttConfig,
    context,
  );

/** The shape a provider module exposes to the plugin loader: its type, schema and factory. */
export const mqttPlugin = {
  type: "mqtt",
  configSchema: mqttConfigSchema,
  create: createMqttProvider,
} as const;
