/**
 * What HubConnection knows of one device's twin, and how a newer read of the twin turns into the
 * messages an MQTT broker would have delivered: the texts of the twin documents devicelet reads
 * (docs/iothub.md, "Mapping onto IoT Hub"), the heartbeat with the LOCAL time its seq last moved
 * (a device's clock is never trusted), and whether the device counts as lost (its will stands in
 * for its state, as a broker publishes a will).
 *
 *   const next = nextView(previous, twin, now);           // pure: previous is not changed
 *   const messages = changedTexts(previous, next);       // state, reported, ack that changed
 *   const lost = isLost(next, now, marginMs);
 *   const patched = patchedView(previous, eventBody, now); // undefined: read the twin instead
 */
import { decodeTwinDocument, IOTHUB_MAPPING } from "../../src/protocol/iothub-twin.ts";
import type { ServiceTwin } from "./hub-service.ts";

export interface Heartbeat {
  readonly seq: number;
  readonly intervalSeconds: number;
  /** Local time (ms) the seq was first seen at this value. */
  readonly changedAt: number;
}

export interface TwinView {
  readonly etag: string;
  /** The twin's version: a read older than the view is ignored. */
  readonly version: number | undefined;
  /** The desired document's text (devicelet's own); undefined when absent. */
  readonly desired: string | undefined;
  /** Parts of the desired value in the twin: a shorter write sets the surplus to null. */
  readonly desiredParts: number;
  readonly state: string | undefined;
  readonly reported: string | undefined;
  readonly ack: string | undefined;
  readonly will: string | undefined;
  readonly heartbeat: Heartbeat | undefined;
  readonly connectionState: string | undefined;
  /**
   * Once the device is lost: the will as it stood then, delivered as its state until the state
   * changes. Kept, not read from `will` again: a new connection writes its own will before its
   * birth, and that will must not stand in for a state it does not belong to.
   */
  readonly lost: string | undefined;
}

export type ReportedKind = "state" | "reported" | "ack";

const record = (value: unknown): Record<string, unknown> =>
  typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};

function heartbeatOf(value: unknown, previous: Heartbeat | undefined, now: number): Heartbeat | undefined {
  const beat = record(value);
  const seq = beat.seq;
  const interval = beat.intervalSeconds;
  if (typeof seq !== "number" || typeof interval !== "number" || !(interval > 0)) return undefined;
  if (previous?.seq === seq && previous.intervalSeconds === interval) return previous;
  return { seq, intervalSeconds: interval, changedAt: now };
}

/** The view after reading `twin` at local time `now`, given what was known before. */
export function nextView(previous: TwinView | undefined, twin: ServiceTwin, now: number): TwinView {
  const desired = record(twin.properties.desired);
  const reported = record(twin.properties.reported);
  const keys = IOTHUB_MAPPING.reported;
  const desiredValue = record(desired[IOTHUB_MAPPING.desiredKey]);
  const state = decodeTwinDocument(reported[keys.state]);
  // A new state written since the last read is a sign of life as fresh as a heartbeat, and only a
  // connected device writes one: a heartbeat from before it (one the hub refused since) or a
  // `Disconnected` the coarse connection state still shows must not make its birth lost at once.
  const newState = previous !== undefined && previous.state !== state;
  const heartbeat = heartbeatOf(reported[keys.presence], previous?.heartbeat, now);
  return {
    etag: twin.etag,
    version: twin.version,
    desired: decodeTwinDocument(desired[IOTHUB_MAPPING.desiredKey]),
    desiredParts: typeof desiredValue.n === "number" ? desiredValue.n : 0,
    state,
    reported: decodeTwinDocument(reported[keys.reported]),
    ack: decodeTwinDocument(reported[keys.ack]),
    will: decodeTwinDocument(reported[keys.will]),
    heartbeat: newState && heartbeat ? { ...heartbeat, changedAt: now } : heartbeat,
    connectionState: newState ? "Connected" : twin.connectionState,
    lost: previous !== undefined && previous.state === state ? previous.lost : undefined,
  };
}

/**
 * The view after a twin change event (the body IoT Hub routes for `twinChangeEvents`:
 * `{ version, properties: { desired?, reported? } }`, each section the patch as written), when it
 * follows `previous` directly: its `version` is exactly one more, and every key devicelet reads
 * that it touches is whole (a document with its part count `n`, a heartbeat, or `null`). Otherwise
 * undefined: the twin must be read. The etag is unknown afterwards (`""`): a write reads first.
 */
