/**
 * The soak's audit: pure functions over what the soak recorded (desired documents seen on the
 * broker, applies and running apps sampled from each simulated device, node Ready samples,
 * evictions) and what Kubernetes says at the end. No I/O, so each counter is unit-tested with
 * synthetic records (soak-audit.test.ts).
 *
 *   const summary = summarizeDesired(doc);                 // for every desired document seen
 *   const result = auditSoak({ desired, applies, running, deleted, expected, finals, ... });
 *   result.counts.changesLost;                             // every counter must be 0
 *
 * Definitions (each counted once per offending thing):
 * - changes lost: after the settle period, per device node, a pod Kubernetes wants running that the
 *   device does not run, a pod the device runs that Kubernetes does not want, or a pod whose
 *   applied content (env of each app, mounted files) differs from what Kubernetes holds.
 * - generations applied twice: a device applying one (epoch, generation) more than once, and a
 *   (device, epoch, generation) published with two different contents.
 * - pods resurrected: a pod deleted in Kubernetes that a device ran, then confirmed stopped (it
 *   applied a document without it), and then ran again (a later applied document carries it, or a
 *   later sample shows its app running).
 * - nodes ever NotReady: distinct nodes with any Ready sample other than True.
 * - pods evicted: distinct pod uids evicted (taint-manager Event, DisruptionTarget condition).
 */
import { createHash } from "node:crypto";
import type { DesiredDocument } from "../src/protocol/types.ts";

/** What the audit needs of one pod of a desired document or of a Kubernetes pod. */
export interface PodContent {
  readonly uid: string;
  /** App name → literal env values (only names the pod spec sets to a literal `value`). */
  readonly env: Readonly<Record<string, Readonly<Record<string, string>>>>;
  /** App name → file path → content as UTF-8 text. */
  readonly files: Readonly<Record<string, Readonly<Record<string, string>>>>;
}

/** A desired document as the soak saw it on the broker. */
export interface DesiredSeen {
  readonly device: string;
  readonly epoch: string;
  readonly generation: number;
  /** sha256 of the canonical JSON of the document's pods and tombstones (computed by the soak). */
  readonly contentKey: string;
  readonly pods: readonly PodContent[];
  readonly at: number;
}

/** One apply of a device, in the device's own order; `at` is when the soak first saw it. */
export interface ApplyRecord {
  readonly device: string;
  readonly epoch: string;
  readonly generation: number;
  readonly at: number;
}

/** The uids a device had running when sampled. */
export interface RunningSample {
  readonly device: string;
  readonly at: number;
  readonly uids: readonly string[];
}

/** A device at the end: what it runs. Its applied content comes from its last apply. */
export interface DeviceFinal {
  readonly device: string;
  readonly running: readonly string[];
}

export interface ReadySample {
  readonly node: string;
  readonly ready: boolean;
  readonly at: number;
  /** The Ready condition as seen (status, reason, message), for the finding. */
  readonly detail?: string;
}

export interface Eviction {
  readonly uid: string;
  readonly why: string;
}

export interface SoakRecords {
  readonly desired: readonly DesiredSeen[];
  readonly applies: readonly ApplyRecord[];
  readonly running: readonly RunningSample[];
  /** Uids of pods the soak saw deleted in Kubernetes (deletionTimestamp set, or gone). */
  readonly deleted: ReadonlySet<string>;
  /** Node (= device id) → pods Kubernetes wants running there at the end. */
  readonly expected: ReadonlyMap<string, readonly PodContent[]>;
  readonly finals: readonly DeviceFinal[];
  readonly ready: readonly ReadySample[];
  readonly evictions: readonly Eviction[];
}

export interface SoakCounts {
  readonly changesLost: number;
  readonly generationsAppliedTwice: number;
  readonly podsResurrected: number;
  readonly nodesEverNotReady: number;
  readonly podsEvicted: number;
}

export interface SoakAudit {
  readonly counts: SoakCounts;
  /** Pods Kubernetes wanted running at the end, each checked against its device. */
  readonly podsChecked: number;
  /** One line per counted problem, to say what was found. */
  readonly findings: readonly string[];
}

/** JSON with object keys sorted, so equal content always hashes equal. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** The audit's view of a desired document received for `device` at `at`. */
export function summarizeDesired(doc: DesiredDocument, at: number): DesiredSeen {
  const contentKey = createHash("sha256")
    .update(canonicalJson({ pods: doc.pods, tombstones: doc.tombstones }))
    .digest("hex");
  const pods = doc.pods.map((p): PodContent => {
    const env: Record<string, Record<string, string>> = {};
    const files: Record<string, Record<string, string>> = {};
    for (const app of p.apps) {
      env[app.name] = { ...app.env };
      const byPath: Record<string, string> = {};
      for (const f of app.files) {
        if ("content" in f)
          byPath[f.path] =
            f.encoding === "base64" ? Buffer.from(f.content, "base64").toString("utf8") : f.content;
      }
      files[app.name] = byPath;
    }
    return { uid: p.uid, env, files };
  });
  return { device: doc.deviceId, epoch: doc.epoch, generation: doc.generation, contentKey, pods, at };
}

