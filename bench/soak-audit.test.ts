import { describe, expect, it } from "vitest";
import type { DesiredDocument } from "../src/protocol/types.ts";
import {
  auditSoak,
  canonicalJson,
  contentDiff,
  expectedFromKubernetes,
  summarizeDesired,
  type ApplyRecord,
  type DesiredSeen,
  type PodContent,
  type SoakRecords,
} from "./soak-audit.ts";

const pod = (uid: string, version = "1", config = "a"): PodContent => ({
  uid,
  env: { app: { VERSION: version } },
  files: { app: { "/etc/soak/config.txt": config } },
});

const seen = (
  generation: number,
  pods: PodContent[],
  o: { device?: string; at?: number; contentKey?: string } = {},
): DesiredSeen => ({
  device: o.device ?? "gw-0",
  epoch: "e1",
  generation,
  contentKey: o.contentKey ?? canonicalJson(pods),
  pods,
  at: o.at ?? generation * 10,
});

const apply = (generation: number, at = generation * 10 + 5, device = "gw-0"): ApplyRecord => ({
  device,
  epoch: "e1",
  generation,
  at,
});

/** A clean run: one device that applied two generations and runs what Kubernetes wants. */
function clean(): SoakRecords {
  return {
    desired: [seen(1, [pod("p1")]), seen(2, [pod("p1"), pod("p2")])],
    applies: [apply(1), apply(2)],
    running: [{ device: "gw-0", at: 30, uids: ["p1", "p2"] }],
    deleted: new Set(),
    expected: new Map([["gw-0", [pod("p1"), pod("p2")]]]),
    finals: [{ device: "gw-0", running: ["p1", "p2"] }],
    ready: [{ node: "gw-0", ready: true, at: 1 }],
    evictions: [],
  };
}

describe("auditSoak", () => {
  it("counts nothing for a clean run", () => {
    const { counts, findings } = auditSoak(clean());
    expect(counts).toEqual({
      changesLost: 0,
      generationsAppliedTwice: 0,
      podsResurrected: 0,
      nodesEverNotReady: 0,
      podsEvicted: 0,
    });
    expect(findings).toEqual([]);
    expect(auditSoak(clean()).podsChecked).toBe(2);
  });

  it("counts a generation applied twice", () => {
    const r = clean();
    const { counts } = auditSoak({ ...r, applies: [apply(1), apply(2), apply(2, 40)] });
    expect(counts.generationsAppliedTwice).toBe(1);
  });

  it("counts one generation published with two contents once", () => {
    const r = clean();
    const other = seen(2, [pod("p1"), pod("p3")], { at: 22 });
    const { counts } = auditSoak({ ...r, desired: [...r.desired, other, { ...other, at: 23 }] });
    expect(counts.generationsAppliedTwice).toBe(1);
  });

  it("does not count a retained redelivery of the same content", () => {
    const r = clean();
    const again = seen(2, [pod("p1"), pod("p2")], { at: 50 });
    expect(auditSoak({ ...r, desired: [...r.desired, again] }).counts.generationsAppliedTwice).toBe(0);
  });

  it("counts a pod Kubernetes wants that the device does not run", () => {
    const r = clean();
    const { counts } = auditSoak({ ...r, finals: [{ device: "gw-0", running: ["p1"] }] });
    expect(counts.changesLost).toBe(1);
  });

  it("counts a pod the device still runs after Kubernetes removed it", () => {
    const r = clean();
    const { counts } = auditSoak({ ...r, expected: new Map([["gw-0", [pod("p1")]]]) });
    expect(counts.changesLost).toBe(1);
  });

  it("counts a config edit that never reached the device", () => {
    const r = clean();
    const { counts, findings } = auditSoak({
      ...r,
      expected: new Map([["gw-0", [pod("p1"), pod("p2", "1", "b")]]]),
    });
    expect(counts.changesLost).toBe(1);
    expect(findings[0]).toContain("config.txt");
  });

  it("judges content by the last applied document, not the last published one", () => {
    const r = clean();
    const newer = seen(3, [pod("p1"), pod("p2", "2")]);
    const { counts } = auditSoak({
      ...r,
      desired: [...r.desired, newer],
      expected: new Map([["gw-0", [pod("p1"), pod("p2", "2")]]]),
    });
    expect(counts.changesLost).toBe(1);
  });

  it("counts a deleted pod applied again after the device confirmed it stopped", () => {
    const r = clean();
    const { counts } = auditSoak({
      ...r,
      desired: [...r.desired, seen(3, [pod("p1")]), seen(4, [pod("p1"), pod("p2")])],
      applies: [apply(1), apply(2), apply(3), apply(4)],
      deleted: new Set(["p2"]),
    });
    expect(counts.podsResurrected).toBe(1);
  });

  it("counts a deleted pod seen running after the device confirmed it stopped", () => {
    const r = clean();
    const { counts } = auditSoak({
      ...r,
      desired: [...r.desired, seen(3, [pod("p1")])],
      applies: [apply(1), apply(2), apply(3)],
      running: [
        { device: "gw-0", at: 30, uids: ["p1", "p2"] },
        { device: "gw-0", at: 40, uids: ["p1"] },
        { device: "gw-0", at: 60, uids: ["p1", "p2"] },
      ],
      deleted: new Set(["p2"]),
      expected: new Map([["gw-0", [pod("p1")]]]),
      finals: [{ device: "gw-0", running: ["p1"] }],
    });
    expect(counts.podsResurrected).toBe(1);
  });

  it("does not count a deleted pod still running before the device confirmed it stopped", () => {
    const r = clean();
    const { counts } = auditSoak({
      ...r,
      desired: [...r.desired, seen(3, [pod("p1")])],
      applies: [apply(1), apply(2), apply(3, 70)],
      running: [{ device: "gw-0", at: 60, uids: ["p1", "p2"] }],
      deleted: new Set(["p2"]),
      expected: new Map([["gw-0", [pod("p1")]]]),
      finals: [{ device: "gw-0", running: ["p1"] }],
    });
    expect(counts.podsResurrected).toBe(0);
  });

  it("counts each node that was ever not Ready once", () => {
    const r = clean();
    const ready = [
      { node: "gw-0", ready: false, at: 2 },
      { node: "gw-0", ready: false, at: 3 },
      { node: "gw-1", ready: true, at: 3 },
    ];
    expect(auditSoak({ ...r, ready }).counts.nodesEverNotReady).toBe(1);
  });

  it("counts each evicted pod once", () => {
    const r = clean();
    const evictions = [
      { uid: "p1", why: "TaintManagerEviction" },
      { uid: "p1", why: "DisruptionTarget" },
    ];
    expect(auditSoak({ ...r, evictions }).counts.podsEvicted).toBe(1);
  });
});

