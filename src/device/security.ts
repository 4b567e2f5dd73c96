/**
 * What the process runtime does with an app's `securityContext` (docs/protocol.md § 3.1): every
 * field is applied or the pod is refused with a message naming the field; none is ignored.
 *
 *   const plan = planSecurity(app, processIdentity());   // finds setpriv on PATH
 *   if (plan.kind === "refused") …;                      // the pod waits CreateContainerConfigError
 *   const argv = [...(plan.launch ?? []), file, ...args]; // through setpriv when it must be
 *   spawn(argv[0], argv.slice(1), plan.launch || !plan.identity.switch ? {} : { uid, gid });
 *
 * - `runAsUser`, `runAsGroup`: applied (the process's uid and gid) when the agent runs as root;
 *   otherwise accepted only when equal to the agent's own, and refused when not.
 * - `runAsNonRoot: true`: refused when the app's uid would be 0.
 * - `readOnlyRootFilesystem: true`: refused. An app is a process on the device's filesystem; it has
 *   no root filesystem of its own that could be made read-only.
 * - `allowPrivilegeEscalation: false`: no_new_privs, set by util-linux `setpriv` (setpriv.ts);
 *   refused without it.
 * - `capabilities.drop` (names or `ALL`): with setpriv and an agent running as root, removed from
 *   the bounding, inheritable and ambient sets, whatever the uid. Otherwise accepted for a non-root
 *   uid (such a process keeps no capabilities, but its bounding set stays whole) and refused for 0.
 * - `capabilities.add`: with setpriv and an agent running as root, kept in the bounding set and, for
 *   a non-root uid, raised as ambient capabilities (Linux ≥ 4.3), so the app holds exactly them;
 *   refused otherwise, for `ALL`, and for a capability outside the agent's own bounding set.
 * - `fsGroup`, `supplementalGroups`: the app's supplementary groups (setpriv `--groups`; with setpriv
 *   and nothing asked, it clears them), and `fsGroup` owns the app's folder and files. Without
 *   setpriv, or as a non-root agent, accepted only when every group is the app's own gid.
 * - `seccompProfile`: `Unconfined` accepted; `RuntimeDefault` refused (no seccomp filter is
 *   installed; setpriv cannot load one).
 *
 * With `runAsUser` and no `runAsGroup`, the gid is the user's primary group in the device's
 * `/etc/passwd`, else 0, as container runtimes do: set `runAsGroup` to be sure.
 */
import { readFileSync } from "node:fs";
import type { DesiredApp, DesiredSecurityContext } from "../protocol/types.ts";
import type { FileOwner } from "./pod-files.ts";
import {
  agentBoundingSet,
  capabilityNumber,
  findSetpriv,
  setprivPrefix,
  type AppPrivileges,
} from "./setpriv.ts";

/** Who the agent runs as, and what it can hand on to apps. */
export interface AgentIdentity {
  readonly uid: number;
  readonly gid: number;
  /** Path of util-linux `setpriv`, if the agent has it. */
  readonly setpriv?: string;
  /** Capability numbers in the agent's own bounding set, if known. */
  readonly bounding?: ReadonlySet<number>;
}

/** What the app runs as; `switch` says whether spawn must change to it (only ever as root). */
export interface AppIdentity {
  readonly uid: number;
  readonly gid: number;
  readonly switch: boolean;
}

export type SecurityPlan =
  | {
      readonly kind: "ok";
      readonly identity: AppIdentity;
      /** Owner of the app's folder and files, when not the agent. */
      readonly files?: FileOwner;
      /** Run the command behind this argv prefix (setpriv …, `--`), which then switches uid and gid itself. */
      readonly launch?: readonly string[];
    }
  | { readonly kind: "refused"; readonly field: string; readonly message: string };

/**
 * The identity of this process (a process without getuid, e.g. on Windows, counts as non-root),
 * with `setpriv` looked up on PATH and the bounding set read once: call it at start.
 */
export function processIdentity(): AgentIdentity {
  const setpriv = findSetpriv();
  const bounding = agentBoundingSet();
  return {
    uid: process.getuid?.() ?? -1,
    gid: process.getgid?.() ?? -1,
    ...(setpriv ? { setpriv } : {}),
    ...(bounding ? { bounding } : {}),
  };
}

/** Primary group of `uid` in /etc/passwd, or undefined. */
export function primaryGroupOf(uid: number, passwdFile = "/etc/passwd"): number | undefined {
  let text: string;
  try {
    text = readFileSync(passwdFile, "utf8");
  } catch {
    return undefined;
  }
  for (const line of text.split("\n")) {
    const [, , id, gid] = line.split(":");
    if (id !== undefined && gid !== undefined && Number(id) === uid && /^\d+$/.test(gid)) return Number(gid);
  }
  return undefined;
}

const KNOWN = new Set<string>([
  "runAsUser",
  "runAsGroup",
  "runAsNonRoot",
  "readOnlyRootFilesystem",
  "allowPrivilegeEscalation",
  "capabilities",
  "fsGroup",
  "supplementalGroups",
  "seccompProfile",
]);

const NO_SETPRIV = "setpriv (util-linux), which the agent uses for it, was not found on its PATH";

