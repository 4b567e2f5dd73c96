/**
 * The `provider.config` section, as a JSON Schema declared `as const`: devicelet validates the
 * section with it (defaults filled in, unknown keys refused, every error listed) and
 * `defineProvider` derives the config type from it, so the two cannot drift apart.
 */
import type { FromSchema } from "devicelet/provider";

export const configSchema = {
  type: "object",
  additionalProperties: false,
  properties: {
    listen: {
      type: "object",
      description: "Where devices reach the provider.",
      default: {},
      additionalProperties: false,
      properties: {
        host: { type: "string", minLength: 1, default: "127.0.0.1" },
        port: { type: "integer", minimum: 0, maximum: 65535, default: 8480 },
      },
    },
    pollSeconds: {
      type: "number",
      description: "How often devices are told to poll.",
      exclusiveMinimum: 0,
      maximum: 3600,
      default: 2,
    },
    offlineAfterSeconds: {
      type: "number",
      description: "A device that has not polled for this long is offline; more than pollSeconds.",
      exclusiveMinimum: 0,
      default: 10,
    },
    devices: {
      type: "object",
      default: {},
      additionalProperties: false,
      properties: {
        allow: {
          type: "array",
          description: "Device ids that may poll; a trailing * matches any rest (`sensor-*`, `*`).",
          items: { type: "string", minLength: 1 },
          default: ["*"],
        },
      },
    },
  },
} as const;

/** `{ listen: { host: string; port: number }; pollSeconds: number; ... }`, defaults present. */
export type HttpProviderConfig = FromSchema<typeof configSchema>;

/** Whether `deviceId` matches one of the `devices.allow` patterns. */
export const isAllowed = (allow: readonly string[], deviceId: string): boolean =>
  allow.some((pattern) =>
    pattern.endsWith("*") ? deviceId.startsWith(pattern.slice(0, -1)) : deviceId === pattern,
  );
