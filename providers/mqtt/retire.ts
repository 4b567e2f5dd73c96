/**
 * Decommissioning a device (docs/protocol.md § 5, "Decommissioning"): everything devicelet keeps
 * about it goes, in the broker and in the durable store, so its node is not registered again from
 * what is left behind — until the device is born again (a live birth puts it back in service).
 *
 * Refused while the device is online: a node deleted under a live device is registered again, as
 * a kubelet re-registers its node. In order:
 * 1. the registry forgets it, and drops its messages but a live birth; a birth of it waiting to be
 *    stored again is dropped;
 * 2. its desired state is forgotten (no document is published for it any more; callers waiting
 *    for a tombstone are released, and those pods are reported deleted);
 * 3. its retained `desired`, `state` and `reported` are cleared (zero-length retained publishes);
 * 4. its pending commands end as expired and its stored queue is emptied;
 * 5. its durable record (epoch, reserved generations, last birth) and its pods' workload hashes
 *    are deleted from the store, and what the other parts remember of it in memory is dropped.
 *
 *   const outcome = await retireDevice(deps, "gw-9");   // "retired" | "online"
 */
import type { Logger } from "pino";
import { topics } from "../../src/protocol/topics.ts";
import type { PodRef } from "../../src/provider/types.ts";
import type { Births } from "./births.ts";
import type { CommandQueue } from "./commands.ts";
import type { BrokerConnection } from "./connection.ts";
import type { DesiredStore } from "./desired.ts";
import type { DeviceRegistry } from "./devices.ts";
import type { GenerationAllocator } from "./generations.ts";

export interface RetireDeps {
  readonly registry: DeviceRegistry;
  /** Births waiting to be stored: the retired device's must never be written after this. */
  readonly births: Pick<Births, "forget">;
  readonly desired: Pick<DesiredStore, "forget">;
  readonly commands: Pick<CommandQueue, "forget">;
  readonly allocator: Pick<GenerationAllocator, "forget">;
  readonly connection: Pick<BrokerConnection, "publish">;
  /** Pods of the device that are gone with it (their statuses and restart requests are dropped). */
  readonly forgetPod: (ref: PodRef) => void;
  /** A tombstoned pod whose deletion now completes. */
  readonly deleted: (ref: PodRef) => void;
  /**
   * Drops what the provider's other parts keep of the device: in memory (observations, stats) and
   * in the store (its pods' workload hashes).
   */
  readonly forgetDevice: (deviceId: string) => Promise<void>;
  readonly logger: Logger;
}

/**
 * Retires `deviceId` unless it is online. Rejects when the broker or the store does not take the
 * clearing (the caller may retry: every step is idempotent).
 */
export async function retireDevice(d: RetireDeps, deviceId: string): Promise<"retired" | "online"> {
  if (d.registry.effectivePresence(deviceId) === "online") return "online";
  d.registry.retire(deviceId);
  d.births.forget(deviceId);
  const held = d.desired.forget(deviceId);
  for (const p of held?.pods.values() ?? []) d.forgetPod(p.ref);
  for (const t of held?.tombstones.values() ?? []) {
    d.forgetPod(t.ref);
    d.deleted(t.ref);
  }
  const empty = Buffer.alloc(0);
  const clear = { qos: 1, retain: true } as const;
  await Promise.all([
    d.connection.publish(topics.desired(deviceId), empty, clear),
    d.connection.publish(topics.state(deviceId), empty, clear),
    d.connection.publish(topics.reported(deviceId), empty, clear),
  ]);
  const commands = d.commands.forget(deviceId, "the device was decommissioned");
  await d.allocator.forget(deviceId);
  await d.forgetDevice(deviceId);
  d.logger.info(
    {
      device: deviceId,
      pods: held?.pods.size ?? 0,
      tombstones: held?.tombstones.size ?? 0,
      commands,
    },
    "device decommissioned: retained topics cleared, durable state dropped",
  );
  return "retired";
}
