import { describe, expect, it } from "vitest";
import { expandVars, referencedVars } from "./expand.ts";
import { formatResourceValue, parseQuantity } from "../base/quantity.ts";

const vars: Record<string, string> = { A: "alpha", B: "beta", EMPTY: "" };
const lookup = (n: string) => (Object.hasOwn(vars, n) ? vars[n] : undefined);

describe("expandVars (kubelet expansion rules)", () => {
  it.each([
    ["$(A)", "alpha"],
    ["x-$(A)-$(B)-y", "x-alpha-beta-y"],
    ["$(EMPTY)!", "!"],
    ["$(MISSING)", "$(MISSING)"],
    ["$$(A)", "$(A)"],
    ["$$$(A)", "$alpha"],
    ["$$", "$"],
    ["$", "$"],
    ["a$", "a$"],
    ["$A", "$A"],
    ["$(A", "$(A"],
    ["$()", "$()"],
    ["(A)", "(A)"],
    ["$(A)$(A)", "alphaalpha"],
  ])("%s → %s", (input, expected) => {
    expect(expandVars(input, lookup)).toBe(expected);
  });

  it("lists the names a string refers to", () => {
    expect(referencedVars("$(A) $$(B) $(C)")).toEqual(["A", "C"]);
  });
});

describe("resource quantities", () => {
  const value = (resource: string, v: string, divisor = "1") => {
    const q = parseQuantity(v);
    const d = parseQuantity(divisor);
    if (q === undefined || d === undefined) throw new Error("bad quantity");
    return formatResourceValue(resource, q, d);
  };

  it.each([
    ["cpu", "250m", "1", "1"],
    ["cpu", "250m", "1m", "250"],
    ["cpu", "0.1", "1m", "100"],
    ["cpu", "2", "1", "2"],
    ["memory", "64Mi", "1", "67108864"],
    ["memory", "64Mi", "1Mi", "64"],
    ["memory", "1G", "1Mi", "954"],
    ["memory", "1.5Gi", "1Gi", "2"],
    ["memory", "1e3", "1", "1000"],
    ["memory", "100m", "1", "1"],
  ])("%s %s / %s = %s", (resource, v, divisor, expected) => {
    expect(value(resource, v, divisor)).toBe(expected);
  });

  it("rejects what is not a quantity", () => {
    for (const bad of ["", "abc", "-1", "1Qi", "1.2.3", "1e9999"]) expect(parseQuantity(bad)).toBeUndefined();
  });
});
