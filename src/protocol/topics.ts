/**
 * MQTT topics of the device protocol. Device ids are restricted (see `DEVICE_ID`) so that an id can
 * never contain a topic separator or wildcard.
 */
export const TOPIC_ROOT = "devicelet/v1";

/** Device ids: 1–128 of lowercase letters, digits, `-`, `_` and `.`, starting alphanumeric. */
export const DEVICE_ID = /^[a-z0-9][a-z0-9._-]{0,127}$/;

export type DeviceTopic = "desired" | "state" | "reported" | "ack" | "evt";

export const topics = {
  desired: (device: string) => `${TOPIC_ROOT}/${device}/desired`,
  state: (device: string) => `${TOPIC_ROOT}/${device}/state`,
  reported: (device: string) => `${TOPIC_ROOT}/${device}/reported`,
  ack: (device: string) => `${TOPIC_ROOT}/${device}/ack`,
  evt: (device: string) => `${TOPIC_ROOT}/${device}/evt`,
  /** devicelet → device notices (QoS 1, not retained). */
  notice: (device: string) => `${TOPIC_ROOT}/${device}/notice`,
  command: (device: string, commandId: string) => `${TOPIC_ROOT}/${device}/cmd/${commandId}`,
  commands: (device: string) => `${TOPIC_ROOT}/${device}/cmd/+`,
  bridge: () => `${TOPIC_ROOT}/_bridge/state`,
  /** devicelet → device: one session's input (docs/protocol.md § 3.9). */
  ioIn: (device: string, streamId: string) => `${TOPIC_ROOT}/${device}/io/${streamId}`,
  /** What a device subscribes to for its sessions' input. */
  ioInAll: (device: string) => `${TOPIC_ROOT}/${device}/io/+`,
  /** device → devicelet: one session's output. */
  ioOut: (device: string, streamId: string) => `${TOPIC_ROOT}/${device}/io/${streamId}/out`,
  /** device → devicelet: CPU and memory samples (QoS 0). */
  stats: (device: string) => `${TOPIC_ROOT}/${device}/stats`,
  /** What devicelet subscribes to: everything devices publish. */
  fromDevices: () => [
    `${TOPIC_ROOT}/+/state`,
    `${TOPIC_ROOT}/+/reported`,
    `${TOPIC_ROOT}/+/ack`,
    `${TOPIC_ROOT}/+/evt`,
    `${TOPIC_ROOT}/+/io/+/out`,
    `${TOPIC_ROOT}/+/stats`,
  ],
  /**
   * What devicelet subscribes to for one device when it serves a shard of the fleet: what the
   * device publishes besides its `state`, which the shard reads for every device (its discovery).
   */
  fromDevice: (device: string) => [
    `${TOPIC_ROOT}/${device}/reported`,
    `${TOPIC_ROOT}/${device}/ack`,
    `${TOPIC_ROOT}/${device}/evt`,
    `${TOPIC_ROOT}/${device}/io/+/out`,
    `${TOPIC_ROOT}/${device}/stats`,
  ],
} as const;

/** Splits a topic from a device into its device id and kind; undefined for anything else. */
export function parseDeviceTopic(topic: string): { deviceId: string; kind: DeviceTopic } | undefined {
  const parts = topic.split("/");
  if (parts.length !== 4 || `${parts[0]}/${parts[1]}` !== TOPIC_ROOT) return undefined;
  const [, , deviceId, kind] = parts as [string, string, string, string];
  if (!DEVICE_ID.test(deviceId)) return undefined;
  if (kind !== "desired" && kind !== "state" && kind !== "reported" && kind !== "ack" && kind !== "evt")
    return undefined;
  return { deviceId, kind };
}
