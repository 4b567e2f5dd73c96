/**
 * Looking at devicelet replicas under leader election from outside: the leader Lease as the API
 * server holds it, a replica's `/readyz` (its health port is logged at start), and what each
 * replica wrote, from the harness API server's audit log (each replica's user agent carries its
 * identity: `devicelet/<version> (<identity>)`).
 *
 *   const holder = (await leaderLease(ns, "devicelet"))?.spec?.holderIdentity;
 *   expect(await readyz(replica)).toBe(200);
 *   expect(await leaderGauge(replica)).toBe(1);     // every replica serves /metrics
 *   const writes = auditWrites((e) => e.userAgent.includes(`(${identity})`));
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import type { Lease } from "../../src/kube/index.ts";
import type { DeviceletProcess } from "./devicelet.ts";
import { eventually } from "./eventually.ts";
import { kubectl } from "./kubectl.ts";
import { parsePrometheus, samplesOf } from "./prometheus.ts";
import { testenvDir } from "./testenv.ts";

/** The Lease, or undefined when there is none. */
export async function leaderLease(namespace: string, name: string): Promise<Lease | undefined> {
  const out = await kubectl(["get", "lease", name, "-n", namespace, "-o", "json", "--ignore-not-found"]);
  return out.trim() === "" ? undefined : (JSON.parse(out) as Lease);
}

/** The URL the replica logged (field `url`) on its last line starting with `message`. */
async function loggedUrl(replica: DeviceletProcess, message: string): Promise<string> {
  return eventually(() => {
    const line = replica
      .logLines()
      .filter((l) => typeof l.msg === "string" && l.msg.startsWith(message))
      .at(-1);
    if (typeof line?.url !== "string") throw new Error(`no "${message}" logged yet`);
    return line.url;
  });
}

/** The health endpoints' base URL the replica logged at start (its current run). */
export const healthUrl = (replica: DeviceletProcess) => loggedUrl(replica, "health endpoints on");

/** The value of `devicelet_leader` on the replica's `/metrics`, or undefined when it has none. */
export async function leaderGauge(replica: DeviceletProcess): Promise<number | undefined> {
  const res = await fetch(await loggedUrl(replica, "metrics on"));
  if (!res.ok) throw new Error(`GET /metrics: ${res.status}`);
  return samplesOf(parsePrometheus(await res.text()), "devicelet_leader")[0]?.value;
}

/** The status code of GET /readyz. */
export async function readyz(replica: DeviceletProcess): Promise<number> {
  const res = await fetch(`${await healthUrl(replica)}/readyz`);
  await res.text();
  return res.status;
}

/** One API request of the devicelet user, from the audit log. */
export interface AuditEntry {
  readonly verb: string;
  readonly userAgent: string;
  readonly resource: string;
  readonly namespace: string;
  readonly name: string;
  readonly subresource: string;
  readonly code: number;
  readonly at: number;
}

const writeVerbs = new Set(["create", "update", "patch", "delete", "deletecollection"]);

/** Every write (create/update/patch/delete) the `devicelet` user made that `keep` selects. */
export function auditWrites(keep: (entry: AuditEntry) => boolean): AuditEntry[] {
  const out: AuditEntry[] = [];
  for (const line of readFileSync(path.join(testenvDir, "audit.log"), "utf8").split("\n")) {
    if (!line.includes('"devicelet"')) continue;
    const e = JSON.parse(line) as {
      stage: string;
      verb: string;
      userAgent?: string;
      user: { username: string };
      responseStatus?: { code?: number };
      stageTimestamp: string;
      objectRef?: { resource?: string; namespace?: string; name?: string; subresource?: string };
    };
    if (e.stage !== "ResponseComplete" || e.user.username !== "devicelet" || !writeVerbs.has(e.verb))
      continue;
    const entry: AuditEntry = {
      verb: e.verb,
      userAgent: e.userAgent ?? "",
      resource: e.objectRef?.resource ?? "",
      namespace: e.objectRef?.namespace ?? "",
      name: e.objectRef?.name ?? "",
      subresource: e.objectRef?.subresource ?? "",
      code: e.responseStatus?.code ?? 0,
      at: Date.parse(e.stageTimestamp),
    };
    if (keep(entry)) out.push(entry);
  }
  return out;
}

/** `devicelet/<version> (<identity>)` carries the identity in parentheses. */
export const byReplica = (identity: string) => (entry: AuditEntry) =>
  entry.userAgent.includes(`(${identity})`);
