/**
 * What `kubectl logs`, `exec` and `top` need from the reference agent (docs/protocol.md § 3.9,
 * § 3.10): `devicelet agent` as its own process against a real Mosquitto (test/support/agent.ts);
 * the test plays devicelet, opening sessions on `{id}/io/{streamId}` and reading
 * `{id}/io/{streamId}/out` and `{id}/stats`.
 */
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeFromDevice, encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type {
  IoInMessage,
  IoOpenMessage,
  IoOutMessage,
  PresenceMessage,
  StatsMessage,
} from "../../src/protocol/types.ts";
import { desiredDocument, desiredPod } from "../../src/device/fixtures.ts";
import { alive, startAgentRig, type AgentRig } from "../support/agent.ts";
import { eventually } from "../support/eventually.ts";

const ID = `agent-io-${process.pid}`;
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-agent-io-"));
const POD = "io-pod";
/** Writes a numbered line every 100 ms, and burns some CPU so that its counter shows it. */
const CHATTY = `let i = 0; setInterval(() => { const end = Date.now() + 20; while (Date.now() < end); console.log("line " + i++); }, 100)`;

let rig: AgentRig;
const out = new Map<string, IoOutMessage[]>();
const stats: StatsMessage[] = [];

beforeAll(async () => {
  rig = await startAgentRig({ id: ID, dir, config: { statsIntervalSeconds: 5 } });
  rig.devicelet.on("message", (topic, payload) => {
    const decoded = decodeFromDevice(topic, payload);
    if (!decoded.ok) return;
    const { message } = decoded.value;
    if (message.kind === "io-data" || message.kind === "io-end") {
      out.set(message.streamId, [...(out.get(message.streamId) ?? []), message]);
    } else if (message.kind === "stats") stats.push(message);
  });
  await rig.startAgent();
  await rig.publishDesired(
    desiredDocument({
      deviceId: ID,
      generation: 1,
      pods: [
        desiredPod({
          uid: POD,
          terminationGracePeriodSeconds: 2,
          apps: [{ name: "main", command: [process.execPath, "-e", CHATTY] }],
        }),
      ],
    }),
  );
  await eventually(() => expect(rig.seen.reported?.pods[0]?.apps[0]?.status.state).toBe("running"));
}, 60_000);

afterAll(() => rig.close());

type Without<T> = T extends unknown ? Omit<T, "protocol" | "deviceId"> : never;
const send = (message: Without<IoInMessage>) =>
  rig.devicelet.publishAsync(
    topics.ioIn(ID, message.streamId),
    encodeMessage({ protocol: 1, deviceId: ID, ...message }),
    { qos: 1 },
  );
const openSession = (streamId: string, body: Partial<IoOpenMessage> & Pick<IoOpenMessage, "type">) =>
  send({
    kind: "io-open",
    streamId,
    podUid: POD,
    app: "main",
    maxChunkBytes: 4096,
    idleSeconds: 30,
    ...body,
  });
const ended = async (streamId: string) => {
  await eventually(() => expect(out.get(streamId)?.some((m) => m.kind === "io-end")).toBe(true));
  const messages = out.get(streamId) ?? [];
  // In seq order, nothing after the end.
  expect(messages.map((m) => m.seq)).toEqual(messages.map((_, i) => i));
  expect(messages.at(-1)?.kind).toBe("io-end");
  return messages.at(-1) as Extract<IoOutMessage, { kind: "io-end" }>;
};
const text = (streamId: string, stream?: string) =>
  Buffer.concat(
    (out.get(streamId) ?? []).flatMap((m) =>
      m.kind === "io-data" && (stream === undefined || m.stream === stream)
        ? [Buffer.from(m.data, "base64")]
        : [],
    ),
  ).toString();

