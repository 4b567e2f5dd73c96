import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { IoInMessage, IoOpenMessage, IoOutMessage } from "../protocol/types.ts";
import { desiredPod } from "./fixtures.ts";
import { IoSessions, type IoCapabilities } from "./io-sessions.ts";
import { ProcessRuntime } from "./process-runtime.ts";
import type { Runtime } from "./runtime.ts";
import { SimRuntime } from "./sim-runtime.ts";

const logger = pino({ level: "silent" });
const runtimes: Runtime[] = [];
afterEach(async () => {
  await Promise.all(runtimes.splice(0).map((r) => r.stop()));
});
const until = <T>(probe: () => T, timeout = 8_000) => vi.waitFor(probe, { timeout, interval: 10 });
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** A process runtime running pod `p1` with app `main` (`code` under node), running before it returns. */
async function processRuntime(code: string, restartPolicy: "Always" | "Never" = "Always") {
  const r = new ProcessRuntime({
    workDir: mkdtempSync(path.join(os.tmpdir(), "devicelet-io-")),
    logger,
    backoff: { initialMs: 20, maxMs: 50 },
  });
  runtimes.push(r);
  await r.apply(
    [
      desiredPod({
        uid: "p1",
        restartPolicy,
        terminationGracePeriodSeconds: 1,
        apps: [{ name: "main", command: [process.execPath, "-e", code], env: { GREETING: "hi" } }],
      }),
    ],
    [],
  );
  await until(() => expect(r.report()[0]?.apps[0]?.status.state).toBe("running"));
  return r;
}

/** IoSessions over a fake link that records every message sent, per stream. */
function sessions(runtime: Runtime, o: { maxSessions?: number; caps?: Partial<IoCapabilities> } = {}) {
  const sent: IoOutMessage[] = [];
  const io = new IoSessions({
    deviceId: "gw-1",
    runtime,
    send: (m) => {
      sent.push(m);
      return Promise.resolve();
    },
    capabilities: { logs: true, exec: true, tty: false, ...o.caps },
    ...(o.maxSessions === undefined ? {} : { maxSessions: o.maxSessions }),
    logger,
  });
  const of = (streamId: string) => sent.filter((m) => m.streamId === streamId);
  const ended = (streamId: string) =>
    vi.waitFor(
      () => {
        const end = of(streamId).find((m) => m.kind === "io-end");
        if (!end) throw new Error(`no io-end for ${streamId} yet`);
        return end;
      },
      { timeout: 8_000, interval: 10 },
    );
  const output = (streamId: string, stream?: string) =>
    Buffer.concat(
      of(streamId).flatMap((m) =>
        m.kind === "io-data" && (stream === undefined || m.stream === stream)
          ? [Buffer.from(m.data, "base64")]
          : [],
      ),
    ).toString("utf8");
  return { io, sent, of, ended, output };
}

const open = (
  streamId: string,
  rest: Partial<IoOpenMessage> & Pick<IoOpenMessage, "type">,
): IoOpenMessage => ({
  protocol: 1,
  kind: "io-open",
  deviceId: "gw-1",
  streamId,
  podUid: "p1",
  app: "main",
  maxChunkBytes: 32768,
  idleSeconds: 30,
  ...rest,
});
const exec = (streamId: string, command: string[], extra: Partial<IoOpenMessage> = {}) =>
  open(streamId, {
    type: "exec",
    exec: { command, stdin: true, stdout: true, stderr: true, tty: false },
    ...extra,
  });
const stdin = (streamId: string, seq: number, text: string, eof = false): IoInMessage => ({
  protocol: 1,
  kind: "io-stdin",
  deviceId: "gw-1",
  streamId,
  seq,
  data: Buffer.from(text).toString("base64"),
  ...(eof ? { eof } : {}),
});
const control = (streamId: string, kind: "io-cancel" | "io-keepalive"): IoInMessage => ({
  protocol: 1,
  kind,
  deviceId: "gw-1",
  streamId,
});

