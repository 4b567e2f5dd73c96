import pino from "pino";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../config/index.ts";
import { checkStateNamespace, stateNamespace } from "./namespace-check.ts";

const logger = pino({ level: "silent" });
const signal = new AbortController().signal;
const listing = (names: string[]) => ({
  getNamespace: (name: string) => Promise.resolve(names.includes(name) ? { metadata: { name } } : undefined),
});

const state = (namespace: string | null) => ({ state: { namespace } });

describe("stateNamespace", () => {
  it("takes state.namespace, else $POD_NAMESPACE, else default", () => {
    expect(stateNamespace(state("ops"), { POD_NAMESPACE: "x" })).toEqual({
      name: "ops",
      from: "state.namespace",
    });
    expect(stateNamespace(state(null), { POD_NAMESPACE: "x" })).toEqual({ name: "x", from: "POD_NAMESPACE" });
    expect(stateNamespace(state(null), {})).toEqual({ name: "default", from: "default" });
  });
});

describe("checkStateNamespace", () => {
  it("resolves when the namespace exists", async () => {
    await checkStateNamespace({
      kube: listing(["ops"]),
      namespace: { name: "ops", from: "state.namespace" },
      logger,
      signal,
    });
  });

  it("throws a ConfigError naming the key and the namespace when it does not exist", async () => {
    const check = checkStateNamespace({
      kube: listing(["ops"]),
      namespace: { name: "opz", from: "state.namespace" },
      logger,
      signal,
    });
    await expect(check).rejects.toBeInstanceOf(ConfigError);
    await expect(check).rejects.toThrow(/\/state\/namespace: namespace "opz" does not exist/);
    const fromEnv = checkStateNamespace({
      kube: listing([]),
      namespace: { name: "edge", from: "POD_NAMESPACE" },
      logger,
      signal,
    });
    await expect(fromEnv).rejects.toThrow(
      /namespace "edge" \(state.namespace is null, so \$POD_NAMESPACE chose it\)/,
    );
  });

  it("starts anyway, with a warning, when the API server cannot answer", async () => {
    await checkStateNamespace({
      kube: { getNamespace: () => Promise.reject(new Error("forbidden")) },
      namespace: { name: "ops", from: "state.namespace" },
      logger,
      signal,
    });
  });
});