describe("the agent serves kubectl logs, exec and top", () => {
  it("announces logs, exec and stats, and no tty", () => {
    const birth = rig.seen.state.findLast((s: PresenceMessage) => s.state === "online");
    expect(birth?.device?.capabilities).toMatchObject({
      logs: true,
      exec: true,
      tty: false,
      stats: true,
      statsIntervalSeconds: 5,
    });
  });

  it("sends the last lines of an app's log with timestamps", async () => {
    // Until the app has written three lines (one every 100 ms); a new stream each time, as devicelet does.
    let attempt = 0;
    await eventually(async () => {
      const id = `tail-${++attempt}`;
      await openSession(id, { type: "logs", logs: { tailLines: 3, timestamps: true } });
      expect(await ended(id)).not.toHaveProperty("error");
      expect(text(id)).toMatch(/^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z line \d+\n){3}$/);
    });
  });

  it("follows the log until cancelled", async () => {
    await openSession("follow", { type: "logs", logs: { tailLines: 0, follow: true } });
    await eventually(() => expect(text("follow")).toMatch(/^line (\d+)\nline \d+\n/));
    const [first, second] = text("follow")
      .split("\n")
      .map((l) => Number(l.slice(5)));
    expect(second).toBe((first ?? 0) + 1);
    await send({ kind: "io-cancel", streamId: "follow" });
    expect(await ended("follow")).toMatchObject({ error: { reason: "Cancelled" } });
  });

  it("execs a command with stdin, and reports a failing one's exit code", async () => {
    await openSession("cat", {
      type: "exec",
      exec: { command: ["cat"], stdin: true, stdout: true, stderr: true, tty: false },
    });
    await send({
      kind: "io-stdin",
      streamId: "cat",
      seq: 0,
      data: Buffer.from("piped in\n").toString("base64"),
    });
    await send({ kind: "io-stdin", streamId: "cat", seq: 1, data: "", eof: true });
    expect(await ended("cat")).toMatchObject({ exitCode: 0 });
    expect(text("cat", "stdout")).toBe("piped in\n");

    await openSession("fail", {
      type: "exec",
      exec: {
        command: ["sh", "-c", "echo bad >&2; exit 3"],
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
      },
    });
    expect(await ended("fail")).toMatchObject({ exitCode: 3 });
    expect(text("fail", "stderr")).toBe("bad\n");
  });

  it("kills an exec's processes when the session is cancelled, and refuses a tty and an unknown app", async () => {
    await openSession("sleep", {
      type: "exec",
      exec: {
        command: ["sh", "-c", "sleep 60 & echo $!; wait"],
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
      },
    });
    await eventually(() => expect(text("sleep")).toMatch(/^\d+\n$/));
    const pid = Number(text("sleep").trim());
    expect(alive(pid)).toBe(true);
    await send({ kind: "io-cancel", streamId: "sleep" });
    expect(await ended("sleep")).toMatchObject({ error: { reason: "Cancelled" } });
    await eventually(() => expect(alive(pid)).toBe(false));

    await openSession("tty", {
      type: "exec",
      exec: { command: ["sh"], stdin: true, stdout: true, stderr: false, tty: true },
    });
    expect(await ended("tty")).toMatchObject({ error: { reason: "Unsupported" } });
    await openSession("nope", { type: "logs", app: "nope", logs: {} });
    expect(await ended("nope")).toMatchObject({ error: { reason: "NotFound" } });
  });

  it("sends stats with the app's process group counters", async () => {
    await eventually(
      () => {
        const app = stats
          .at(-1)
          ?.pods.find((p) => p.podUid === POD)
          ?.apps.find((a) => a.app === "main");
        expect(app?.cpu?.usageCoreNanoSeconds).toBeGreaterThan(0);
        expect(app?.memory?.workingSetBytes).toBeGreaterThan(1024 * 1024);
      },
      { timeoutMs: 20_000 },
    );
    const last = stats.at(-1);
    expect(last?.node?.cpu?.usageCoreNanoSeconds).toBeGreaterThan(0);
    expect(last?.node?.memory?.workingSetBytes).toBeGreaterThan(0);
    expect(last?.bootId).toBe(rig.seen.state.at(-1)?.bootId);
  });
});