describe("IoSessions: logs", () => {
  const LINES = `for (let i = 0; i < 2000; i++) console.log("line " + i + " " + "x".repeat(40)); setInterval(() => {}, 1000)`;

  it("sends the tail in chunks of at most maxChunkBytes, seq 0, 1, 2… and io-end last", async () => {
    const r = await processRuntime(LINES);
    await until(async () => expect(await r.logs("p1", "main")).toContain("line 1999 "));
    const { io, of, ended, output } = sessions(r);
    io.handle(open("s1", { type: "logs", logs: { tailLines: 1500 }, maxChunkBytes: 1000 }));
    const end = await ended("s1");
    expect(end).toMatchObject({ kind: "io-end" });
    expect(end).not.toHaveProperty("error");
    const messages = of("s1");
    expect(messages.map((m) => m.seq)).toEqual(messages.map((_, i) => i));
    expect(messages.at(-1)?.kind).toBe("io-end");
    for (const m of messages)
      if (m.kind === "io-data") expect(Buffer.from(m.data, "base64").length).toBeLessThanOrEqual(1000);
    const lines = output("s1").split("\n").slice(0, -1);
    expect(lines).toHaveLength(1500);
    expect(lines[0]).toMatch(/^line 500 /);
    expect(lines.at(-1)).toMatch(/^line 1999 /);
  });

  it("prefixes timestamps, keeps lines since a time, cuts at limitBytes", async () => {
    const r = await processRuntime(LINES);
    await until(async () => expect(await r.logs("p1", "main")).toContain("line 1999 "));
    const { io, ended, output } = sessions(r);
    io.handle(open("s1", { type: "logs", logs: { tailLines: 2, timestamps: true } }));
    await ended("s1");
    expect(output("s1")).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z line 1998 x+\n\S+ line 1999 x+\n$/);
    io.handle(open("s2", { type: "logs", logs: { sinceTime: new Date(Date.now() + 60_000).toISOString() } }));
    await ended("s2");
    expect(output("s2")).toBe("");
    io.handle(open("s3", { type: "logs", logs: { limitBytes: 10 } }));
    await ended("s3");
    expect(output("s3")).toBe("line 0 xxx");
  });

  it("follows new lines until cancelled, then stops following", async () => {
    const r = await processRuntime(`let i = 0; setInterval(() => console.log("tick " + i++), 20)`);
    const { io, of, ended, output } = sessions(r);
    io.handle(open("f1", { type: "logs", logs: { tailLines: 0, follow: true } }));
    await until(() => expect(output("f1")).toMatch(/tick \d+\n.*tick \d+\n/s));
    io.handle(control("f1", "io-cancel"));
    const end = await ended("f1");
    expect(end).toMatchObject({ error: { reason: "Cancelled" } });
    const count = of("f1").length;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(of("f1")).toHaveLength(count);
    expect(io.size).toBe(0);
  });

  it("ends a follow when the app exits, and serves that instance as previous after the restart", async () => {
    const r = await processRuntime(
      `console.log("instance " + process.pid); setTimeout(() => process.exit(1), 300)`,
    );
    const { io, ended, output, of } = sessions(r);
    io.handle(open("f1", { type: "logs", logs: { follow: true } }));
    const end = await ended("f1");
    expect(end).not.toHaveProperty("error");
    const first = /instance (\d+)/.exec(output("f1"))?.[1];
    expect(first).toBeDefined();
    // The next instance has written its own line: the first one is now the previous.
    await until(async () => {
      const current = await r.logs("p1", "main");
      expect(current).toMatch(/^instance \d+\n$/);
      expect(current).not.toContain(`instance ${first ?? ""}\n`);
    });
    io.handle(open("prev", { type: "logs", logs: { previous: true } }));
    await ended("prev");
    expect(output("prev")).toMatch(/^instance \d+\n$/);
    expect(of("prev").at(-1)).toMatchObject({ kind: "io-end" });
  });

  it("answers NotFound for an unknown pod or app and for a missing previous instance", async () => {
    const r = await processRuntime("setInterval(() => {}, 1000)");
    const { io, of, ended } = sessions(r);
    io.handle(open("n1", { type: "logs", podUid: "nope", logs: {} }));
    io.handle(open("n2", { type: "logs", app: "other", logs: {} }));
    io.handle(open("n3", { type: "logs", logs: { previous: true } }));
    for (const id of ["n1", "n2", "n3"]) {
      expect(await ended(id)).toMatchObject({ seq: 0, error: { reason: "NotFound" } });
      expect(of(id)).toHaveLength(1);
    }
  });
});

