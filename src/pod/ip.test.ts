import { describe, expect, it } from "vitest";
import { PodIpAllocator } from "./ip.ts";

describe("PodIpAllocator", () => {
  it("hands out distinct addresses inside the range, stable per owner", () => {
    const ips = new PodIpAllocator("10.250.0.0/29");
    const got = ["a", "b", "c", "d", "e", "f"].map((o) => ips.allocate(o));
    expect(new Set(got).size).toBe(6);
    expect(got).toEqual(["10.250.0.1", "10.250.0.2", "10.250.0.3", "10.250.0.4", "10.250.0.5", "10.250.0.6"]);
    expect(ips.allocate("c")).toBe("10.250.0.3");
    expect(() => ips.allocate("g")).toThrow(/exhausted/);
    ips.release("b");
    expect(ips.allocate("g")).toBe("10.250.0.2");
  });

  it("never hands out an address reserved for an existing pod", () => {
    const ips = new PodIpAllocator("192.168.7.0/30");
    ips.reserve("old", "192.168.7.1");
    expect(ips.allocate("new")).toBe("192.168.7.2");
  });

  it("refuses a malformed range", () => {
    expect(() => new PodIpAllocator("10.0.0.0")).toThrow(/CIDR/);
    expect(() => new PodIpAllocator("10.0.0.0/31")).toThrow(/CIDR/);
  });
});
