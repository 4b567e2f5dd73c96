/**
 * What the engine puts between itself and a provider so that callbacks never re-enter the engine
 * synchronously: every callback the engine registers (status, deletion, device changes) is queued
 * as a microtask, so the provider's own code (a `createPod` that reports status before returning,
 * a loop over devices) always finishes first. Order is kept: microtasks run first in, first out.
 *
 *   const provider = deferCallbacks(plugin.create(config, context), logger);
 *   provider.notifyStatus((s) => pods.onStatus(s));   // runs after the provider's call returns
 *
 * Every other property reads through to the provider (methods bound to it, so classes with private
 * fields work), and the `has*` guards see the same capabilities.
 */
import type { Logger } from "pino";
import type { DeviceInfo, DeviceWatcher, PodLifecycleProvider } from "./types.ts";

const callbackRegistrations = new Set<PropertyKey>(["notifyStatus", "notifyDeleted"]);

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
