/**
 * What the engine asked of a provider, and what the provider answered about its pods, seen from
 * between the two: the kit wraps the provider `target.create` returns before the engine gets it.
 * Provider-neutral evidence for "nothing was applied again" and "that pod never ran".
 *
 *   const recorder = new CallRecorder();
 *   createProvider: (ctx) => recorder.wrap(target.create(ctx)),
 *   recorder.writes.filter((w) => w.uid === uid);   // every createPod/updatePod for that pod
 *   recorder.everRunning(uid);                      // did the provider ever report it running?
 *
 * Every other property reads through (methods bound to the provider, so private fields work), so
 * the engine's `has*` guards see exactly the provider's capabilities.
 */
import type { PodLifecycleProvider, Workload, WorkloadStatus } from "../provider/types.ts";

export interface RecordedWrite {
  readonly method: "createPod" | "updatePod";
  readonly uid: string;
  readonly name: string;
  readonly hash: string;
}

export class CallRecorder {
  readonly writes: RecordedWrite[] = [];
  readonly deletes: string[] = [];
  readonly #running = new Set<string>();

  /** The hash of the last workload the engine gave for pod `uid`, if it gave any. */
  lastHash(uid: string): string | undefined {
    return this.writes.filter((w) => w.uid === uid).at(-1)?.hash;
  }

  /** True when a status the provider gave for `uid` (pushed or polled) said it or an app of it ran. */
  everRunning(uid: string): boolean {
    return this.#running.has(uid);
  }

  #observe(status: WorkloadStatus | undefined): void {
    if (!status) return;
    if (status.phase === "Running" || status.apps.some((a) => a.state.kind === "running"))
      this.#running.add(status.pod.uid);
  }

  wrap<P extends PodLifecycleProvider>(provider: P): P {
    const record = (method: RecordedWrite["method"], w: Workload) =>
      this.writes.push({ method, uid: w.pod.uid, name: w.pod.name, hash: w.hash });
    return new Proxy(provider, {
      get: (target, key) => {
        const value: unknown = Reflect.get(target, key, target);
        if (typeof value !== "function") return value;
        const method = value as (...args: unknown[]) => unknown;
        switch (key) {
          case "createPod":
          case "updatePod":
            return (w: Workload) => {
              record(key, w);
              return method.call(target, w);
            };
          case "deletePod":
            return (pod: { uid: string }, options: unknown) => {
              this.deletes.push(pod.uid);
              return method.call(target, pod, options);
            };
          case "getPodStatus":
            return async (pod: unknown) => {
              const status = (await method.call(target, pod)) as WorkloadStatus | undefined;
              this.#observe(status);
              return status;
            };
          case "notifyStatus":
            return (callback: (s: WorkloadStatus) => void) =>
              method.call(target, (s: WorkloadStatus) => {
                this.#observe(s);
                callback(s);
              });
          default:
            return method.bind(target);
        }
      },
    });
  }
}
