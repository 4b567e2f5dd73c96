/**
 * What becomes of a device whose Node someone else deleted (docs/protocol.md § 5,
 * "Decommissioning"). A kubelet registers its node again, and so does devicelet while the device
 * is online. A device that is not online (lost, offline, sleeping) is retired instead, when the
 * provider can retire devices: the provider forgets it everywhere, and the node controller forgets
 * its node, until a live birth of it brings it back as a new device.
 *
 *   const outcome = await afterNodeDeleted({ retirement, deviceId, device, node, logger });
 *   if (outcome === "retired") forgetNode(deviceId); else registerAgain(deviceId);
 */
import type { Logger } from "pino";
import type { DeviceInfo, DeviceRetirement } from "../provider/types.ts";

export interface NodeDeleted {
  /** The provider's decommissioning; undefined when it has none (the Node is registered again). */
  readonly retirement: DeviceRetirement | undefined;
  readonly deviceId: string;
  /** The device as the provider reports it now: its presence decides. */
  readonly device: DeviceInfo;
  readonly node: string;
  readonly logger: Logger;
}

/**
 * "retired" once the provider has forgotten the device; "register" when its Node is to be
 * registered again: the provider cannot retire devices, or the device is online, or it came back
 * while it was being retired (the provider then refuses, and nothing of it is lost).
 * @throws Error when retiring failed (the broker or the durable store did not take it). The
 *   caller tries again later; the provider's steps are idempotent. Registering the Node again
 *   instead would serve a device the provider may already have half forgotten.
 */
export async function afterNodeDeleted(o: NodeDeleted): Promise<"retired" | "register"> {
  const fields = { node: o.node, device: o.deviceId };
  if (!o.retirement || o.device.connected) {
    o.logger.warn(fields, "node deleted by someone else; registering it again");
    return "register";
  }
  let outcome: "retired" | "online";
  try {
    outcome = await o.retirement.retireDevice(o.deviceId);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new Error(`decommissioning device ${o.deviceId} (node ${o.node} deleted) failed: ${why}`, {
      cause: err,
    });
  }
  if (outcome === "online") {
    o.logger.warn(
      fields,
      "node deleted while its device was away, but it is online again; registering it again",
    );
    return "register";
  }
  o.logger.info(fields, "node deleted while its device was away: device decommissioned");
  return "retired";
}
