import { chmodSync, mkdtempSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { DesiredSecurityContext } from "../protocol/types.ts";
import { desiredPod } from "./fixtures.ts";
import { ProcessRuntime } from "./process-runtime.ts";
import { planSecurity, primaryGroupOf, type AgentIdentity } from "./security.ts";

const ROOT: AgentIdentity = { uid: 0, gid: 0 };
const USER: AgentIdentity = { uid: 1000, gid: 1000 };
// The same agents with setpriv; this root's bounding set lacks SYS_RESOURCE (24), as in some containers.
const SETPRIV = "/usr/bin/setpriv";
const ROOT_SP: AgentIdentity = {
  ...ROOT,
  setpriv: SETPRIV,
  bounding: new Set([...Array(41).keys()].filter((n) => n !== 24)),
};
const USER_SP: AgentIdentity = { ...USER, setpriv: SETPRIV };
const launchOf = (sc: DesiredSecurityContext, agent = ROOT_SP) => {
  const p = plan(sc, agent);
  return p.kind === "ok" ? p.launch : p.message;
};
const messageOf = (sc: DesiredSecurityContext, agent = ROOT) => {
  const p = plan(sc, agent);
  return p.kind === "refused" ? p.message : undefined;
};
const groups = new Map([[65534, 65534]]);
const plan = (securityContext: DesiredSecurityContext, agent = ROOT) =>
  planSecurity(
    { name: "main", image: "x:1", command: ["/bin/true"], args: [], env: {}, files: [], securityContext },
    agent,
    (uid) => groups.get(uid),
  );
const refusedField = (sc: DesiredSecurityContext, agent = ROOT) => {
  const p = plan(sc, agent);
  return p.kind === "refused" ? p.field : undefined;
};

describe("planSecurity: each field is applied or refused, never ignored", () => {
  it("runs an app without a security context as the agent itself", () => {
    expect(plan({})).toEqual({ kind: "ok", identity: { uid: 0, gid: 0, switch: false } });
    expect(plan({}, USER)).toEqual({ kind: "ok", identity: { uid: 1000, gid: 1000, switch: false } });
  });

  it("runAsUser/runAsGroup: applied as root; as another user only when they are its own", () => {
    expect(plan({ runAsUser: 1001, runAsGroup: 1002 })).toEqual({
      kind: "ok",
      identity: { uid: 1001, gid: 1002, switch: true },
      files: { uid: 1001, gid: 1002 },
    });
    // Nothing setpriv alone can do: Node's spawn switches, no setpriv in between.
    expect(launchOf({ runAsUser: 1001, runAsGroup: 1002 })).toBeUndefined();
    // No runAsGroup: the user's primary group, else 0 (as container runtimes do).
    expect(plan({ runAsUser: 65534 })).toMatchObject({ identity: { uid: 65534, gid: 65534 } });
    expect(plan({ runAsUser: 4242 })).toMatchObject({ identity: { uid: 4242, gid: 0 } });
    expect(plan({ runAsUser: 1000, runAsGroup: 1000 }, USER)).toMatchObject({
      identity: { uid: 1000, gid: 1000, switch: false },
    });
    expect(refusedField({ runAsUser: 1001 }, USER)).toBe("securityContext.runAsUser");
    expect(refusedField({ runAsUser: 0 }, USER)).toBe("securityContext.runAsUser");
    expect(refusedField({ runAsGroup: 7 }, USER)).toBe("securityContext.runAsGroup");
  });

  it("runAsNonRoot: refused when the uid would be 0", () => {
    expect(refusedField({ runAsNonRoot: true })).toBe("securityContext.runAsNonRoot");
    expect(refusedField({ runAsNonRoot: true, runAsUser: 0 })).toBe("securityContext.runAsNonRoot");
    expect(plan({ runAsNonRoot: true, runAsUser: 10 }).kind).toBe("ok");
    expect(plan({ runAsNonRoot: true }, USER).kind).toBe("ok");
    expect(plan({ runAsNonRoot: false }).kind).toBe("ok");
  });

  it("readOnlyRootFilesystem: true is refused, false accepted", () => {
    expect(refusedField({ readOnlyRootFilesystem: true, runAsUser: 10 })).toBe(
      "securityContext.readOnlyRootFilesystem",
    );
    expect(plan({ readOnlyRootFilesystem: false }).kind).toBe("ok");
  });

  it("allowPrivilegeEscalation: false is no_new_privs through setpriv, refused without it; true accepted", () => {
    expect(refusedField({ allowPrivilegeEscalation: false, runAsUser: 10 })).toBe(
      "securityContext.allowPrivilegeEscalation",
    );
    expect(messageOf({ allowPrivilegeEscalation: false })).toMatch(
      /setpriv \(util-linux\).*was not found on its PATH/,
    );
    expect(plan({ allowPrivilegeEscalation: true }).kind).toBe("ok");
    expect(launchOf({ allowPrivilegeEscalation: false, runAsUser: 10, runAsGroup: 11 })).toEqual([
      SETPRIV,
      "--reuid",
      "10",
      "--regid",
      "11",
      "--clear-groups",
      "--no-new-privs",
      "--",
    ]);
    // A non-root agent can set no_new_privs too; it leaves groups alone (it cannot set them).
    expect(launchOf({ allowPrivilegeEscalation: false }, USER_SP)).toEqual([SETPRIV, "--no-new-privs", "--"]);
  });

  it("capabilities without setpriv: add is refused; drop is accepted for a non-root uid, refused for uid 0", () => {
    expect(refusedField({ capabilities: { add: ["NET_ADMIN"] }, runAsUser: 10 })).toBe(
      "securityContext.capabilities.add",
    );
    expect(plan({ capabilities: { drop: ["ALL"] }, runAsUser: 10 }).kind).toBe("ok");
    expect(plan({ capabilities: { drop: ["ALL"] } }, USER).kind).toBe("ok");
    expect(refusedField({ capabilities: { drop: ["ALL"] } })).toBe("securityContext.capabilities.drop");
    expect(messageOf({ capabilities: { drop: ["ALL"] } })).toMatch(/setpriv \(util-linux\).*was not found/);
    expect(plan({ capabilities: { add: [], drop: [] } }).kind).toBe("ok");
  });

  it("capabilities with setpriv as root: drop leaves the bounding set, for uid 0 too; add is kept or made ambient", () => {
    expect(launchOf({ capabilities: { drop: ["ALL"] }, runAsUser: 10, runAsGroup: 10 })).toEqual([
      SETPRIV,
      "--reuid",
      "10",
      "--regid",
      "10",
      "--clear-groups",
      "--inh-caps=-all",
      "--ambient-caps=-all",
      "--bounding-set=-all",
      "--",
    ]);
    expect(launchOf({ capabilities: { drop: ["NET_RAW", "cap_sys_admin"] } })).toEqual([
      SETPRIV,
      "--clear-groups",
      "--inh-caps=-all",
      "--ambient-caps=-all",
      "--bounding-set=-net_raw,-sys_admin",
      "--",
    ]);
    // A non-root uid holds added capabilities only as ambient ones.
    expect(
      launchOf({ capabilities: { drop: ["ALL"], add: ["NET_BIND_SERVICE"] }, runAsUser: 10, runAsGroup: 10 }),
    ).toEqual([
      SETPRIV,
      "--reuid",
      "10",
      "--regid",
      "10",
      "--clear-groups",
      "--inh-caps=-all,+net_bind_service",
      "--ambient-caps=-all,+net_bind_service",
      "--bounding-set=-all,+net_bind_service",
      "--",
    ]);
    expect(launchOf({ capabilities: { drop: ["ALL"], add: ["NET_ADMIN"] } })).toEqual([
      SETPRIV,
      "--clear-groups",
      "--inh-caps=-all",
      "--ambient-caps=-all",
      "--bounding-set=-all,+net_admin",
      "--",
    ]);
    expect(messageOf({ capabilities: { add: ["SYS_RESOURCE"] } }, ROOT_SP)).toMatch(
      /the agent's own bounding set lacks SYS_RESOURCE/,
    );
    expect(messageOf({ capabilities: { add: ["ALL"] } }, ROOT_SP)).toMatch(
      /capabilities\.add=\["ALL"\].*name the capabilities/,
    );
    expect(messageOf({ capabilities: { drop: ["NET_RAWR"] } }, ROOT_SP)).toMatch(
      /"NET_RAWR" is not a Linux capability/,
    );
  });

  it("capabilities with setpriv as another user: drop clears inheritable and ambient; add and drop for uid 0 are refused", () => {
    expect(launchOf({ capabilities: { drop: ["ALL"] } }, USER_SP)).toEqual([
      SETPRIV,
      "--inh-caps=-all",
      "--ambient-caps=-all",
      "--",
    ]);
    expect(messageOf({ capabilities: { add: ["NET_RAW"] } }, USER_SP)).toMatch(
      /not root, and has no capabilities to give/,
    );
  });

  it("fsGroup and supplementalGroups without setpriv: accepted only when they are the app's own gid", () => {
    expect(plan({ runAsUser: 10, runAsGroup: 20, fsGroup: 20, supplementalGroups: [20] }).kind).toBe("ok");
    expect(refusedField({ runAsUser: 10, runAsGroup: 20, fsGroup: 21 })).toBe("securityContext.fsGroup");
    expect(refusedField({ runAsUser: 10, runAsGroup: 20, supplementalGroups: [20, 4] })).toBe(
      "securityContext.supplementalGroups",
    );
    expect(messageOf({ runAsUser: 10, fsGroup: 21 })).toMatch(/supplementary groups; setpriv \(util-linux\)/);
    expect(refusedField({ fsGroup: 2000 }, USER)).toBe("securityContext.fsGroup");
    expect(refusedField({ fsGroup: 2000 }, USER_SP)).toBe("securityContext.fsGroup");
  });

  it("fsGroup and supplementalGroups with setpriv as root: the app's groups, and fsGroup owns its files", () => {
    const p = plan({ runAsUser: 10, runAsGroup: 20, fsGroup: 30, supplementalGroups: [40, 30] }, ROOT_SP);
    expect(p).toMatchObject({ kind: "ok", identity: { uid: 10, gid: 20 }, files: { uid: 10, gid: 30 } });
    expect(p.kind === "ok" ? p.launch : []).toEqual([
      SETPRIV,
      "--reuid",
      "10",
      "--regid",
      "20",
      "--groups",
      "40,30",
      "--",
    ]);
  });

  it("seccompProfile: Unconfined accepted, RuntimeDefault refused", () => {
    expect(plan({ seccompProfile: { type: "Unconfined" } }).kind).toBe("ok");
    expect(refusedField({ seccompProfile: { type: "RuntimeDefault" } })).toBe(
      "securityContext.seccompProfile",
    );
  });

  it("refuses a field it does not know rather than ignoring it", () => {
    const p = plan({ seLinuxOptions: { level: "s0" } } as DesiredSecurityContext);
    expect(p).toMatchObject({ kind: "refused", field: "securityContext.seLinuxOptions" });
  });

  it("names the app, the field and its value in the message", () => {
    const p = plan({ runAsUser: 1001 }, USER);
    expect(p.kind === "refused" ? p.message : "").toMatch(
      /^app "main": securityContext\.runAsUser=1001 cannot be applied: /,
    );
  });

  it("reads primary groups from a passwd file", () => {
    expect(primaryGroupOf(65534)).toBe(65534);
    expect(primaryGroupOf(65534, "/nonexistent/passwd")).toBeUndefined();
  });
});

const logger = pino({ level: "silent" });
const runtimes: ProcessRuntime[] = [];
afterEach(async () => {
  await Promise.all(runtimes.splice(0).map((r) => r.stop()));
});
const until = <T>(probe: () => T) => vi.waitFor(probe, { timeout: 8_000, interval: 10 });

function runtime(identity?: AgentIdentity) {
  const workDir = mkdtempSync(path.join(os.tmpdir(), "devicelet-sec-"));
  // mkdtemp makes 0700: an app switched to another uid must be able to reach its folder.
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

describe("ProcessRuntime and securityContext", () => {
  it("refuses a pod whose security context it cannot honour: Pending, every app waiting, the field named", async () => {
    const { r } = runtime(USER);
    const pod = desiredPod({
      uid: "refused",
      apps: [
        { name: "ok", command: ["/bin/sleep", "30"] },
        { name: "main", command: ["/bin/sleep", "30"], securityContext: { runAsUser: 1001 } },
      ],
    });
    await r.apply([pod], []);
    const reported = r.report()[0];
    expect(reported).toMatchObject({
      uid: "refused",
      phase: "Pending",
      reason: "CreateContainerConfigError",
    });
    expect(reported?.message).toMatch(/app "main": securityContext\.runAsUser=1001 cannot be applied/);
    for (const app of reported?.apps ?? [])
      expect(app.status).toMatchObject({ state: "waiting", reason: "CreateContainerConfigError" });
  });

  it.runIf(process.getuid?.() === 0)(
    "as root, runs the app as runAsUser/runAsGroup, gives it its folder and files, and execs as it",
    async () => {
      const { r, workDir } = runtime();
      const pod = desiredPod({
        uid: "runas",
        restartPolicy: "Never",
        apps: [
          {
            name: "main",
            command: ["/bin/sh", "-c", 'echo "$(id -u):$(id -g):$(id -G)"; cat etc/secret/token'],
            files: [{ path: "/etc/secret/token", encoding: "utf8", content: "s3cret", mode: 0o600 }],
            securityContext: { runAsUser: 65534, runAsGroup: 65533, runAsNonRoot: true },
          },
        ],
      });
      await r.apply([pod], []);
      await until(() => expect(r.report()[0]?.phase).toBe("Succeeded"));
      // No supplementary groups of the agent's are inherited.
      expect(await r.logs("runas", "main")).toBe("65534:65533:65533\ns3cret");
      const root = path.join(workDir, "runas", "main");
      for (const p of [".", "etc/secret", "etc/secret/token"])
        expect(statSync(path.join(root, p))).toMatchObject({ uid: 65534, gid: 65533 });
      expect(statSync(path.join(root, "etc/secret/token")).mode & 0o777).toBe(0o600);
      expect(statSync(path.join(root, "etc/secret")).mode & 0o777).toBe(0o700);
      expect(await r.exec("runas", "main", ["/bin/sh", "-c", "id -u"])).toEqual({
        exitCode: 0,
        output: "65534\n",
      });
    },
  );
});
