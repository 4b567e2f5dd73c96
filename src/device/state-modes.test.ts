/** The agent's state file holds Secret values: 0600, in a folder of its own made 0700. */
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  statSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { agentConfigSchema, DEFAULT_STATE_FILE, moveStateFile } from "./agent.ts";
import { fileStore, type PersistedSession } from "./store.ts";

const state: PersistedSession = { bootId: "b", seq: 1, epoch: "e", appliedGeneration: 1, pods: [] };
const modeOf = (p: string) => statSync(p).mode & 0o777;

function logged() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level: "info" },
    { write: (l: string) => lines.push(JSON.parse(l) as Record<string, unknown>) },
  );
  return { lines, logger };
}

describe("agent state file modes", () => {
  it("writes the file 0600 in a folder it creates 0700, whatever the umask or a leftover temporary file", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-state-"));
    const file = path.join(dir, "state", "agent-state.json");
    const { logger, lines } = logged();
    const store = fileStore(file, { logger });
    mkdirSync(path.dirname(file), { mode: 0o700 });
    // A crash left a temporary file readable by everyone.
    writeFileSync(`${file}.${process.pid}.tmp`, "old", { mode: 0o644 });
    chmodSync(`${file}.${process.pid}.tmp`, 0o644);
    await store.save(state);
    expect(modeOf(file)).toBe(0o600);
    expect(modeOf(path.dirname(file))).toBe(0o700);
    expect(lines.filter((l) => l["level"] === 40)).toEqual([]);

    const fresh = path.join(dir, "new", "deeper", "agent-state.json");
    await fileStore(fresh, { logger }).save(state);
    expect(modeOf(path.dirname(fresh))).toBe(0o700);
    expect(modeOf(fresh)).toBe(0o600);
  });

  it("logs once when the folder is open to other users", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-state-"));
    chmodSync(dir, 0o755);
    const { logger, lines } = logged();
    const store = fileStore(path.join(dir, "agent-state.json"), { logger });
    await store.save(state);
    await store.save(state);
    expect(lines.filter((l) => l["level"] === 40).map((l) => [l["dir"], l["mode"]])).toEqual([[dir, "755"]]);
  });

  it("keeps the state in a folder of its own by default, moving the earlier default file there", async () => {
    expect(agentConfigSchema.properties.stateFile.default).toBe(DEFAULT_STATE_FILE);
    expect(path.dirname(DEFAULT_STATE_FILE)).not.toBe(
      path.dirname(agentConfigSchema.properties.workDir.default),
    );
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-state-"));
    const legacy = path.join(dir, "agent-state.json");
    const moved = path.join(dir, "state", "agent-state.json");
    writeFileSync(legacy, "{}");
    const { logger } = logged();
    await moveStateFile(legacy, moved, logger);
    expect(existsSync(legacy)).toBe(false);
    expect(readFileSync(moved, "utf8")).toBe("{}");
    expect(modeOf(path.dirname(moved))).toBe(0o700);
    // Never over a state file that is already there.
    writeFileSync(legacy, "older");
    await moveStateFile(legacy, moved, logger);
    expect(readFileSync(moved, "utf8")).toBe("{}");
  });
});
