/**
 * devicelet-provider-http-example: a devicelet provider for devices that poll it over HTTP, written
 * against `devicelet/provider` only, as a third-party package would be. devicelet loads it when a
 * configuration says `provider.type: devicelet-provider-http-example`, and takes the export named
 * `plugin` (the default export works too).
 *
 *   provider:
 *     type: devicelet-provider-http-example
 *     config: { listen: { port: 8480 }, devices: { allow: ["http-*"] } }
 *
 * `create` gets the section validated against `configSchema`, defaults filled in, and typed from
 * it: no config type is written by hand.
 */
import { defineProvider, invalidInput } from "devicelet/provider";
import { configSchema } from "./config.ts";
import { HttpProvider } from "./provider.ts";

export const plugin = defineProvider({
  // Must equal the package name: devicelet checks, so a configuration cannot load a look-alike.
  type: "devicelet-provider-http-example",
  configSchema,
  create: (config, context) => {
    // What a schema cannot say: one field compared with another.
    if (config.offlineAfterSeconds <= config.pollSeconds)
      throw invalidInput(
        `offlineAfterSeconds (${config.offlineAfterSeconds}) must exceed pollSeconds (${config.pollSeconds}): a device polling on time would be offline between polls`,
      );
    return new HttpProvider(config, context);
  },
});

export default plugin;
export { configSchema, type HttpProviderConfig } from "./config.ts";
export { HttpProvider } from "./provider.ts";
