/**
 * The Azure IoT Hub provider: the MQTT provider's parts (generations reserved before use, one
 * desired document per device, staged status never Running before the device says so, tombstones
 * kept until the device confirms, commands with a time to live in a durable queue) run over
 * {@link HubConnection}, which presents the hub's twins, direct methods and device-to-cloud events
 * as that transport (docs/iothub.md "Mapping onto IoT Hub", "The provider").
 *
 * What differs from MQTT is decided here:
 * - a desired document counts against the twin's 32 KB desired section as the twin stores it
 *   (its compact JSON text cut into parts, {@link encodeTwinDocument}), and a refusal names that
 *   limit; with `desired.blobs`, large files not from Secrets go by reference (mqtt/blobs.ts), so
 *   a pod with a 40 KB ConfigMap file still fits;
 * - the hub's service API is HTTPS with the hub's certificate verified, so it may carry Secrets
 *   (the devices' own hop is TLS with a per-device identity by IoT Hub's design; which devices are
 *   trusted with Secrets is still `devices.secrets.allow`);
 * - devicelet's operations are held to its share of the hub's throttles (quotas.ts), and the
 *   Event Hubs-compatible endpoint, when configured, brings command results, device events and
 *   twin-change notices (event-feed.ts); without it, status comes from polling alone;
 * - logs and exec sessions are not carried (devices announce `logs: false, exec: false`);
 * - a pod's create or delete waits for its twin write, which waits for the twin-update budget;
 *   the engine may have {@link CONCURRENT_PODS} of them under way, so a burst of pods for one
 *   device waits together and goes out as one document instead of one document each.
 */
import { readFileSync } from "node:fs";
import { validateWithSchema } from "../../src/config/index.ts";
import { encodeTwinDocument, IOTHUB_MAPPING } from "../../src/protocol/iothub-twin.ts";
import type { ProviderContext } from "../../src/provider/types.ts";
import type { DocumentSize } from "../mqtt/desired-types.ts";
import { MqttProvider } from "../mqtt/provider.ts";
import { mqttConfigSchema, type MqttConfig } from "../mqtt/schema.ts";
import { EventHubsFeed } from "./event-feed.ts";
import { HubConnection } from "./hub-connection.ts";
import { HttpsHubService } from "./hub-service.ts";
import { budgetRates } from "./quotas.ts";
import { TWIN_DESIRED_LIMIT_BYTES, type IotHubConfig } from "./schema.ts";

/**
 * Pods with a create, update or delete under way at once (the engine's default is 16). At 16, the
 * twin-update budget (20/s for one S1 unit) bounded a burst to 20 pods a second, each in its own
 * document: rarely were two of one device's pods waiting together. Waiting costs a promise each.
 */
export const CONCURRENT_PODS = 1024;

/** A document as the twin's desired section holds it: `{"devicelet":{"n":…,"p0":"…",…}}`. */
export const TWIN_DOCUMENT_SIZE: DocumentSize = {
  measure: (payload) =>
    Buffer.byteLength(
      JSON.stringify({
        [IOTHUB_MAPPING.desiredKey]: encodeTwinDocument(Buffer.from(payload).toString("utf8")),
      }),
    ),
  describe: (max) =>
    max >= TWIN_DESIRED_LIMIT_BYTES
      ? `IoT Hub's ${TWIN_DESIRED_LIMIT_BYTES}-byte limit on a twin's desired properties`
      : `the ${max} bytes of the twin's desired properties (${TWIN_DESIRED_LIMIT_BYTES} at most) devicelet may use (desired.maxDocumentBytes)`,
};

/** The MQTT parts' settings from the IoT Hub config (their broker and sessions go unused here). */
function partsConfig(config: IotHubConfig, hostName: string): MqttConfig {
  const unused = validateWithSchema(
    mqttConfigSchema,
    { broker: { url: `mqtts://${hostName}` }, devices: { allow: ["*"] } },
    "iothub provider config",
  ) as MqttConfig;
  const { query: _query, ids: _ids, ...devices } = config.devices;
  return {
    ...unused,
    // No re-reads (reread.ts): they make up for a broker's queue overflowing, and a hub has none;
    // its twin sweeps read every device's reported properties again anyway.
    devices: { ...devices, rereadAfterSeconds: 0 },
    desired: config.desired,
    commands: config.commands,
    health: config.health,
    podEvents: config.podEvents,
    metricsLogIntervalSeconds: config.metricsLogIntervalSeconds,
    allowSecretsWithoutTls: config.allowSecretsWithoutTls,
    ...(config.supports ? { supports: config.supports } : {}),
  };
}

const secretText = (inline: string | undefined, file: string | undefined): string =>
  (inline ?? readFileSync(file ?? "", "utf8")).trim();

/** The provider over a hub: an MqttProvider named `iothub` on a HubConnection. */
export function buildIotHubProvider(config: IotHubConfig, context: ProviderContext): MqttProvider {
  const logger = context.logger.child({ provider: "iothub" });
  const service = new HttpsHubService({
    connectionString: secretText(config.hub.connectionString, config.hub.connectionStringFile),
    ...(config.hub.endpoint ? { endpoint: config.hub.endpoint } : {}),
    ...(config.hub.caFile ? { ca: readFileSync(config.hub.caFile, "utf8") } : {}),
    rates: budgetRates({ tier: config.hub.tier, units: config.hub.units, overrides: config.hub.budget }),
    logger,
  });
  const events = config.events
    ? new EventHubsFeed({
        endpoint: {
          connectionString: secretText(config.events.connectionString, config.events.connectionStringFile),
        },
        consumerGroup: config.events.consumerGroup,
        ...(config.events.transport ? { transport: config.events.transport } : {}),
        ...(config.events.customEndpointAddress
          ? { customEndpointAddress: config.events.customEndpointAddress }
          : {}),
        ...(config.events.caFile ? { ca: readFileSync(config.events.caFile, "utf8") } : {}),
        logger,
      })
    : undefined;
  const connection = new HubConnection({
    service,
    selection: {
      ...(config.devices.query ? { query: config.devices.query } : {}),
      ...(config.devices.ids ? { ids: config.devices.ids } : {}),
    },
    sweepIntervalMs: config.hub.sweepIntervalSeconds * 1000,
    watchForMs: config.hub.watchSeconds * 1000,
    methodResponseTimeoutSeconds: config.hub.methodResponseTimeoutSeconds,
    presenceMarginMs: config.hub.presenceMarginSeconds * 1000,
    graceMs: config.health.disconnectedGraceSeconds * 1000,
    ...(events ? { events } : {}),
    logger,
  });
  return new MqttProvider(partsConfig(config, service.hostName), context, {
    name: "iothub",
    connection,
    insecurity: service.secure ? undefined : "does not verify the hub's certificate",
    documentSize: TWIN_DOCUMENT_SIZE,
    concurrentPods: CONCURRENT_PODS,
  });
}
