/**
 * Rules a JSON Schema cannot state plainly: relations between fields (`a` at most `b`, `cert`
 * needs `key`) and facts outside the document (a file named in it exists and is readable). Each
 * rule answers problems, never throws; {@link parseConfig} reports them together with the schema's,
 * skipping a relation when one of the fields it involves is already reported invalid.
 *
 * A provider attaches its rules to its schema object with `registerConfigCheck(schema, check)`;
 * they then run wherever that schema validates (`parseConfig`, `validateWithSchema`).
 *
 * ```ts
 * const check: ConfigCheck = (c) => [
 *   ...atMost(c, "/reconnect/minDelayMs", "/reconnect/maxDelayMs"),
 *   ...readableFile(c, "/passwordFile"),
 * ];
 * ```
 */
import { statSync, accessSync, constants } from "node:fs";
import { podIpRangeProblem } from "../pod/ip.ts";
import type { ConfigProblem } from "./problem.ts";

/** A problem a rule found; `involves` lists every path the rule read (default: `path`). */
export interface RuleProblem extends ConfigProblem {
  readonly involves?: readonly string[];
}

/** Rules over a validated, defaulted object; paths are JSON pointers into that object. */
export type ConfigCheck = (config: unknown) => readonly RuleProblem[];

/** The value at a JSON pointer (`/broker/tls/cert`), or undefined. Own properties only. */
export const valueAt = (data: unknown, pointer: string): unknown => {
  let node: unknown = data;
  for (const raw of pointer.split("/").slice(1)) {
    const key = raw.replaceAll("~1", "/").replaceAll("~0", "~");
    if (typeof node !== "object" || node === null || !Object.hasOwn(node, key)) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
};

type Relation = "less than" | "at most" | "at least";

/** `small` must be `relation` `big`, when both are numbers. */
export const compare = (data: unknown, small: string, big: string, relation: Relation): RuleProblem[] => {
  const a = valueAt(data, small);
  const b = valueAt(data, big);
  if (typeof a !== "number" || typeof b !== "number") return [];
  const broken = relation === "less than" ? a >= b : relation === "at most" ? a > b : a < b;
  return broken
    ? [{ path: small, message: `must be ${relation} ${big} (${b})`, involves: [small, big] }]
    : [];
};

/** When one of `a` and `b` is set, the other must be too. */
export const together = (data: unknown, a: string, b: string): RuleProblem[] => {
  const [hasA, hasB] = [valueAt(data, a) !== undefined, valueAt(data, b) !== undefined];
  if (hasA === hasB) return [];
  const [missing, given] = hasA ? [b, a] : [a, b];
  return [{ path: missing, message: `is required when ${given} is set`, involves: [a, b] }];
};

/**
 * Why the file at `path` cannot be read by this process, or undefined when it can. Relative paths
 * are read from the working directory, as the code that opens them later does.
 */
export const fileProblem = (path: string): string | undefined => {
  try {
    if (!statSync(path).isFile()) return `${JSON.stringify(path)} is not a regular file`;
    accessSync(path, constants.R_OK);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return `file ${JSON.stringify(path)} does not exist`;
    if (code === "EACCES" || code === "EPERM") return `file ${JSON.stringify(path)} is not readable`;
    return `file ${JSON.stringify(path)} cannot be read: ${(err as Error).message}`;
  }
};

/** The file named at `pointer`, when set, must exist and be readable now. */
export const readableFile = (data: unknown, pointer: string): RuleProblem[] => {
  const path = valueAt(data, pointer);
  if (typeof path !== "string" || path === "") return [];
  const problem = fileProblem(path);
  return problem === undefined ? [] : [{ path: pointer, message: problem }];
};

/** The core file's rules. */
export const coreChecks: ConfigCheck = (data) => {
  const ipRange = valueAt(data, "/pods/ipRange");
  const rangeProblem = typeof ipRange === "string" ? podIpRangeProblem(ipRange) : undefined;
  return [
    ...compare(data, "/lease/renewIntervalSeconds", "/lease/durationSeconds", "less than"),
    ...compare(data, "/pods/baseRetryDelayMs", "/pods/maxRetryDelayMs", "at most"),
    ...compare(data, "/api/burst", "/api/qps", "at least"),
    ...compare(data, "/api/heartbeatBurst", "/api/heartbeatQps", "at least"),
    ...compare(data, "/api/eventBurst", "/api/eventQps", "at least"),
    ...(rangeProblem === undefined ? [] : [{ path: "/pods/ipRange", message: rangeProblem }]),
    ...readableFile(data, "/kubeconfig"),
    ...kubeletChecks(data),
    ...leaderElectionChecks(data),
  ];
};

/**
 * `leaderElection`, when enabled: client-go's relations (a leader steps down before a standby may
 * take over; it tries to renew more than once before it does), and a failover that fits inside
 * the node leases: a standby sees a dead leader's lease expire at most `leaseDuration` plus one
 * jittered retry (`retryPeriod` × 2.2) after it last changed, well before any node lease runs out.
 */
const leaderElectionChecks: ConfigCheck = (data) => {
  const sharding = valueAt(data, "/sharding/enabled") === true;
  if (sharding && valueAt(data, "/leaderElection/enabled") === true) {
    return [
      {
        path: "/sharding/enabled",
        message:
          "cannot be true with /leaderElection/enabled: sharding runs its own membership (set leaderElection.enabled to false)",
        involves: ["/sharding/enabled", "/leaderElection/enabled"],
      },
    ];
  }
  // Sharding uses leaderElection's identity and timings, with the same relations.
  if (!sharding && valueAt(data, "/leaderElection/enabled") !== true) return [];
  const lease = "/leaderElection/leaseDurationSeconds";
  const renew = "/leaderElection/renewDeadlineSeconds";
  const retry = "/leaderElection/retryPeriodSeconds";
  const nodeLease = "/lease/durationSeconds";
  const problems = compare(data, renew, lease, "less than");
  const [renewS, retryS, leaseS, nodeLeaseS] = [renew, retry, lease, nodeLease].map((p) => valueAt(data, p));
  if (typeof renewS === "number" && typeof retryS === "number" && !(renewS > retryS * 1.2)) {
    problems.push({
      path: retry,
      message: `must be less than ${renew} (${renewS}) divided by 1.2 (client-go's jitter factor)`,
      involves: [retry, renew],
    });
  }
  if (
    typeof leaseS === "number" &&
    typeof retryS === "number" &&
    typeof nodeLeaseS === "number" &&
    !(leaseS + retryS * 2.2 < nodeLeaseS)
  ) {
    problems.push({
      path: lease,
      message:
        `plus ${retry} × 2.2 (${String(Math.round((leaseS + retryS * 2.2) * 10) / 10)}) must be less than ${nodeLease} ` +
        `(${nodeLeaseS}), so a standby takes over before any node goes NotReady`,
      involves: [lease, retry, nodeLease],
    });
  }
  return problems;
};

/** The `kubelet` section: the port range fits, and the chosen certificate source has what it needs. */
const kubeletChecks: ConfigCheck = (data) => {
  const problems: RuleProblem[] = [];
  const port = valueAt(data, "/kubelet/port");
  const count = valueAt(data, "/kubelet/portCount");
  if (typeof port === "number" && typeof count === "number" && port !== 0 && port + count - 1 > 65535) {
    problems.push({
      path: "/kubelet/portCount",
      message: `the range ${port}..${port + count - 1} goes past port 65535`,
      involves: ["/kubelet/port", "/kubelet/portCount"],
    });
  }
  // What the certificate needs matters only when the kubelet API is served.
  if (valueAt(data, "/kubelet/serve") === false) return problems;
  const source = valueAt(data, "/kubelet/tls/source");
  const needs = (field: string) =>
    valueAt(data, field) === ""
      ? [
          {
            path: field,
            message: `is required when /kubelet/tls/source is ${String(source)}`,
            involves: [field, "/kubelet/tls/source"],
          },
        ]
      : [];
  if (source === "files") {
    problems.push(...needs("/kubelet/tls/certFile"), ...needs("/kubelet/tls/keyFile"));
    problems.push(
      ...readableFile(data, "/kubelet/tls/certFile"),
      ...readableFile(data, "/kubelet/tls/keyFile"),
    );
  }
  if (source === "secret") problems.push(...needs("/kubelet/tls/secretName"));
  problems.push(...readableFile(data, "/kubelet/clientCAFile"));
  return problems;
};
