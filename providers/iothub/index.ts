/**
 * The Azure IoT Hub provider: devices in an IoT hub, each running the devicelet agent on
 * `azure-iot-device` (`devicelet agent` with an `iothub` section), become nodes; their pods travel
 * as one desired document in the device twin, written only with the twin's etag; status, presence
 * and command results come back from reported properties, direct methods and (optionally) the
 * hub's Event Hubs-compatible endpoint. The same model and guarantees as the MQTT provider, whose
 * parts it runs (docs/iothub.md).
 *
 * ```ts
 * const provider = createIotHubProvider(
 *   { hub: { connectionStringFile: "/etc/devicelet/hub/connection-string" }, devices: { query: "tags.fleet = 'line-1'" } },
 *   { logger, store, recordEvent },
 * );
 * await provider.start(signal);       // first sweep of the selected twins done, documents read back
 * await provider.listDevices();       // one DeviceInfo per device whose twin holds an online birth
 * ```
 */
import { validateWithSchema } from "../../src/config/index.ts";
import type { ProviderContext } from "../../src/provider/types.ts";
import type { MqttProvider } from "../mqtt/provider.ts";
import { buildIotHubProvider } from "./provider.ts";
import { iothubConfigSchema, type IotHubConfig, type IotHubConfigInput } from "./schema.ts";

export { TWIN_DOCUMENT_SIZE } from "./provider.ts";
export { budgetRates, hubThrottles } from "./quotas.ts";
export { iothubConfigSchema, type IotHubConfig, type IotHubConfigInput } from "./schema.ts";

/**
 * Builds the provider. `config` may be the `provider.config` that parseConfig already validated, or
 * any object the schema accepts: it is validated again (same messages, paths under
 * `/provider/config`) and defaulted on a copy. Call `start(signal)` before anything else.
 * @throws ConfigError when the config is invalid.
 */
export const createIotHubProvider = (config: IotHubConfigInput, context: ProviderContext): MqttProvider =>
  buildIotHubProvider(
    validateWithSchema(
      iothubConfigSchema,
      config,
      "iothub provider config",
      "/provider/config",
    ) as IotHubConfig,
    context,
  );

/** The shape a provider module exposes to the plugin loader: its type, schema and factory. */
export const iothubPlugin = {
  type: "iothub",
  configSchema: iothubConfigSchema,
  create: createIotHubProvider,
} as const;
