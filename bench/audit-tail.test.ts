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
      name: "p",
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
});
