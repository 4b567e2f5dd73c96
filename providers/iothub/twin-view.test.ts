/**
 * Twin change events applied to a device's view without reading the twin (patchedView): only a
 * patch that follows the view directly applies, and a device writing its reported properties is
 * connected, whatever `connectionState` the view held from before.
 */
import { describe, expect, it } from "vitest";
import { encodeTwinDocument, IOTHUB_MAPPING } from "../../src/protocol/iothub-twin.ts";
import { effectiveState, isLost, nextView, patchedView } from "./twin-view.ts";

const keys = IOTHUB_MAPPING.reported;
const presence = (state: string, seq: number) =>
  JSON.stringify({ protocol: 1, kind: "presence", deviceId: "d-1", state, bootId: "b-1", seq });

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
          [keys.will]: encodeTwinDocument(presence("lost", 2)),
          [keys.presence]: { seq: 1, intervalSeconds: 60 },
        },
      },
    };
    const next = patchedView(beforeConnect(now), birth, now);
    expect(next).toMatchObject({ version: 5, connectionState: "Connected", lost: false });
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