/** Applies or refuses every field of `app.securityContext` for an agent running as `agent`. */
export function planSecurity(
  app: DesiredApp,
  agent: AgentIdentity,
  groupOf: (uid: number) => number | undefined = primaryGroupOf,
): SecurityPlan {
  const sc: DesiredSecurityContext = app.securityContext ?? {};
  const refuse = (field: string, value: unknown, why: string): SecurityPlan => ({
    kind: "refused",
    field: `securityContext.${field}`,
    message: `app ${JSON.stringify(app.name)}: securityContext.${field}=${JSON.stringify(value)} cannot be applied: ${why}`,
  });
  const unknown = Object.keys(sc).find((key) => !KNOWN.has(key));
  if (unknown !== undefined)
    return refuse(unknown, (sc as Record<string, unknown>)[unknown], "the agent does not know this field");

  const root = agent.uid === 0;
  const notRoot = `the agent runs as uid ${agent.uid}, not root`;
  const { setpriv } = agent;
  if (!root) {
    if (sc.runAsUser !== undefined && sc.runAsUser !== agent.uid)
      return refuse("runAsUser", sc.runAsUser, `${notRoot}, and can run apps only as itself`);
    if (sc.runAsGroup !== undefined && sc.runAsGroup !== agent.gid)
      return refuse(
        "runAsGroup",
        sc.runAsGroup,
        `the agent runs as gid ${agent.gid}, not root, and can run apps only as itself`,
      );
  }
  const uid = sc.runAsUser ?? agent.uid;
  const gid =
    sc.runAsGroup ?? (sc.runAsUser === undefined || !root ? agent.gid : (groupOf(sc.runAsUser) ?? 0));

  if (sc.runAsNonRoot === true && uid === 0)
    return refuse("runAsNonRoot", true, "the app would run as uid 0; set runAsUser to a non-zero uid");
  if (sc.readOnlyRootFilesystem === true)
    return refuse(
      "readOnlyRootFilesystem",
      true,
      "apps run as processes on the device's own filesystem; there is no root filesystem of the app's own to make read-only",
    );
  const noNewPrivs = sc.allowPrivilegeEscalation === false;
  if (noNewPrivs && setpriv === undefined)
    return refuse("allowPrivilegeEscalation", false, `the app needs no_new_privs; ${NO_SETPRIV}`);

  const add = sc.capabilities?.add ?? [];
  const drop = sc.capabilities?.drop ?? [];
  for (const [field, names] of [
    ["capabilities.add", add],
    ["capabilities.drop", drop],
  ] as const) {
    const bad = names.find((n) => capabilityNumber(n) === undefined && !(field.endsWith("drop") && isAll(n)));
    if (bad !== undefined)
      return refuse(
        field,
        names,
        isAll(bad)
          ? "the agent does not grant ALL; name the capabilities"
          : `${JSON.stringify(bad)} is not a Linux capability`,
      );
  }
  if (add.length > 0) {
    if (setpriv === undefined) return refuse("capabilities.add", add, `the agent grants none; ${NO_SETPRIV}`);
    if (!root) return refuse("capabilities.add", add, `${notRoot}, and has no capabilities to give`);
    const lacking = add.find((n) => agent.bounding && !agent.bounding.has(capabilityNumber(n) ?? -1));
    if (lacking !== undefined)
      return refuse("capabilities.add", add, `the agent's own bounding set lacks ${lacking}`);
  }
  // Without setpriv a process switched to a non-root uid keeps no capabilities (capabilities(7)),
  // but its bounding set stays whole: documented, and set by setpriv when it is there.
  if (drop.length > 0 && uid === 0 && setpriv === undefined)
    return refuse(
      "capabilities.drop",
      drop,
      `a process running as uid 0 keeps its capabilities; ${NO_SETPRIV}`,
    );

  const groups = [
    ...new Set([...(sc.supplementalGroups ?? []), ...(sc.fsGroup === undefined ? [] : [sc.fsGroup])]),
  ];
  if (groups.some((g) => g !== gid)) {
    const field = sc.fsGroup !== undefined && sc.fsGroup !== gid ? "fsGroup" : "supplementalGroups";
    const value = field === "fsGroup" ? sc.fsGroup : sc.supplementalGroups;
    if (!root) return refuse(field, value, `${notRoot}, and cannot give the app supplementary groups`);
    if (setpriv === undefined)
      return refuse(field, value, `the app would need supplementary groups; ${NO_SETPRIV}`);
  }
  if (sc.seccompProfile?.type === "RuntimeDefault")
    return refuse("seccompProfile", sc.seccompProfile, "the agent installs no seccomp filter");

  const change = root && (uid !== agent.uid || gid !== agent.gid);
  const identity: AppIdentity = { uid, gid, switch: change };
  const files =
    root && sc.fsGroup !== undefined ? { uid, gid: sc.fsGroup } : change ? { uid, gid } : undefined;
  const caps = add.length > 0 || drop.length > 0;
  const needsSetpriv = noNewPrivs || caps || groups.some((g) => g !== gid);
  if (setpriv === undefined || !needsSetpriv) return { kind: "ok", identity, ...(files ? { files } : {}) };
  const privileges: AppPrivileges = {
    ...(change ? { switchTo: { uid, gid } } : {}),
    ...(root ? { groups } : {}),
    noNewPrivs,
    ...(caps
      ? {
          capabilities: {
            dropAll: drop.some(isAll),
            drop: drop.filter((n) => !isAll(n)).map(bareName),
            add: add.map(bareName),
            changeBounding: root,
            ambient: uid !== 0,
          },
        }
      : {}),
  };
  return { kind: "ok", identity, ...(files ? { files } : {}), launch: setprivPrefix(setpriv, privileges) };
}

const isAll = (name: string) => name.toUpperCase() === "ALL";
const bareName = (name: string) => name.toUpperCase().replace(/^CAP_/, "");