describe("IoSessions: exec", () => {
  it("pipes stdin in seq order to the command and its stdout back, with the exit code", async () => {
    const r = await processRuntime("setInterval(() => {}, 1000)");
    const { io, ended, output } = sessions(r);
    io.handle(exec("e1", ["cat"]));
    // Out of order, and a duplicate: written once, in order.
    io.handle(stdin("e1", 1, "world\n"));
    io.handle(stdin("e1", 0, "hello "));
    io.handle(stdin("e1", 0, "hello "));
    io.handle(stdin("e1", 2, "", true));
    expect(await ended("e1")).toMatchObject({ exitCode: 0 });
    expect(output("e1", "stdout")).toBe("hello world\n");
  });

  it("runs in the app's environment and folder, and reports a failing command's exit code and stderr", async () => {
    const r = await processRuntime("setInterval(() => {}, 1000)");
    const { io, ended, output } = sessions(r);
    io.handle(exec("e1", ["sh", "-c", 'echo "$GREETING $(basename "$PWD")"; echo oops >&2; exit 3']));
    expect(await ended("e1")).toMatchObject({ exitCode: 3 });
    expect(output("e1", "stdout")).toBe("hi main\n");
    expect(output("e1", "stderr")).toBe("oops\n");
    io.handle(exec("e2", ["no-such-command-here"]));
    expect(await ended("e2")).toMatchObject({ exitCode: 127 });
    expect(output("e2", "stderr")).toMatch(/command not found/);
  });

  it("splits output at maxChunkBytes", async () => {
    const r = await processRuntime("setInterval(() => {}, 1000)");
    const { io, of, ended, output } = sessions(r);
    io.handle(exec("e1", ["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' a"], { maxChunkBytes: 256 }));
    await ended("e1");
    expect(output("e1", "stdout")).toBe("a".repeat(5000));
    const data = of("e1").filter((m) => m.kind === "io-data");
    expect(data.length).toBeGreaterThanOrEqual(20);
    for (const m of data) expect(Buffer.from(m.data, "base64").length).toBeLessThanOrEqual(256);
    expect(of("e1").map((m) => m.seq)).toEqual(of("e1").map((_, i) => i));
  });

  it("kills the command's whole process group on cancel", async () => {
    const r = await processRuntime("setInterval(() => {}, 1000)");
    const { io, ended, output } = sessions(r);
    io.handle(exec("e1", ["sh", "-c", "sleep 30 & echo $$ $!; wait"]));
    await until(() => expect(output("e1")).toMatch(/^\d+ \d+\n$/));
    const pids = output("e1").trim().split(" ").map(Number);
    expect(pids.every(alive)).toBe(true);
    io.handle(control("e1", "io-cancel"));
    expect(await ended("e1")).toMatchObject({ error: { reason: "Cancelled" } });
    await until(() => expect(pids.filter(alive)).toEqual([]));
  });

  it("ends a session that hears nothing for idleSeconds, killing the command; keepalives hold it", async () => {
    const r = await processRuntime("setInterval(() => {}, 1000)");
    const { io, ended, output, of } = sessions(r);
    // An idle limit five keepalives long, the first keepalive as soon as the command answers:
    // a slow spawn or a late timer on a busy machine does not end the session early.
    io.handle(exec("e1", ["sh", "-c", "echo $$; exec sleep 30"], { idleSeconds: 1 }));
    await until(() => expect(output("e1")).toMatch(/^\d+\n$/));
    io.handle(control("e1", "io-keepalive"));
    const pid = Number(output("e1").trim());
    for (let i = 0; i < 6; i++) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      io.handle(control("e1", "io-keepalive"));
    }
    expect(of("e1").some((m) => m.kind === "io-end")).toBe(false);
    expect(await ended("e1")).toMatchObject({ error: { reason: "IdleTimeout" } });
    await until(() => expect(alive(pid)).toBe(false));
  });

  it("refuses sessions beyond the limit, tty, and what the device does not announce; ignores a duplicate open", async () => {
    const r = await processRuntime("setInterval(() => {}, 1000)");
    const { io, of, ended } = sessions(r, { maxSessions: 1 });
    io.handle(exec("e1", ["cat"]));
    io.handle(exec("e1", ["cat"]));
    io.handle(exec("e2", ["cat"]));
    expect(await ended("e2")).toMatchObject({ seq: 0, error: { reason: "LimitReached" } });
    expect(io.size).toBe(1);
    io.handle(stdin("e1", 0, "", true));
    await ended("e1");
    expect(of("e1").filter((m) => m.kind === "io-end")).toHaveLength(1);
    io.handle(
      exec("t1", ["sh"], { exec: { command: ["sh"], stdin: true, stdout: true, stderr: true, tty: true } }),
    );
    expect(await ended("t1")).toMatchObject({
      error: { reason: "Unsupported" },
    });
    expect(JSON.stringify(await ended("t1"))).toMatch(/tty/);
    const limited = sessions(r, { caps: { exec: false, logs: false } });
    limited.io.handle(exec("x1", ["true"]));
    limited.io.handle(open("x2", { type: "logs", logs: {} }));
    expect(await limited.ended("x1")).toMatchObject({ error: { reason: "Unsupported" } });
    expect(await limited.ended("x2")).toMatchObject({ error: { reason: "Unsupported" } });
  });
});

