/**
 * Restart requests by annotation: a kubectl-only way to send a command. Changing the value of
 * `devicelet.dev/restart-requested` on a pod asks its device to restart each of the pod's apps
 * (one `restart-app` command per app; the value travels as the command's argument, so a device
 * can de-duplicate). `devicelet.dev/restart-ttl-seconds` sets the commands' time to live, counted
 * from the request, whichever of the two annotations is set first: a TTL that changes while the
 * current request's commands have not reached the device gives them the new expiry (set together,
 * in one `kubectl annotate`, or one after the other, the outcome is the same).
 *
 * Only a change counts: the first time this process meets a pod (created, or adopted after a
 * restart) the value is only recorded — unless an earlier process stored the value it saw with
 * the pod's workload hash (workload-hashes.ts, `recall`): then a value changed while devicelet was
 * down is a request too. So a devicelet restart never restarts apps by itself.
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
  readonly #commands: Pick<CommandQueue, "send" | "retime">;
  readonly #log: Logger;
  readonly #recordEvent: (event: ProviderEvent) => void;
  readonly #defaultTtlSeconds: number;
  /** Annotation value last seen per pod uid (undefined: seen without one). */
  readonly #tokens = new Map<string, string | undefined>();
  /** Time to live last applied to the pod's current request, per pod uid. */
  readonly #ttls = new Map<string, number>();

  constructor(options: {
    commands: Pick<CommandQueue, "send" | "retime">;
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
    const ttl = Number.parseInt(annotations[RESTART_TTL_ANNOTATION] ?? "", 10);
    const ttlSeconds =
      Number.isSafeInteger(ttl) && ttl > 0 ? Math.min(ttl, MAX_TTL_SECONDS) : this.#defaultTtlSeconds;
    if (!known || token === undefined || token === "") return;
    if (token === previous) {
      // The same request with another TTL (set after it): its commands not yet received get it.
      const before = this.#ttls.get(uid);
      if (before === undefined || before === ttlSeconds) return;
      this.#ttls.set(uid, ttlSeconds);
      const retimed = this.#commands.retime(
        workload.deviceId,
        (m) => m.command === "restart-app" && m.podUid === uid && m.args?.[0] === token,
        ttlSeconds,
      );
      this.#log.info({ pod: `${namespace}/${name}`, token, ttlSeconds, retimed }, "restart TTL changed");
      return;
    }
    this.#ttls.set(uid, ttlSeconds);
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

  /** The value last seen for the pod (`token` undefined: seen without one); undefined when never seen. */
  seen(uid: string): { readonly token: string | undefined } | undefined {
    return this.#tokens.has(uid) ? { token: this.#tokens.get(uid) } : undefined;
  }

  /** The value an earlier process saw for the pod: a different one given next is a request. */
  recall(uid: string, token: string | undefined): void {
    if (!this.#tokens.has(uid)) this.#tokens.set(uid, token);
  }

  forget(uid: string): void {
    this.#tokens.delete(uid);
    this.#ttls.delete(uid);
  }
}
