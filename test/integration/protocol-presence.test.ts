/**
 * Presence rules of docs/protocol.md § 5 with the real CLI, a real Mosquitto and devices that are
 * plain MQTT.js clients, as firmware written from the text alone would be:
 * - a device whose MQTT library fixes the last will at client creation (MQTT.js does) keeps its
 *   first connection's will, seq and all, across a reconnect; when it then drops, it is shown lost;
 * - a will of an earlier boot is still ignored;
 * - a node born from a retained birth becomes lost when the device is never heard from live
 *   ("Silence"): devicelet restarted while the device was gone without a will.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PresenceMessage, ReportedDocument } from "../../src/protocol/types.ts";
import { emptyReport, gatewayBirth } from "../support/device-messages.ts";
import { eventually } from "../support/eventually.ts";
import { getJson } from "../support/kubectl.ts";
import { deviceConnectedOf, type EventJson } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";

const id = uniqueName("prpr");
const SILENT_AFTER_SECONDS = 8;
const scene = mqttScene({
  id,
  devices: [],
  provider: { devices: { allow: [`${id}-*`], silentAfterSeconds: SILENT_AFTER_SECONDS } },
});

beforeAll(() => scene.start());
afterAll(() => scene.stop());

const topic = (deviceId: string, sub: string) => `devicelet/v1/${deviceId}/${sub}`;

const presence = (
  deviceId: string,
  state: PresenceMessage["state"],
  bootId: string,
  seq: number,
): PresenceMessage => ({
  protocol: 1,
  kind: "presence",
  deviceId,
  state,
  bootId,
  seq,
  sentAt: new Date().toISOString(),
  ...(state === "online" ? { device: gatewayBirth() } : {}),
});

const reported = (deviceId: string, bootId: string, seq: number): ReportedDocument =>
  emptyReport({ deviceId, bootId, seq });

/**
 * A device as MQTT.js makes it easy to write: the will is given once, at client creation, with
 * the seq of the first birth; MQTT.js reconnects by itself and re-sends that same will. On every
 * connection it publishes a birth and a report with fresh seqs, and it re-publishes its report
 * every second while connected (the protocol asks for at least every 10 minutes).
 */
async function libraryDevice(deviceId: string, bootId: string) {
  let seq = 0;
  const client = await mqtt.connectAsync(scene.broker.url, {
    clientId: deviceId,
    clean: true,
    reconnectPeriod: 200,
    will: {
      topic: topic(deviceId, "state"),
      payload: Buffer.from(JSON.stringify(presence(deviceId, "lost", bootId, 1))),
      qos: 1,
      retain: true,
    },
  });
  const report = () => {
    if (!client.connected) return;
    const doc = reported(deviceId, bootId, ++seq);
    client.publish(topic(deviceId, "reported"), JSON.stringify(doc), { qos: 1, retain: true });
  };
  const announce = () => {
    const birth = presence(deviceId, "online", bootId, ++seq);
    client.publish(topic(deviceId, "state"), JSON.stringify(birth), { qos: 1, retain: true });
    report();
  };
  announce();
  client.on("connect", announce); // every automatic reconnect
  const refresh = setInterval(report, 1_000);
  return {
    client,
    /** Closes the TCP connection without DISCONNECT, so the broker publishes the will. */
    drop: (reconnect: boolean) => {
      if (!reconnect) {
        client.options.reconnectPeriod = 0;
        clearInterval(refresh);
      }
      client.stream.destroy();
    },
    close: async () => {
      clearInterval(refresh);
      await client.endAsync(true);
    },
  };
}

const logs = (deviceId: string, msg: string) =>
  scene.devicelet.logLines().filter((l) => l.msg === msg && l.device === deviceId);

