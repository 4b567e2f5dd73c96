/**
 * What the engine puts between itself and a provider, so that the guarantees of the contract
 * (types.ts) hold whatever the controllers do:
 * - callbacks never re-enter the engine synchronously: every callback the engine registers
 *   (status, deletion, device changes) is queued as a microtask, so the provider's own code (a
 *   `createPod` that reports status before returning, a loop over devices) always finishes first.
 *   Order is kept: microtasks run first in, first out ({@link deferCallbacks});
 * - no pod call after `stop`: once the engine closes the view, new pod calls are refused (a
 *   Transient error: the reconcile that made it is ending anyway) and `close` resolves when the
 *   calls already made have settled, so `stop` comes after the last of them ({@link engineView}).
 *
 *   const view = engineView(plugin.create(config, context), logger);
 *   view.provider.notifyStatus((s) => pods.onStatus(s));   // runs after the provider's call returns
 *   await view.close(10_000); await provider.stop();
 *
 * Every other property reads through to the provider (methods bound to it, so classes with private
 * fields work), and the `has*` guards see the same capabilities.
 */
import type { Logger } from "pino";
import { transient } from "./errors.ts";
import type { DeviceInfo, DeviceWatcher, PodLifecycleProvider } from "./types.ts";

const callbackRegistrations = new Set<PropertyKey>(["notifyStatus", "notifyDeleted", "notifyDeviceSync"]);

export function deferCallbacks<P extends PodLifecycleProvider>(provider: P, logger: Logger): P {
  const defer =
    <A extends unknown[]>(callback: (...args: A) => void) =>
    (...args: A): void => {
      queueMicrotask(() => {
        try {
          callback(...args);
        } catch (err) {
          // An engine handler that throws is a bug of the engine's; the provider is not told.
          logger.error({ err }, "engine callback failed");
        }
      });
    };
  return new Proxy(provider, {
    get(target, key) {
      const value: unknown = Reflect.get(target, key, target);
      if (typeof value !== "function") return value;
      const method = value as (...args: unknown[]) => unknown;
      if (callbackRegistrations.has(key)) {
        return (callback: (arg: unknown) => void) => method.call(target, defer(callback));
      }
      if (key === "watchDevices") {
        return (watcher: DeviceWatcher) =>
          method.call(target, {
            changed: defer((device: DeviceInfo) => watcher.changed(device)),
            gone: defer((deviceId: string) => watcher.gone(deviceId)),
          });
      }
      return method.bind(target);
    },
  });
}

const podCalls = new Set<PropertyKey>(["createPod", "updatePod", "deletePod", "getPodStatus", "listPods"]);

export interface EngineView<P extends PodLifecycleProvider> {
  /** The provider as the controllers see it. */
  readonly provider: P;
  /**
   * Refuses pod calls from now on and resolves once those in flight have settled, or after
   * `timeoutMs` (a provider call that hangs must not keep devicelet from stopping).
   */
  close(timeoutMs: number): Promise<void>;
}

/** {@link deferCallbacks}, plus the gate that keeps pod calls from reaching a stopped provider. */
export function engineView<P extends PodLifecycleProvider>(provider: P, logger: Logger): EngineView<P> {
  const deferred = deferCallbacks(provider, logger);
  let closed = false;
  let inFlight = 0;
  let settled: (() => void) | undefined;
  const view = new Proxy(deferred, {
    get(target, key) {
      const value: unknown = Reflect.get(target, key, target);
      if (!podCalls.has(key) || typeof value !== "function") return value;
      const call = value as (...args: unknown[]) => Promise<unknown>;
      return async (...args: unknown[]) => {
        if (closed) throw transient(`devicelet is stopping: ${String(key)} not sent to the provider`);
        inFlight++;
        try {
          return await call(...args);
        } finally {
          inFlight--;
          if (inFlight === 0) settled?.();
        }
      };
    },
  });
  return {
    provider: view,
    close: async (timeoutMs) => {
      closed = true;
      if (inFlight === 0) return;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => (settled = resolve)),
        new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
      ]);
      clearTimeout(timer);
      if (inFlight > 0) logger.warn({ calls: inFlight }, "stopping the provider with calls still running");
    },
  };
}
