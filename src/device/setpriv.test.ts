/**
 * The security context as the app itself sees it: real processes started by the ProcessRuntime
 * through the real setpriv, each printing its own /proc/self/status. Needs root and setpriv, as
 * the agent on a gateway has them; skipped elsewhere.
 */
import { chmodSync, mkdtempSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { DesiredSecurityContext } from "../protocol/types.ts";
import { desiredPod } from "./fixtures.ts";
import { ProcessRuntime } from "./process-runtime.ts";
import { processIdentity, type AgentIdentity } from "./security.ts";
import { agentBoundingSet, findSetpriv } from "./setpriv.ts";

const logger = pino({ level: "silent" });
const runtimes: ProcessRuntime[] = [];
afterEach(async () => {
  await Promise.all(runtimes.splice(0).map((r) => r.stop()));
});
const until = <T>(probe: () => T) => vi.waitFor(probe, { timeout: 8_000, interval: 10 });

const STATUS_FIELDS = /^(Uid|Gid|Groups|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):\s*(.*?)\s*$/;
/** The credential lines of a /proc/<pid>/status text, by field. */
function credentials(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = STATUS_FIELDS.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined) out[m[1]] = m[2];
  }
  return out;
}
/** A capability mask as /proc prints it (16 hex digits). */
const mask = (...caps: number[]) =>
  caps
    .reduce((m, c) => m | (1n << BigInt(c)), 0n)
    .toString(16)
    .padStart(16, "0");
/** The agent's own bounding set without `caps`. */
const agentBoundingWithout = (...caps: number[]) =>
  mask(...[...(agentBoundingSet() ?? [])].filter((c) => !caps.includes(c)));

function runtime(identity?: AgentIdentity) {
  const workDir = mkdtempSync(path.join(os.tmpdir(), "devicelet-setpriv-"));
  chmodSync(workDir, 0o755);
  const r = new ProcessRuntime({
    workDir,
    logger,
    backoff: { initialMs: 50, maxMs: 400 },
    ...(identity ? { identity } : {}),
  });
  runtimes.push(r);
  return { r, workDir };
}

/** Runs an app with `securityContext` to completion and returns what it saw of itself. */
async function statusSeenBy(uid: string, securityContext: DesiredSecurityContext) {
  const { r, workDir } = runtime();
  const pod = desiredPod({
    uid,
    restartPolicy: "Never",
    apps: [
      {
        name: "main",
        command: ["/bin/cat", "/proc/self/status"],
        files: [{ path: "/etc/token", encoding: "utf8", content: "t", mode: 0o600 }],
        securityContext,
      },
    ],
  });
  await r.apply([pod], []);
  await until(() => expect(r.report()[0]?.phase).toBe("Succeeded"));
  return { seen: credentials(await r.logs(uid, "main")), root: path.join(workDir, uid, "main") };
}

const canRun = process.getuid?.() === 0 && findSetpriv() !== undefined;

