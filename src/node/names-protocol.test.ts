/**
 * The node-name mapping as docs/protocol.md § 1 ("Node names") states it to device authors: the
 * examples there must stay true.
 */
import { describe, expect, it } from "vitest";
import { labelValueFor, nodeNameForDevice, shortHash } from "./names.ts";

describe("device id → node name, as the protocol documents it", () => {
  it("keeps an id that is a valid node name of at most 63 characters, prefix included", () => {
    expect(nodeNameForDevice("gw-1")).toBe("gw-1");
    expect(nodeNameForDevice("site.gw-1", "dl-")).toBe("dl-site.gw-1");
  });

  it("maps `_`, part-edge `-` and empty parts, and appends 8 hex of the id's SHA-256", () => {
    expect(nodeNameForDevice("gw_1")).toBe(`gw-1-${shortHash("gw_1")}`);
    expect(nodeNameForDevice("gw-")).toBe(`gw-${shortHash("gw-")}`);
    expect(nodeNameForDevice("a..b")).toBe(`a.b-${shortHash("a..b")}`);
    expect(nodeNameForDevice("gw_1", "dl-")).toBe(`dl-gw-1-${shortHash("gw_1")}`);
    expect(nodeNameForDevice("gw_1")).not.toBe(nodeNameForDevice("gw-1"));
  });

  it("cuts a name over 63 characters and appends the hash", () => {
    const id = "x".repeat(70);
    const name = nodeNameForDevice(id);
    expect(name).toHaveLength(63);
    expect(name.endsWith(`-${shortHash(id)}`)).toBe(true);
  });

  it("puts the id itself in the label when it is a valid label value", () => {
    expect(labelValueFor("gw_1")).toBe("gw_1");
    expect(labelValueFor("gw-")).toBe(`gw-${shortHash("gw-")}`);
  });
});
