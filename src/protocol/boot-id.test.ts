/**
 * `bootId` as docs/protocol.md § 3.2 states it: 1–64 characters of `A-Z a-z 0-9 . _ -`, starting
 * with a letter or digit (the schema's `token`). The text and the codec must agree.
 */
import { describe, expect, it } from "vitest";
import { decodeFromDevice } from "./codec.ts";
import { topics } from "./topics.ts";

const lost = (bootId: string) =>
  Buffer.from(
    JSON.stringify({
      protocol: 1,
      kind: "presence",
      deviceId: "gw-1",
      state: "lost",
      bootId,
      seq: 1,
      sentAt: "2026-03-01T12:00:00.000Z",
    }),
  );

describe("bootId", () => {
  it("accepts 1–64 of A-Z a-z 0-9 . _ - starting with a letter or digit", () => {
    for (const bootId of ["b", "7", "B-5e1f", "b.1_x-2", "x".repeat(64)])
      expect(decodeFromDevice(topics.state("gw-1"), lost(bootId)).ok).toBe(true);
  });

  it("refuses a first character other than a letter or digit, other characters, and more than 64", () => {
    for (const bootId of ["", "-b", ".b", "_b", "b/1", "b 1", "x".repeat(65)]) {
      const result = decodeFromDevice(topics.state("gw-1"), lost(bootId));
      expect(result).toMatchObject({ ok: false, reason: "schema" });
    }
  });
});
