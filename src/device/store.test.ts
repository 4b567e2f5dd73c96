import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { desiredPod } from "./fixtures.ts";
import { fileStore, type PersistedSession } from "./store.ts";

const at = Date.parse("2026-03-01T12:00:00.000Z");
const state: PersistedSession = {
  bootId: "boot-1",
  seq: 10_000,
  epoch: "e1",
  appliedGeneration: 3,
  pods: [desiredPod({ uid: "p1", apps: [{ name: "main", command: ["/bin/true"] }] })],
};

function setup() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-store-"));
  const file = path.join(dir, "agent-state.json");
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level: "info" },
    { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { dir, file, lines, store: fileStore(file, { logger, now: () => at }) };
}

describe("fileStore", () => {
  it("saves atomically with mode 0600 and loads what it saved", async () => {
    const { dir, file, store } = setup();
    await store.save(state);
    expect(await store.load()).toEqual(state);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(["agent-state.json"]);
  });

  it("keeps a rejection (epoch, generation, reason, message) with the state", async () => {
    const { store } = setup();
    const rejection = { epoch: "e2", generation: 1, reason: "TooLarge", message: "does not fit" };
    await store.save({ ...state, rejection });
    expect(await store.load()).toEqual({ ...state, rejection });
  });

  it("rejects a save it could not make durable, keeping the previous file whole", async () => {
    const { dir, file, store } = setup();
    await store.save(state);
    // The temporary file cannot be created: its name is taken by a folder.
    mkdirSync(`${file}.${process.pid}.tmp`);
    await expect(store.save({ ...state, appliedGeneration: 4 })).rejects.toThrow();
    expect(await store.load()).toEqual(state);
    expect(readdirSync(dir).sort()).toEqual(["agent-state.json", `agent-state.json.${process.pid}.tmp`]);
  });

  it.each([
    ["truncated JSON", JSON.stringify(state).slice(0, 40)],
    ["an empty file", ""],
    ["JSON of the wrong shape", JSON.stringify({ hello: "world" })],
    ["pods that are not pods", JSON.stringify({ ...state, pods: [{ uid: 7 }] })],
    ["null", "null"],
    ["a rejection without a reason", JSON.stringify({ ...state, rejection: { epoch: "e1", generation: 4 } })],
  ])("moves a state file holding %s aside with a log line and starts empty", async (_, text) => {
    const { dir, file, lines, store } = setup();
    writeFileSync(file, text);
    expect(await store.load()).toBeUndefined();
    const aside = path.join(dir, "agent-state.json.corrupt-2026-03-01T12-00-00.000Z");
    expect(readdirSync(dir)).toEqual([path.basename(aside)]);
    expect(readFileSync(aside, "utf8")).toBe(text);
    const line = lines.find((l) => l.movedTo === aside);
    expect(line).toMatchObject({ level: 50, file });
    expect(line?.msg).toMatch(/corrupt/);
    // The agent goes on: a new state is saved and read back.
    await store.save(state);
    expect(await store.load()).toEqual(state);
    expect(existsSync(aside)).toBe(true);
  });
});