const generationKey = (device: string, epoch: string, generation: number) =>
  `${device}\u0000${epoch}\u0000${generation}`;

/** Runs every counter over `r`. */
export function auditSoak(r: SoakRecords): SoakAudit {
  const findings: string[] = [];
  const desiredByKey = new Map<string, DesiredSeen[]>();
  for (const d of r.desired) {
    const key = generationKey(d.device, d.epoch, d.generation);
    desiredByKey.set(key, [...(desiredByKey.get(key) ?? []), d]);
  }
  /** The content of an apply: the document seen last before it (several only when contents differ). */
  const contentOf = (a: ApplyRecord): DesiredSeen | undefined => {
    const seen = desiredByKey.get(generationKey(a.device, a.epoch, a.generation)) ?? [];
    return seen.filter((d) => d.at <= a.at).at(-1) ?? seen[0];
  };
  const appliesByDevice = groupBy(r.applies, (a) => a.device);
  const counts: SoakCounts = {
    generationsAppliedTwice: countTwice(r, desiredByKey, findings),
    podsResurrected: countResurrected(r, appliesByDevice, contentOf, findings),
    changesLost: countLost(r, appliesByDevice, contentOf, findings),
    nodesEverNotReady: countNotReady(r, findings),
    podsEvicted: countEvicted(r, findings),
  };
  const podsChecked = [...r.expected.values()].reduce((n, pods) => n + pods.length, 0);
  return { counts, podsChecked, findings };
}

function groupBy<T>(items: readonly T[], key: (item: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const list = out.get(k);
    if (list) list.push(item);
    else out.set(k, [item]);
  }
  return out;
}

function countTwice(r: SoakRecords, desiredByKey: Map<string, DesiredSeen[]>, findings: string[]): number {
  let count = 0;
  const applied = new Map<string, number>();
  for (const a of r.applies) {
    const key = generationKey(a.device, a.epoch, a.generation);
    const times = (applied.get(key) ?? 0) + 1;
    applied.set(key, times);
    if (times > 1) {
      count++;
      findings.push(`${a.device} applied (${a.epoch}, ${a.generation}) ${times} times`);
    }
  }
  for (const seen of desiredByKey.values()) {
    const contents = new Set(seen.map((d) => d.contentKey));
    const first = seen[0];
    if (contents.size > 1 && first) {
      count++;
      findings.push(
        `${first.device} received (${first.epoch}, ${first.generation}) with ${contents.size} different contents`,
      );
    }
  }
  return count;
}

function countResurrected(
  r: SoakRecords,
  appliesByDevice: Map<string, ApplyRecord[]>,
  contentOf: (a: ApplyRecord) => DesiredSeen | undefined,
  findings: string[],
): number {
  const resurrected = new Set<string>();
  const samplesByDevice = groupBy(r.running, (s) => s.device);
  for (const [device, applies] of appliesByDevice) {
    /** uid → when the device confirmed it stopped (applied a document without it, after running it). */
    const stoppedAt = new Map<string, number>();
    const ran = new Set<string>();
    for (const a of applies) {
      const content = contentOf(a);
      if (!content) continue;
      const uids = new Set(content.pods.map((p) => p.uid));
      for (const uid of uids) {
        if (stoppedAt.has(uid) && r.deleted.has(uid) && !resurrected.has(uid)) {
          resurrected.add(uid);
          findings.push(`${device} applied deleted pod ${uid} again in generation ${a.generation}`);
        }
        ran.add(uid);
      }
      for (const uid of ran) if (!uids.has(uid) && !stoppedAt.has(uid)) stoppedAt.set(uid, a.at);
    }
    for (const s of samplesByDevice.get(device) ?? []) {
      for (const uid of s.uids) {
        const stopped = stoppedAt.get(uid);
        if (stopped !== undefined && s.at > stopped && r.deleted.has(uid) && !resurrected.has(uid)) {
          resurrected.add(uid);
          findings.push(`${device} ran deleted pod ${uid} again after confirming it stopped`);
        }
      }
    }
  }
  return resurrected.size;
}