describe.runIf(canRun)("apps launched through setpriv (as root)", () => {
  it("the restricted profile: non-root, no_new_privs, no capabilities in any set, no groups; exec alike", async () => {
    const { r } = runtime();
    const pod = desiredPod({
      uid: "restricted",
      apps: [
        {
          name: "main",
          command: ["/bin/sh", "-c", "cat /proc/self/status; exec sleep 60"],
          securityContext: {
            runAsNonRoot: true,
            runAsUser: 65534,
            runAsGroup: 65534,
            allowPrivilegeEscalation: false,
            capabilities: { drop: ["ALL"] },
          },
        },
      ],
    });
    await r.apply([pod], []);
    const seen = await vi.waitFor(
      async () => {
        const c = credentials(await r.logs("restricted", "main"));
        expect(c.CapAmb).toBeDefined();
        return c;
      },
      { timeout: 8_000, interval: 10 },
    );
    const none = mask();
    const expected = {
      Uid: "65534\t65534\t65534\t65534",
      Gid: "65534\t65534\t65534\t65534",
      Groups: "",
      NoNewPrivs: "1",
      CapInh: none,
      CapPrm: none,
      CapEff: none,
      CapBnd: none,
      CapAmb: none,
    };
    expect(seen).toEqual(expected);
    expect(r.report()[0]?.phase).toBe("Running");
    // kubectl exec reaches the app the same way: no way around its security context.
    const exec = await r.exec("restricted", "main", ["/bin/cat", "/proc/self/status"]);
    expect(exec.exitCode).toBe(0);
    expect(credentials(exec.output)).toEqual(expected);
  });

  it("capabilities.drop for uid 0: gone from the bounding, permitted and effective sets", async () => {
    const { seen } = await statusSeenBy("rootdrop", { capabilities: { drop: ["NET_RAW", "SYS_ADMIN"] } });
    // NET_RAW is 13, SYS_ADMIN 21 (capabilities(7)).
    expect(seen).toMatchObject({
      Uid: "0\t0\t0\t0",
      NoNewPrivs: "0",
      CapBnd: agentBoundingWithout(13, 21),
      CapEff: agentBoundingWithout(13, 21),
      CapInh: mask(),
      CapAmb: mask(),
    });
    const { seen: all } = await statusSeenBy("rootall", { capabilities: { drop: ["ALL"] } });
    expect(all).toMatchObject({ Uid: "0\t0\t0\t0", CapBnd: mask(), CapPrm: mask(), CapEff: mask() });
  });

  it("capabilities.add for a non-root uid: exactly those, held as ambient capabilities", async () => {
    const { seen } = await statusSeenBy("ambient", {
      runAsUser: 65534,
      runAsGroup: 65534,
      capabilities: { drop: ["ALL"], add: ["NET_BIND_SERVICE"] },
    });
    // NET_BIND_SERVICE is 10.
    expect(seen).toMatchObject({
      Uid: "65534\t65534\t65534\t65534",
      CapBnd: mask(10),
      CapPrm: mask(10),
      CapEff: mask(10),
      CapInh: mask(10),
      CapAmb: mask(10),
    });
  });

  it("supplementalGroups and fsGroup: the app's groups, and fsGroup owns its folder and files", async () => {
    const { seen, root } = await statusSeenBy("groups", {
      runAsUser: 65534,
      runAsGroup: 65534,
      fsGroup: 3000,
      supplementalGroups: [4000],
    });
    expect(seen).toMatchObject({ Uid: "65534\t65534\t65534\t65534", Gid: "65534\t65534\t65534\t65534" });
    expect(seen.Groups?.split(" ").map(Number).sort()).toEqual([3000, 4000]);
    for (const p of [".", "etc", "etc/token"])
      expect(statSync(path.join(root, p))).toMatchObject({ uid: 65534, gid: 3000 });
  });

  it("a command setpriv cannot run: exit code 127, reason Error, setpriv's message in the app's log", async () => {
    const { r } = runtime();
    const pod = desiredPod({
      uid: "missing",
      restartPolicy: "Never",
      apps: [
        { name: "main", command: ["/nonexistent/app"], securityContext: { allowPrivilegeEscalation: false } },
      ],
    });
    await r.apply([pod], []);
    await until(() => expect(r.report()[0]?.phase).toBe("Failed"));
    expect(r.report()[0]?.apps[0]?.status).toMatchObject({
      state: "terminated",
      exitCode: 127,
      reason: "Error",
    });
    expect(await r.logs("missing", "main")).toMatch(/failed to execute \/nonexistent\/app/);
  });

  it("without setpriv the same restricted pod is refused, naming the field and the missing setpriv", async () => {
    const { setpriv: _, ...withoutSetpriv } = processIdentity();
    const { r } = runtime(withoutSetpriv);
    const pod = desiredPod({
      uid: "nosetpriv",
      apps: [
        {
          name: "main",
          command: ["/bin/sleep", "60"],
          securityContext: {
            runAsUser: 65534,
            allowPrivilegeEscalation: false,
            capabilities: { drop: ["ALL"] },
          },
        },
      ],
    });
    await r.apply([pod], []);
    expect(r.report()[0]).toMatchObject({ phase: "Pending", reason: "CreateContainerConfigError" });
    expect(r.report()[0]?.message).toMatch(
      /securityContext\.allowPrivilegeEscalation=false cannot be applied: .*setpriv \(util-linux\).*not found/,
    );
  });
});
