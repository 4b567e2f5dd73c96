/**
 * Restart requests by annotation: a kubectl-only way to send a command. Changing the value of
 * `devicelet.dev/restart-requested` on a pod asks its device to restart each of the pod's apps
 * (one `restart-app` command per app; the value travels as the command's argument, so a device
 * can de-duplicate). `devicelet.dev/restart-ttl-seconds` sets the commands' time to live.
 *
 * Only a change this process sees counts: the first time it meets a pod (created, or adopted
 * after a restart, when the engine calls updatePod once) the value is only recorded. So a
 * devicelet restart never restarts apps — and a request made while devicelet was down is not
 * carried out (there is nowhere durable to remember which values were acted on).
 *
 *   kubectl annotate pod sensor devicelet.dev/restart-requested="$(date +%s)" --overwrite
 */
import type { Logger } from "pino";
import type { ProviderEvent, Workload } from "../../src/provider/types.ts";
import type { CommandQueue } from "./commands.ts";

export const RESTART_ANNOTATION = "devicelet.dev/restart-requested";
export const RESTART_TTL_ANNOTATION = "devicelet.dev/restart-ttl-seconds";

const MAX_TTL_SECONDS = 48 * 3600;

export class RestartRequests {
  readonly #commands: Pick<CommandQueue, "send">;
  readonly #log: Logger;
  readonly #recordEvent: (event: ProviderEvent) => void;
  readonly #defaultTtlSeconds: number;
  /** Annotation value last seen per pod uid (undefined: seen without one). */
  readonly #tokens = new Map<string, string | undefined>();

  constructor(options: {
    commands: Pick<CommandQueue, "send">;
    logger: Logger;
    recordEvent: (event: ProviderEvent) => void;
    defaultTtlSeconds: number;
  }) {
    this.#commands = options.commands;
    this.#log = options.logger;
    this.#recordEvent = options.recordEvent;
    this.#defaultTtlSeconds = options.defaultTtlSeconds;
  }

  /** Looks at a workload given to createPod/updatePod; sends the commands when the value changed. */
  observe(workload: Workload): void {
    const { uid, namespace, name, annotations } = workload.pod;
    const token = annotations[RESTART_ANNOTATION];
    const known = this.#tokens.has(uid);
    const previous = this.#tokens.get(uid);
    this.#tokens.set(uid, token);
    if (!known || token === undefined || token === "" || token === previous) return;
    const ttl = Number.parseInt(annotations[RESTART_TTL_ANNOTATION] ?? "", 10);
    const ttlSeconds =
      Number.isSafeInteger(ttl) && ttl > 0 ? Math.min(ttl, MAX_TTL_SECONDS) : this.#defaultTtlSeconds;
    const ref = { namespace, name, uid };
    const pod = `${namespace}/${name}`;
    this.#log.info({ pod, token, ttlSeconds }, "restart requested by annotation");
    for (const { name: app } of workload.apps) {
      this.#commands
        .send(
          workload.deviceId,
          { command: "restart-app", podUid: uid, app, args: [token] },
          { ttlSeconds, pod: ref },
        )
        .then(
          (result) => this.#log.info({ pod, app, stage: result.stage }, "restart command finished"),
          (err: unknown) => {
            this.#log.warn({ err, pod, app }, "restart command refused");
            this.#recordEvent({
              involved: { kind: "Pod", pod: ref },
              type: "Warning",
              reason: "CommandRefused",
              message: `restart of app ${app}: ${(err as Error).message}`,
            });
          },
        );
    }
  }

  forget(uid: string): void {
    this.#tokens.delete(uid);
  }
}