describe("protocol: presence", () => {
  it("shows lost a device whose library kept its first will across a reconnect, then dropped", async () => {
    const deviceId = `${id}-lib`;
    const device = await libraryDevice(deviceId, "boot-a");
    try {
      await eventually(async () => expect(await deviceConnectedOf(deviceId)).toBe("True"));
      // A network blip: the broker publishes the will (seq 1), MQTT.js reconnects and re-births.
      device.drop(true);
      await eventually(() => {
        const births = logs(deviceId, "device presence").filter((l) => l.state === "online");
        expect(births.length).toBeGreaterThanOrEqual(2);
      });
      await eventually(async () => expect(await deviceConnectedOf(deviceId)).toBe("True"));
      // Now it drops for good; its will still carries seq 1, below the current birth's.
      device.drop(false);
      await eventually(
        () => {
          const lost = logs(deviceId, "device presence").filter((l) => l.state === "lost");
          expect(lost.map((l) => l.seq)).toEqual([1, 1]);
        },
        { timeoutMs: 30_000 },
      );
      await eventually(async () => expect(await deviceConnectedOf(deviceId)).toBe("False"));
      // It was the will, not silence, that made it lost.
      expect(logs(deviceId, "device silent: marking it lost")).toEqual([]);
      expect(logs(deviceId, "ignored presence")).toEqual([]);
    } finally {
      await device.close();
    }

    // Rebooted (a new boot id); a late will of the old boot changes nothing.
    const again = await libraryDevice(deviceId, "boot-b");
    try {
      await eventually(async () => expect(await deviceConnectedOf(deviceId)).toBe("True"));
      const lateWill = presence(deviceId, "lost", "boot-a", 1_000);
      await again.client.publishAsync(topic(deviceId, "state"), JSON.stringify(lateWill), { qos: 1 });
      await eventually(() =>
        expect(logs(deviceId, "ignored presence").map((l) => l.verdict)).toEqual(["stale-will"]),
      );
      expect(await deviceConnectedOf(deviceId)).toBe("True");
    } finally {
      await again.close();
    }
  });

  it("makes a node born from a retained birth lost when the device is never heard from", async () => {
    const deviceId = `${id}-gone`;
    // devicelet is down while the device is born and leaves without a will (a clean DISCONNECT
    // stands in for a broker that lost the will with its session state).
    await scene.devicelet.kill();
    const client = await mqtt.connectAsync(scene.broker.url, { clientId: deviceId, clean: true });
    await client.publishAsync(
      topic(deviceId, "state"),
      JSON.stringify(presence(deviceId, "online", "g1", 1)),
      {
        qos: 1,
        retain: true,
      },
    );
    await client.publishAsync(topic(deviceId, "reported"), JSON.stringify(reported(deviceId, "g1", 2)), {
      qos: 1,
      retain: true,
    });
    await client.endAsync();
    await scene.devicelet.restart();
    // Online from that birth (queued in devicelet's persistent session, or retained)...
    await eventually(() =>
      expect(logs(deviceId, "device presence").some((l) => l.state === "online")).toBe(true),
    );
    // ...and lost once nothing live came for silentAfterSeconds.
    await eventually(
      async () => {
        expect(logs(deviceId, "device silent: marking it lost")).toHaveLength(1);
        expect(await deviceConnectedOf(deviceId)).toBe("False");
      },
      { timeoutMs: 60_000 },
    );
    await eventually(async () => {
      const events = await getJson<{ items: EventJson[] }>([
        "events",
        "-A",
        "--field-selector",
        `involvedObject.kind=Node,involvedObject.name=${deviceId},reason=DeviceSilent`,
      ]);
      expect(events.items).not.toHaveLength(0);
    });

    // The device speaks again (same boot, a later seq): it is online again.
    const back = await mqtt.connectAsync(scene.broker.url, { clientId: deviceId, clean: true });
    try {
      await back.publishAsync(topic(deviceId, "reported"), JSON.stringify(reported(deviceId, "g1", 3)), {
        qos: 1,
        retain: true,
      });
      await eventually(async () => expect(await deviceConnectedOf(deviceId)).toBe("True"));
    } finally {
      await back.endAsync();
    }
  });
});