function countLost(
  r: SoakRecords,
  appliesByDevice: Map<string, ApplyRecord[]>,
  contentOf: (a: ApplyRecord) => DesiredSeen | undefined,
  findings: string[],
): number {
  let lost = 0;
  const finals = new Map(r.finals.map((f) => [f.device, f]));
  const nodes = new Set([...r.expected.keys(), ...finals.keys()]);
  for (const node of nodes) {
    const want = r.expected.get(node) ?? [];
    const running = new Set(finals.get(node)?.running ?? []);
    const wantUids = new Set(want.map((p) => p.uid));
    for (const uid of running) {
      if (!wantUids.has(uid)) {
        lost++;
        findings.push(`${node} still runs pod ${uid}, which Kubernetes no longer runs there`);
      }
    }
    const last = appliesByDevice.get(node)?.at(-1);
    const applied = last ? contentOf(last) : undefined;
    for (const pod of want) {
      if (!running.has(pod.uid)) {
        lost++;
        findings.push(`${node} does not run pod ${pod.uid}`);
        continue;
      }
      const got = applied?.pods.find((p) => p.uid === pod.uid);
      const why = got ? contentDiff(pod, got) : "its last applied document was not seen";
      if (why !== undefined) {
        lost++;
        findings.push(`${node} runs pod ${pod.uid} with stale content: ${why}`);
      }
    }
  }
  return lost;
}

/** Where `got` differs from `want` (env each app sets literally, and every mounted file); undefined if not. */
export function contentDiff(want: PodContent, got: PodContent): string | undefined {
  for (const [app, env] of Object.entries(want.env)) {
    for (const [name, value] of Object.entries(env)) {
      const actual = got.env[app]?.[name];
      if (actual !== value) return `app ${app} env ${name}=${String(actual)}, want ${value}`;
    }
  }
  for (const [app, files] of Object.entries(want.files)) {
    for (const [file, content] of Object.entries(files)) {
      const actual = got.files[app]?.[file];
      if (actual !== content) return `app ${app} file ${file} is ${JSON.stringify(actual)}, want ${content}`;
    }
  }
  return undefined;
}

function countNotReady(r: SoakRecords, findings: string[]): number {
  const nodes = new Set<string>();
  for (const s of r.ready) {
    if (s.ready || nodes.has(s.node)) continue;
    nodes.add(s.node);
    findings.push(
      `node ${s.node} not Ready at ${new Date(s.at).toISOString()}${s.detail ? ` (${s.detail})` : ""}`,
    );
  }
  return nodes.size;
}

function countEvicted(r: SoakRecords, findings: string[]): number {
  const uids = new Set<string>();
  for (const e of r.evictions) {
    if (uids.has(e.uid)) continue;
    uids.add(e.uid);
    findings.push(`pod ${e.uid} evicted: ${e.why}`);
  }
  return uids.size;
}

/** The parts of a Kubernetes pod and ConfigMap the expected state is read from. */
export interface KubePodView {
  metadata: { uid: string; deletionTimestamp?: string };
  spec: {
    nodeName?: string;
    containers: {
      name: string;
      env?: { name: string; value?: string }[];
      volumeMounts?: { name: string; mountPath: string; subPath?: string }[];
    }[];
    volumes?: { name: string; configMap?: { name: string; items?: unknown[] } }[];
  };
  status?: { phase?: string };
}

/**
 * Node → pods Kubernetes wants running there: bound, not deleted, not finished; with each
 * container's literal env and the files of ConfigMap volumes (whole ConfigMaps, no `items` or
 * `subPath`) as the ConfigMaps hold them now.
 */
export function expectedFromKubernetes(
  pods: readonly KubePodView[],
  configMaps: ReadonlyMap<string, Readonly<Record<string, string>>>,
): Map<string, PodContent[]> {
  const out = new Map<string, PodContent[]>();
  for (const pod of pods) {
    const node = pod.spec.nodeName;
    const phase = pod.status?.phase;
    if (!node || pod.metadata.deletionTimestamp || phase === "Succeeded" || phase === "Failed") continue;
    const env: Record<string, Record<string, string>> = {};
    const files: Record<string, Record<string, string>> = {};
    for (const c of pod.spec.containers) {
      env[c.name] = Object.fromEntries(
        (c.env ?? []).flatMap((e) => (e.value === undefined ? [] : [[e.name, e.value]])),
      );
      const byPath: Record<string, string> = {};
      for (const m of c.volumeMounts ?? []) {
        const source = pod.spec.volumes?.find((v) => v.name === m.name)?.configMap;
        if (!source || source.items || m.subPath) continue;
        for (const [key, value] of Object.entries(configMaps.get(source.name) ?? {}))
          byPath[`${m.mountPath.replace(/\/+$/, "")}/${key}`] = value;
      }
      files[c.name] = byPath;
    }
    out.set(node, [...(out.get(node) ?? []), { uid: pod.metadata.uid, env, files }]);
  }
  return out;
}
