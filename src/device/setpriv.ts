/**
 * Launching an app through util-linux `setpriv`, for the parts of a `securityContext` that Node's
 * `spawn` cannot set (security.ts decides which apply): no_new_privs, the capability sets, and
 * supplementary groups.
 *
 *   const setpriv = findSetpriv();                       // once, at agent start; undefined if absent
 *   const prefix = setprivPrefix(setpriv, privileges);   // ["/usr/bin/setpriv", "--reuid", …, "--"]
 *   spawn(prefix[0], [...prefix.slice(1), file, ...args]);
 *
 * setpriv changes its own process and then execs the app in place (same pid, same environment,
 * same process group), so supervision, signals and the pid file see the app itself. The capability
 * rules it relies on are capabilities(7) "Transformation of capabilities during execve()": after
 * exec, a non-root process's permitted set is its ambient set (ambient capabilities need Linux
 * 4.3), and root's is its inheritable set plus its bounding set.
 */
import { accessSync, constants, readFileSync } from "node:fs";
import path from "node:path";

/** Linux capability names (capabilities(7)) by number, without the `CAP_` prefix. */
const CAPABILITIES = [
  "CHOWN",
  "DAC_OVERRIDE",
  "DAC_READ_SEARCH",
  "FOWNER",
  "FSETID",
  "KILL",
  "SETGID",
  "SETUID",
  "SETPCAP",
  "LINUX_IMMUTABLE",
  "NET_BIND_SERVICE",
  "NET_BROADCAST",
  "NET_ADMIN",
  "NET_RAW",
  "IPC_LOCK",
  "IPC_OWNER",
  "SYS_MODULE",
  "SYS_RAWIO",
  "SYS_CHROOT",
  "SYS_PTRACE",
  "SYS_PACCT",
  "SYS_ADMIN",
  "SYS_BOOT",
  "SYS_NICE",
  "SYS_RESOURCE",
  "SYS_TIME",
  "SYS_TTY_CONFIG",
  "MKNOD",
  "LEASE",
  "AUDIT_WRITE",
  "AUDIT_CONTROL",
  "SETFCAP",
  "MAC_OVERRIDE",
  "MAC_ADMIN",
  "SYSLOG",
  "WAKE_ALARM",
  "BLOCK_SUSPEND",
  "AUDIT_READ",
  "PERFMON",
  "BPF",
  "CHECKPOINT_RESTORE",
] as const;

/**
 * The capability number for a name as Kubernetes writes it (`NET_ADMIN`; `CAP_NET_ADMIN` and any
 * case also accepted, as container runtimes do), or undefined for a name Linux does not have.
 */
export function capabilityNumber(name: string): number | undefined {
  const bare = name.toUpperCase().replace(/^CAP_/, "");
  const index = (CAPABILITIES as readonly string[]).indexOf(bare);
  return index < 0 ? undefined : index;
}

/** The first executable `setpriv` on `searchPath` (default `$PATH`), or undefined. */
export function findSetpriv(searchPath = process.env.PATH ?? ""): string | undefined {
  for (const dir of searchPath.split(path.delimiter)) {
    if (!path.isAbsolute(dir)) continue;
    const candidate = path.join(dir, "setpriv");
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * The capability numbers in this process's bounding set (`CapBnd` of /proc/self/status), or
 * undefined where there is no such file: what an app could at most be given.
 */
export function agentBoundingSet(statusFile = "/proc/self/status"): ReadonlySet<number> | undefined {
  let hex: string | undefined;
  try {
    hex = /^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync(statusFile, "utf8"))?.[1];
  } catch {
    return undefined;
  }
  if (hex === undefined) return undefined;
  const mask = BigInt(`0x${hex}`);
  const set = new Set<number>();
  for (let n = 0; n < 64; n++) if ((mask >> BigInt(n)) & 1n) set.add(n);
  return set;
}

/** What setpriv sets before it execs the app; every field already checked by security.ts. */
export interface AppPrivileges {
  /** Switch to this uid and gid (only an agent running as root does). */
  readonly switchTo?: { readonly uid: number; readonly gid: number };
  /** Supplementary groups; empty clears them. Undefined: left as they are (an agent not root). */
  readonly groups?: readonly number[];
  readonly noNewPrivs: boolean;
  /**
   * Capabilities, or undefined to leave them as they are. `bounding` undefined: left as it is (an
   * agent not root cannot change it); `keep` are names (upper case, no prefix) kept or raised.
   */
  readonly capabilities?: {
    readonly dropAll: boolean;
    readonly drop: readonly string[];
    readonly add: readonly string[];
    readonly changeBounding: boolean;
    /** Raise `add` in the inheritable and ambient sets (a non-root uid gets them only so). */
    readonly ambient: boolean;
  };
}

/** The argv prefix that makes setpriv (at `setpriv`) apply `privileges` and exec what follows. */
export function setprivPrefix(setpriv: string, privileges: AppPrivileges): string[] {
  const argv = [setpriv];
  const { switchTo, groups, capabilities: caps } = privileges;
  if (switchTo) argv.push("--reuid", String(switchTo.uid), "--regid", String(switchTo.gid));
  if (groups) argv.push(...(groups.length > 0 ? ["--groups", groups.join(",")] : ["--clear-groups"]));
  if (privileges.noNewPrivs) argv.push("--no-new-privs");
  if (caps) {
    const lower = (names: readonly string[], sign: string) => names.map((n) => `${sign}${n.toLowerCase()}`);
    const raised = caps.ambient ? lower(caps.add, "+") : [];
    // Inheritable and ambient start empty: a root app's capabilities then come from the bounding set only.
    argv.push(`--inh-caps=${["-all", ...raised].join(",")}`);
    argv.push(`--ambient-caps=${["-all", ...raised].join(",")}`);
    if (caps.changeBounding) {
      const bounding = [...(caps.dropAll ? ["-all"] : lower(caps.drop, "-")), ...lower(caps.add, "+")];
      if (bounding.length > 0) argv.push(`--bounding-set=${bounding.join(",")}`);
    }
  }
  argv.push("--");
  return argv;
}
