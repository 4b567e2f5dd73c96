/**
 * The SecretRequiresTLS gate: whether a pod that carries Secret material (env or files from a
 * Secret) may go into a device's desired document. Both hops must be authenticated TLS:
 *
 * - devicelet → broker: an `mqtts://` or `wss://` URL with the broker's certificate verified
 *   (`broker.tls.rejectUnauthorized: false` counts as insecure: anyone on the path can read it);
 * - broker → device: devicelet cannot see how a device connected, so it trusts only what its own
 *   config says, `devices.secrets.allow`, which the operator fills with devices the broker makes
 *   connect over TLS with an identity tied to the device id (mutual TLS with the id as the
 *   certificate's CN, or credentials per device) and confines to their own subtree by ACL. Nothing
 *   a device says about itself (a `tls` field in a birth, say) counts.
 *
 * `allowSecretsWithoutTls` turns the gate off, for demos; the provider logs that at start.
 *
 *   const gate = new SecretGate({ insecurity: connectionInsecurity(config.broker), devices: config.devices, allowSecretsWithoutTls });
 *   gate.check("gw-1");   // undefined, or { reason: "SecretRequiresTLS", message }
 *   gate.startupNotes();  // what to log at start
 */
import type { MqttConfig } from "./schema.ts";
import { allowListMatcher } from "./schema.ts";

export const SECRET_REQUIRES_TLS = "SecretRequiresTLS";

/** Config key that lists the devices trusted with Secrets (named in hold-back messages). */
export const SECRETS_ALLOW_KEY = "provider.config.devices.secrets.allow";

export interface SecretGateOptions {
  /**
   * Why devicelet's own connection to the devices' transport cannot carry Secrets (e.g.
   * {@link connectionInsecurity} of the broker config), or undefined when it can.
   */
  readonly insecurity: string | undefined;
  readonly devices: Pick<MqttConfig["devices"], "secrets">;
  readonly allowSecretsWithoutTls: boolean;
}

/**
 * Why devicelet's own connection to the broker cannot carry Secrets, or undefined when it is TLS
 * with the broker's certificate verified.
 */
export function connectionInsecurity(broker: Pick<MqttConfig["broker"], "url" | "tls">): string | undefined {
  if (!/^(mqtts|wss):/.test(broker.url)) return "is not TLS (the broker URL is mqtt:// or ws://)";
  if (!broker.tls.rejectUnauthorized)
    return "does not verify the broker's certificate (broker.tls.rejectUnauthorized is false)";
  return undefined;
}

export class SecretGate {
  readonly #off: boolean;
  readonly #connection: string | undefined;
  readonly #trusted: (deviceId: string) => boolean;
  readonly #trustedCount: number;

  constructor(options: SecretGateOptions) {
    this.#off = options.allowSecretsWithoutTls;
    this.#connection = options.insecurity;
    this.#trusted = allowListMatcher(options.devices.secrets.allow);
    this.#trustedCount = options.devices.secrets.allow.length;
  }

  /** Whether Secret material may be sent to this device now; otherwise the reason and a message. */
  check(deviceId: string): { readonly reason: string; readonly message: string } | undefined {
    if (this.#off) return undefined;
    if (this.#connection !== undefined)
      return {
        reason: SECRET_REQUIRES_TLS,
        message: `the pod uses Secrets and devicelet's broker connection ${this.#connection}; it is not sent to the device`,
      };
    if (!this.#trusted(deviceId))
      return {
        reason: SECRET_REQUIRES_TLS,
        message: `the pod uses Secrets and device ${deviceId} is not trusted with them; list it in ${SECRETS_ALLOW_KEY} once the broker authenticates it over TLS (docs/security.md)`,
      };
    return undefined;
  }

  /** What the provider logs at start: the escape hatch as a warning, the gate's state as info. */
  startupNotes(): { readonly level: "warn" | "info"; readonly message: string }[] {
    if (this.#off)
      return [
        {
          level: "warn",
          message:
            "allowSecretsWithoutTls is on: Secret values go to every device over any broker connection, TLS or not; use it for demos only",
        },
      ];
    if (this.#connection !== undefined)
      return [
        {
          level: "info",
          message: `devicelet's broker connection ${this.#connection}: pods using Secrets are held back (SecretRequiresTLS)`,
        },
      ];
    if (this.#trustedCount === 0)
      return [
        {
          level: "info",
          message: `no device is trusted with Secrets (${SECRETS_ALLOW_KEY} is empty): pods using Secrets are held back (SecretRequiresTLS)`,
        },
      ];
    return [];
  }
}
