import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  DNS1123_SUBDOMAIN,
  LABEL_VALUE,
  MAX_NODE_NAME,
  NodeNameRegistry,
  labelValueFor,
  nodeNameForDevice,
  shortHash,
} from "./names.ts";

describe("nodeNameForDevice", () => {
  it("keeps an id that is already a valid name", () => {
    expect(nodeNameForDevice("dev-1")).toBe("dev-1");
    expect(nodeNameForDevice("gw.site-3", "dl-")).toBe("dl-gw.site-3");
  });

  it("appends a stable hash of the original id whenever it had to change something", () => {
    const h = shortHash("Dev_1");
    expect(nodeNameForDevice("Dev_1")).toBe(`dev-1-${h}`);
    expect(nodeNameForDevice("Dev_1")).toBe(nodeNameForDevice("Dev_1"));
    expect(nodeNameForDevice("Dev_1")).not.toBe(nodeNameForDevice("dev-1"));
    expect(nodeNameForDevice("site/7:sensor", "dl-")).toBe(`dl-site-7-sensor-${shortHash("site/7:sensor")}`);
    expect(nodeNameForDevice("-a..b-")).toBe(`a.b-${shortHash("-a..b-")}`);
    expect(nodeNameForDevice("___")).toBe(shortHash("___"));
    expect(nodeNameForDevice("")).toBe(shortHash(""));
  });

  it("shortens long ids to fit the hostname label", () => {
    const long = "x".repeat(100);
    const name = nodeNameForDevice(long);
    expect(name).toHaveLength(MAX_NODE_NAME);
    expect(name.endsWith(`-${shortHash(long)}`)).toBe(true);
    expect(nodeNameForDevice("y".repeat(63))).toBe("y".repeat(63));
  });

  it("always gives a DNS-1123 subdomain of at most 63 characters", () => {
    fc.assert(
      fc.property(
        fc.string({ unit: "binary", maxLength: 300 }),
        fc.constantFrom("", "dl-", "Edge_"),
        (id, prefix) => {
          const name = nodeNameForDevice(id, prefix);
          expect(name).toMatch(DNS1123_SUBDOMAIN);
          expect(name.length).toBeLessThanOrEqual(MAX_NODE_NAME);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("gives different ids different names unless they hash alike", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), fc.string({ maxLength: 40 }), (a, b) => {
        fc.pre(a !== b);
        expect(nodeNameForDevice(a)).not.toBe(nodeNameForDevice(b));
      }),
      { numRuns: 2000 },
    );
  });
});

describe("labelValueFor", () => {
  it("keeps valid values, case included", () => {
    expect(labelValueFor("Dev_1.a-b")).toBe("Dev_1.a-b");
    expect(labelValueFor("")).toBe("");
  });

  it("makes any string a valid label value", () => {
    expect(labelValueFor("site/7:sensor")).toBe(`site-7-sensor-${shortHash("site/7:sensor")}`);
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 200 }), (raw) => {
        const value = labelValueFor(raw);
        expect(value).toMatch(LABEL_VALUE);
        expect(value.length).toBeLessThanOrEqual(63);
      }),
      { numRuns: 2000 },
    );
  });
});

describe("NodeNameRegistry", () => {
  it("claims, reports and releases names", () => {
    const names = new NodeNameRegistry("dl-");
    const a = names.claim("Dev_1");
    expect(names.claim("Dev_1")).toBe(a);
    expect(names.claim("dev-1")).toBe("dl-dev-1");
    expect(names.nameOf("Dev_1")).toBe(a);
    expect(names.deviceOf("dl-dev-1")).toBe("dev-1");
    names.release("dev-1");
    expect(names.deviceOf("dl-dev-1")).toBeUndefined();
    names.release("never-claimed");
  });

  it("refuses a second device whose name collides", () => {
    const names = new NodeNameRegistry();
    // "dev-1-<hash of Dev_1>" is itself a valid id, so it maps to that very name.
    const taken = names.claim("Dev_1");
    expect(() => names.claim(taken)).toThrow(
      `node name "${taken}" for device "${taken}" collides with device "Dev_1"`,
    );
    names.release("Dev_1");
    expect(names.claim(taken)).toBe(taken);
  });
});
