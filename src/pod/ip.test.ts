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

  it("keeps an address outside the range as given, and it takes nothing from the range", () => {
    const ips = new PodIpAllocator("10.1.0.0/30");
    ips.reserve("device", "192.168.1.20");
    ips.reserve("v6", "fd00::7");
    expect(ips.allocate("device")).toBe("192.168.1.20");
    expect(ips.allocate("v6")).toBe("fd00::7");
    expect([ips.allocate("a"), ips.allocate("b")]).toEqual(["10.1.0.1", "10.1.0.2"]);
    ips.release("device");
    expect(() => ips.allocate("c")).toThrow(/exhausted/);
  });

  it("a re-reserved owner gives back the address it had", () => {
    const ips = new PodIpAllocator("10.2.0.0/30");
    ips.reserve("a", "10.2.0.1");
    ips.reserve("a", "10.2.0.2");
    expect(ips.allocate("a")).toBe("10.2.0.2");
    expect(ips.allocate("b")).toBe("10.2.0.1");
  });

  it("serves a wide range past its first bytes of bookkeeping, and reuses what is released", () => {
    const ips = new PodIpAllocator("10.128.0.0/9");
    const owners = Array.from({ length: 5_000 }, (_, i) => `pod-${i}`);
    const got = owners.map((o) => ips.allocate(o));
    expect(new Set(got).size).toBe(5_000);
    expect(got[0]).toBe("10.128.0.1");
    expect(got[4_999]).toBe("10.128.19.136");
    ips.reserve("restarted", "10.255.255.254");
    expect(ips.allocate("restarted")).toBe("10.255.255.254");
    for (const o of owners.slice(0, 10)) ips.release(o);
    // Released addresses are not handed out again at once: allocation goes on after the last one.
    expect(ips.allocate("next")).toBe("10.128.19.137");
    expect(ips.allocate("pod-0")).toBe("10.128.19.138");
  });

  it("refuses a malformed range", () => {
    expect(() => new PodIpAllocator("10.0.0.0")).toThrow(/CIDR/);
    expect(() => new PodIpAllocator("10.0.0.0/31")).toThrow(/CIDR/);
  });
});