export function patchedView(
  previous: TwinView | undefined,
  body: unknown,
  now: number,
): TwinView | undefined {
  const event = record(body);
  if (previous?.version === undefined || event.version !== previous.version + 1) return undefined;
  const sections = record(event.properties);
  const desired = record(sections.desired);
  const reported = record(sections.reported);
  const keys = IOTHUB_MAPPING.reported;
  const whole = (value: unknown) => value === null || decodeTwinDocument(value) !== undefined;
  const touched = (section: Record<string, unknown>, key: string) => Object.hasOwn(section, key);
  const documents: [Record<string, unknown>, string][] = [
    [desired, IOTHUB_MAPPING.desiredKey],
    [reported, keys.state],
    [reported, keys.reported],
    [reported, keys.ack],
    [reported, keys.will],
  ];
  if (documents.some(([section, key]) => touched(section, key) && !whole(section[key]))) return undefined;
  const text = (section: Record<string, unknown>, key: string, before: string | undefined) =>
    touched(section, key) ? decodeTwinDocument(section[key]) : before;
  const state = text(reported, keys.state, previous.state);
  const desiredValue = desired[IOTHUB_MAPPING.desiredKey];
  return {
    etag: "",
    version: event.version,
    desired: text(desired, IOTHUB_MAPPING.desiredKey, previous.desired),
    desiredParts: touched(desired, IOTHUB_MAPPING.desiredKey)
      ? Number(record(desiredValue).n ?? 0)
      : previous.desiredParts,
    state,
    reported: text(reported, keys.reported, previous.reported),
    ack: text(reported, keys.ack, previous.ack),
    will: text(reported, keys.will, previous.will),
    heartbeat: touched(reported, keys.presence)
      ? heartbeatOf(reported[keys.presence], previous.heartbeat, now)
      : previous.heartbeat,
    // Only a connected device writes its reported properties: a `Disconnected` the view still
    // holds (from a read before the device connected, or a connection event whose read came back
    // after this patch) is older than this change, and would make a fresh birth count as lost.
    connectionState: Object.keys(reported).length > 0 ? "Connected" : previous.connectionState,
    lost: previous.state === state ? previous.lost : undefined,
  };
}

/**
 * What a broker would deliver for the change from `previous` to `next`, in order: the state as it
 * stands (the will once lost), the report and the ack, each only if its text changed.
 */
export function changedTexts(
  previous: TwinView | undefined,
  next: TwinView,
): { kind: ReportedKind; text: string }[] {
  const out: { kind: ReportedKind; text: string }[] = [];
  const state = effectiveState(next);
  if (state !== undefined && state !== (previous && effectiveState(previous)))
    out.push({ kind: "state", text: state });
  for (const kind of ["reported", "ack"] as const) {
    const text = next[kind];
    if (text !== undefined && text !== previous?.[kind]) out.push({ kind, text });
  }
  return out;
}

/** Whether anything devicelet reads changed (not the heartbeat or the connection state). */
export function textsChanged(previous: TwinView | undefined, next: TwinView): boolean {
  return (
    previous === undefined ||
    previous.desired !== next.desired ||
    previous.state !== next.state ||
    previous.reported !== next.reported ||
    previous.ack !== next.ack ||
    previous.will !== next.will
  );
}

/** A presence message's fields that say which connection it belongs to. */
function presenceOf(text: string | undefined): { state: unknown; bootId: unknown; seq: unknown } | undefined {
  if (text === undefined) return undefined;
  try {
    const message = record(JSON.parse(text));
    return message.kind === "presence"
      ? { state: message.state, bootId: message.bootId, seq: message.seq }
      : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether the will may stand in for the state (docs/protocol.md § 5): it is of the same boot and
 * its seq is not above the birth's (it repeats its connection's birth seq, or keeps the first
 * one's). A will written by a newer connection whose birth has not landed yet is not the state's.
 */
function willMatches(will: string | undefined, state: string | undefined): boolean {
  const w = presenceOf(will);
  const s = presenceOf(state);
  if (w === undefined || s === undefined || w.bootId !== s.bootId) return false;
  return typeof w.seq === "number" && typeof s.seq === "number" && w.seq <= s.seq;
}

/**
 * Whether an `online` device is gone without saying so: the hub reports it `Disconnected`, or its
 * heartbeat seq has not moved for two intervals plus `marginMs`. Only a device whose will belongs
 * to its current birth can be lost (the will is what stands in for its state).
 */
export function isLost(view: TwinView, now: number, marginMs: number): boolean {
  if (presenceOf(view.state)?.state !== "online" || !willMatches(view.will, view.state)) return false;
  if (view.connectionState === "Disconnected") return true;
  const beat = view.heartbeat;
  return beat !== undefined && now - beat.changedAt > 2 * beat.intervalSeconds * 1000 + marginMs;
}

/** The view with the device taken as lost: its will, as it stands now, becomes its state. */
export function markLost(view: TwinView): TwinView {
  return { ...view, lost: view.will };
}

/** The state as a broker would hold it: the will once the device is lost. */
export function effectiveState(view: TwinView): string | undefined {
  return view.lost ?? view.state;
}

/** `epoch` and `generation` of a desired document's text; undefined when it is not one. */
export function documentVersion(text: string | undefined): { epoch: string; generation: number } | undefined {
  if (text === undefined || text === "") return undefined;
  try {
    const doc = record(JSON.parse(text));
    return typeof doc.epoch === "string" && typeof doc.generation === "number"
      ? { epoch: doc.epoch, generation: doc.generation }
      : undefined;
  } catch {
    return undefined;
  }
}

/** MQTT topic filter matching (3.1.1 §4.7): `+` one level, `#` the rest (including none). */
export function filterMatches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