describe("summarizeDesired", () => {
  const doc = (pods: DesiredDocument["pods"]): DesiredDocument => ({
    protocol: 1,
    kind: "desired",
    deviceId: "gw-0",
    epoch: "e1",
    generation: 7,
    issuedAt: new Date(0).toISOString(),
    pods,
    tombstones: [],
    contentHash: "x",
  });
  const desiredPod = (content: string, encoding: "utf8" | "base64") => ({
    uid: "p1",
    namespace: "ns",
    name: "p",
    hash: "h",
    restartPolicy: "Always" as const,
    terminationGracePeriodSeconds: 1,
    apps: [
      {
        name: "app",
        image: "i",
        command: [],
        args: [],
        env: { VERSION: "3" },
        files: [{ path: "/etc/soak/config.txt", encoding, content }],
      },
    ],
  });

  it("decodes files and keys the content regardless of issue time", () => {
    const a = summarizeDesired(doc([desiredPod("hello", "utf8")]), 1);
    const b = summarizeDesired(
      { ...doc([desiredPod(Buffer.from("hello").toString("base64"), "base64")]), issuedAt: "later" },
      2,
    );
    expect(a.pods[0]?.files["app"]?.["/etc/soak/config.txt"]).toBe("hello");
    expect(contentDiff(a.pods[0] ?? pod("none"), b.pods[0] ?? pod("none"))).toBeUndefined();
    expect(a.contentKey).not.toBe(b.contentKey);
    expect(summarizeDesired({ ...doc([desiredPod("hello", "utf8")]), issuedAt: "later" }, 3).contentKey).toBe(
      a.contentKey,
    );
  });
});

describe("expectedFromKubernetes", () => {
  const kubePod = (uid: string, o: { node?: string; deleting?: boolean; phase?: string } = {}) => ({
    metadata: { uid, ...(o.deleting ? { deletionTimestamp: "2026-01-01T00:00:00Z" } : {}) },
    spec: {
      ...(o.node === undefined ? {} : { nodeName: o.node }),
      containers: [
        {
          name: "app",
          env: [{ name: "VERSION", value: "4" }, { name: "FROM_REF" }],
          volumeMounts: [{ name: "config", mountPath: "/etc/soak/" }],
        },
      ],
      volumes: [{ name: "config", configMap: { name: "soak-config" } }],
    },
    status: { phase: o.phase ?? "Running" },
  });

  it("wants bound, live pods with their literal env and the ConfigMap's current files", () => {
    const expected = expectedFromKubernetes(
      [
        kubePod("p1", { node: "gw-0" }),
        kubePod("pending"),
        kubePod("going", { node: "gw-0", deleting: true }),
        kubePod("done", { node: "gw-0", phase: "Succeeded" }),
      ],
      new Map([["soak-config", { "config.txt": "version 9\n" }]]),
    );
    expect([...expected.entries()]).toEqual([
      [
        "gw-0",
        [
          {
            uid: "p1",
            env: { app: { VERSION: "4" } },
            files: { app: { "/etc/soak/config.txt": "version 9\n" } },
          },
        ],
      ],
    ]);
  });
});
