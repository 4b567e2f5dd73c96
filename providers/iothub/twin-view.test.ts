/**
 * Twin change events applied to a device's view without reading the twin (patchedView): only a
 * patch that follows the view directly applies, and a device writing its reported properties is
 * connected, whatever `connectionState` the view held from before.
 */
import { describe, expect, it } from "vitest";
import { encodeTwinDocument, IOTHUB_MAPPING } from "../../src/protocol/iothub-twin.ts";
import { changedTexts, effectiveState, isLost, markLost, nextView, patchedView } from "./twin-view.ts";

const keys = IOTHUB_MAPPING.reported;
const presence = (state: string, seq: number, bootId = "b-1") =>
  JSON.stringify({ protocol: 1, kind: "presence", deviceId: "d-1", state, bootId, seq });

/** A full read of the device's twin with these presence documents. */
const read = (
  version: number,
  connectionState: string,
  o: { state: string; will: string; heartbeat?: number },
) => ({
  deviceId: "d-1",
  etag: `e${version}`,
  version,
  connectionState,
  properties: {
    desired: {},
    reported: {
      [keys.state]: encodeTwinDocument(o.state),
      [keys.will]: encodeTwinDocument(o.will),
      [keys.presence]: { seq: o.heartbeat ?? 1, intervalSeconds: 60 },
    },
  },
});

/** The view of a registered device the hub reports Disconnected, before it ever connected. */
const beforeConnect = (now: number) =>
  nextView(
    undefined,
    {
      deviceId: "d-1",
      etag: "AAAA",
      version: 4,
      connectionState: "Disconnected",
      properties: { desired: {}, reported: {} },
    },
    now,
  );

describe("patchedView", () => {
  it("applies a birth that follows the view as connected, so the device is not lost", () => {
    const now = Date.now();
    const birth = {
      version: 5,
      properties: {
        reported: {
          [keys.state]: encodeTwinDocument(presence("online", 1)),
          [keys.will]: encodeTwinDocument(presence("lost", 1)),
          [keys.presence]: { seq: 1, intervalSeconds: 60 },
        },
      },
    };
    const next = patchedView(beforeConnect(now), birth, now);
    expect(next).toMatchObject({ version: 5, connectionState: "Connected", lost: undefined });
    expect(next && isLost(next, now, 30_000)).toBe(false);
    expect(next && effectiveState(next)).toBe(presence("online", 1));
  });

  it("keeps the connection state for a patch of desired properties only", () => {
    const now = Date.now();
    const next = patchedView(
      beforeConnect(now),
      { version: 5, properties: { desired: { [IOTHUB_MAPPING.desiredKey]: encodeTwinDocument("{}") } } },
      now,
    );
    expect(next).toMatchObject({ version: 5, connectionState: "Disconnected", desired: "{}" });
  });

  it("refuses a patch that skips a version, or a document not whole", () => {
    const now = Date.now();
    expect(
      patchedView(beforeConnect(now), { version: 6, properties: { reported: {} } }, now),
    ).toBeUndefined();
    const part = { version: 5, properties: { reported: { [keys.state]: { p0: "{" } } } };
    expect(patchedView(beforeConnect(now), part, now)).toBeUndefined();
  });
});

describe("a lost device's will", () => {
  it("stands in for the state only when it belongs to the birth: same boot, seq not above", () => {
    const now = Date.now();
    const lost = (state: string, will: string) =>
      isLost(nextView(undefined, read(1, "Disconnected", { state, will }), now), now, 30_000);
    expect(lost(presence("online", 5), presence("lost", 5))).toBe(true);
    // A device keeping its first connection's will (an earlier birth's seq).
    expect(lost(presence("online", 9), presence("lost", 5))).toBe(true);
    // A newer connection wrote its will; its birth has not landed: the old birth is not its own.
    expect(lost(presence("online", 5), presence("lost", 7))).toBe(false);
    expect(lost(presence("online", 5), presence("lost", 5, "b-2"))).toBe(false);
    expect(lost(presence("offline", 5), presence("lost", 5))).toBe(false);
  });

  it("is kept as delivered while a reconnect writes a new will, and the birth that follows is delivered", () => {
    const now = Date.now();
    const before = nextView(
      undefined,
      read(1, "Connected", { state: presence("online", 5), will: presence("lost", 5) }),
      now,
    );
    const gone = markLost(
      nextView(
        before,
        read(2, "Disconnected", { state: presence("online", 5), will: presence("lost", 5) }),
        now,
      ),
    );
    expect(effectiveState(gone)).toBe(presence("lost", 5));
    // The reconnect writes its will first (seq 7): nothing new to deliver, the old will stands.
    const reconnecting = nextView(
      gone,
      read(3, "Disconnected", { state: presence("online", 5), will: presence("lost", 7) }),
      now,
    );
    expect(effectiveState(reconnecting)).toBe(presence("lost", 5));
    expect(changedTexts(gone, reconnecting)).toEqual([]);
    // The hub still says Disconnected (it is coarse), yet the new will is not taken for the state.
    expect(isLost({ ...reconnecting, lost: undefined }, now, 30_000)).toBe(false);
    // The birth lands: delivered, and the device is not lost.
    const back = nextView(
      reconnecting,
      read(4, "Connected", { state: presence("online", 7), will: presence("lost", 7), heartbeat: 2 }),
      now,
    );
    expect(changedTexts(reconnecting, back)).toEqual([{ kind: "state", text: presence("online", 7) }]);
    expect(back.lost).toBeUndefined();
    expect(isLost(back, now, 30_000)).toBe(false);
  });
});

describe("a new birth in a read", () => {
  it("restarts the heartbeat's clock and counts as connected, so it is delivered, not taken for lost", () => {
    const start = Date.now();
    const before = nextView(
      undefined,
      read(1, "Connected", { state: presence("online", 5), will: presence("lost", 5), heartbeat: 3 }),
      start,
    );
    const gone = markLost(
      nextView(
        before,
        read(2, "Disconnected", { state: presence("online", 5), will: presence("lost", 5), heartbeat: 3 }),
        start,
      ),
    );
    // Minutes later the device is back: its birth landed, its heartbeat write was refused (the
    // old seq 3 stands) and the hub's connection state has not caught up.
    const later = start + 300_000;
    const back = nextView(
      gone,
      read(3, "Disconnected", { state: presence("online", 9), will: presence("lost", 9), heartbeat: 3 }),
      later,
    );
    expect(isLost(back, later, 30_000)).toBe(false);
    expect(changedTexts(gone, back)).toEqual([{ kind: "state", text: presence("online", 9) }]);
    // Nothing new for two intervals and the margin after the birth: lost then, not before.
    const same = read(4, "Connected", {
      state: presence("online", 9),
      will: presence("lost", 9),
      heartbeat: 3,
    });
    expect(isLost(nextView(back, same, later + 149_000), later + 149_000, 30_000)).toBe(false);
    expect(isLost(nextView(back, same, later + 151_000), later + 151_000, 30_000)).toBe(true);
  });
});
