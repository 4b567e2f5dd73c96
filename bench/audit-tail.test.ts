import { appendFileSync, mkdtempSync, renameSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { AuditTail } from "./audit-tail.ts";

/** One audit event as the API server writes it (fields in its order). */
function event(o: {
  user: string;
  verb: string;
  at: string;
  stage?: string;
  code?: number;
  resource?: string;
  subresource?: string;
  name?: string;
}): string {
  return `${JSON.stringify({
    kind: "Event",
    apiVersion: "audit.k8s.io/v1",
    level: "Metadata",
    auditID: "00000000-0000-0000-0000-000000000000",
    stage: o.stage ?? "ResponseComplete",
    requestURI: "/api/v1/namespaces/ns/pods/p",
    verb: o.verb,
    user: { username: o.user, groups: ["system:authenticated"] },
    sourceIPs: ["127.0.0.1"],
    objectRef: {
      resource: o.resource ?? "pods",
      namespace: "ns",
      name: o.name ?? "p",
      apiVersion: "v1",
      ...(o.subresource ? { subresource: o.subresource } : {}),
    },
    responseStatus: { metadata: {}, code: o.code ?? 200 },
    requestReceivedTimestamp: o.at,
    stageTimestamp: o.at,
  })}\n`;
}

const T0 = Date.parse("2026-01-01T00:00:10Z");
const at = (seconds: number) => new Date(T0 + seconds * 1000).toISOString();

describe("AuditTail", () => {
  let tail: AuditTail | undefined;
  afterEach(async () => {
    await tail?.stop();
    tail = undefined;
  });

  it("counts completed requests per user from where the log ended, by verb, resource and window", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "audit-tail-"));
    const file = path.join(dir, "audit.log");
    writeFileSync(file, event({ user: "devicelet", verb: "get", at: at(0) }));
    tail = await AuditTail.start(["devicelet", "kwok"], file);

    const patch = event({ user: "devicelet", verb: "patch", at: at(1), subresource: "status" });
    // A line split across two writes (in the middle of its user) is counted once, whole.
    const split = patch.indexOf('"username":"devicelet"') + 15;
    appendFileSync(file, patch.slice(0, split));
    await tail.settle(0);
    appendFileSync(
      file,
      patch.slice(split) +
        event({ user: "devicelet", verb: "patch", at: at(1), stage: "ResponseStarted" }) +
        event({ user: "devicelet", verb: "update", at: at(2), resource: "leases", code: 429 }) +
        event({ user: "admin", verb: "create", at: at(2) }) +
        event({ user: "kwok", verb: "patch", at: at(5.25), subresource: "status" }),
    );
    await tail.settle(0);

    expect(tail.count("devicelet", T0, T0 + 10_000)).toEqual({
      total: 2,
      byVerb: { patch: 1, update: 1 },
      byRequest: { "patch pods/status": 1, "update leases": 1 },
      throttled: 1,
    });
    expect(tail.count("devicelet", T0 + 2_000, T0 + 3_000).total).toBe(1);
    // Windows are cut to a tenth of a second.
    expect(tail.count("kwok", T0, T0 + 5_150).total).toBe(0);
    expect(tail.count("kwok", T0 + 5_200, T0 + 5_300).total).toBe(1);
    expect(tail.count("kwok", T0 + 5_300, T0 + 9_000).total).toBe(0);
    expect(tail.count("admin", T0, T0 + 10_000).total).toBe(0);
  });

  it("reads a rotated log to its end, then follows the new one", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "audit-tail-"));
    const file = path.join(dir, "audit.log");
    writeFileSync(file, "");
    tail = await AuditTail.start(["devicelet"], file);
    appendFileSync(file, event({ user: "devicelet", verb: "get", at: at(0) }));
    await tail.settle(0);
    // Written after the last read, then the API server rotates: renamed away, a new file begins.
    appendFileSync(file, event({ user: "devicelet", verb: "patch", at: at(1) }));
    renameSync(file, path.join(dir, "audit-2026-01-01T00-00-11.000.log"));
    writeFileSync(file, event({ user: "devicelet", verb: "update", at: at(2) }));
    await tail.settle(0);
    appendFileSync(file, event({ user: "devicelet", verb: "list", at: at(3) }));
    await tail.settle(0);

    expect(tail.count("devicelet", T0, T0 + 10_000).byVerb).toEqual({ get: 1, patch: 1, update: 1, list: 1 });
    expect(tail.growth.rotations).toBe(1);
  });

  it("tells the longest a Lease went without a successful write, from before the window to its end", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "audit-tail-"));
    const file = path.join(dir, "audit.log");
    writeFileSync(file, "");
    tail = await AuditTail.start(["devicelet"], file);
    const lease = (name: string, seconds: number, o: { code?: number; verb?: string } = {}) =>
      event({
        user: "devicelet",
        verb: o.verb ?? "patch",
        at: at(seconds),
        resource: "leases",
        name,
        code: o.code,
      });
    appendFileSync(
      file,
      lease("a", 0, { verb: "create", code: 201 }) +
        lease("b", 1, { verb: "create", code: 201 }) +
        lease("a", 10) +
        lease("b", 11) +
        // Refused and timed-out writes are no heartbeat: a's gap runs from 10 s to 31 s.
        lease("a", 20, { code: 429 }) +
        lease("a", 25, { code: 504 }) +
        lease("b", 21) +
        lease("a", 31) +
        lease("b", 32) +
        event({ user: "devicelet", verb: "get", at: at(40), resource: "leases", name: "b" }) +
        lease("a", 41),
    );
    await tail.settle(0);

    expect(tail.longestLeaseGap("devicelet", "", T0, T0 + 45_000)).toEqual({
      seconds: 21,
      lease: "a",
      fromMs: T0 + 10_000,
    });
    // From the last write before the window: a's gap from 10 s is counted in a window from 15 s.
    expect(tail.longestLeaseGap("devicelet", "", T0 + 15_000, T0 + 30_000)).toMatchObject({
      seconds: 20,
      lease: "a",
    });
    // Up to the window's end: b, last written at 32 s, has gone 18 s at 50 s (a at most 10 s).
    expect(tail.longestLeaseGap("devicelet", "", T0 + 35_000, T0 + 50_000)).toMatchObject({
      seconds: 18,
      lease: "b",
    });
    // Only the fleet's own Leases: without b, a's 31 s to 41 s is the longest.
    expect(tail.longestLeaseGap("devicelet", "a", T0 + 35_000, T0 + 50_000)).toMatchObject({
      seconds: 10,
      lease: "a",
    });
    expect(tail.longestLeaseGap("kwok", "", T0, T0 + 50_000)).toBeUndefined();
  });
});