describe("IoSessions on the simulator's runtime", () => {
  const simRuntime = async () => {
    const r = new SimRuntime({ logIntervalMs: 30 });
    runtimes.push(r);
    await r.apply(
      [desiredPod({ uid: "p1", name: "web", apps: [{ name: "main", env: { MODE: "demo" } }] })],
      [],
    );
    return r;
  };

  it("runs the simulated commands", async () => {
    const r = await simRuntime();
    const { io, ended, output } = sessions(r);
    io.handle(exec("c1", ["cat"]));
    io.handle(stdin("c1", 0, "piped\n", true));
    expect(await ended("c1")).toMatchObject({ exitCode: 0 });
    expect(output("c1")).toBe("piped\n");
    io.handle(exec("c2", ["sh", "-c", "exit 3"]));
    expect(await ended("c2")).toMatchObject({ exitCode: 3 });
    io.handle(exec("c3", ["env"]));
    await ended("c3");
    expect(output("c3")).toContain("MODE=demo\n");
    io.handle(exec("c4", ["hostname"]));
    await ended("c4");
    expect(output("c4")).toBe("web\n");
    io.handle(exec("c5", ["ls", "/"]));
    expect(await ended("c5")).toMatchObject({ exitCode: 127 });
    expect(output("c5", "stderr")).toBe("ls: command not found\n");
  });

  it("writes synthetic lines that a follower sees as they come", async () => {
    const r = await simRuntime();
    const { io, ended, output } = sessions(r);
    io.handle(open("l1", { type: "logs", logs: { follow: true } }));
    await until(() => expect(output("l1")).toMatch(/main started\n(.*sample \d+.*\n){2}/));
    io.handle(control("l1", "io-cancel"));
    await ended("l1");
  });

  it("reports CPU counters that grow", async () => {
    const r = await simRuntime();
    const first = await r.stats();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const second = await r.stats();
    const cpu = (s: typeof first) => s.pods[0]?.apps[0]?.cpu?.usageCoreNanoSeconds ?? 0;
    expect(cpu(second)).toBeGreaterThan(cpu(first));
    expect(second.node?.cpu?.usageCoreNanoSeconds ?? 0).toBeGreaterThan(
      first.node?.cpu?.usageCoreNanoSeconds ?? 0,
    );
    expect(second.pods[0]?.apps[0]?.memory?.workingSetBytes).toBeGreaterThan(1024 * 1024);
  });
});
