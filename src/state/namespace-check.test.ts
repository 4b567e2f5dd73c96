import pino from "pino";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../config/index.ts";
import { checkStateNamespace, stateNamespace } from "./namespace-check.ts";

const logger = pino({ level: "silent" });
const signal = new AbortController().signal;
const listing = (names: string[]) => ({
  list: (_path: string, _query?: unknown, o?: { fieldSelector?: string }) =>
    Promise.resolve({
      items: names
        .filter((n) => o?.fieldSelector === `metadata.name=${n}`)
        .map((n) => ({ metadata: { name: n } })),
      resourceVersion: "1",
    }),
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
      kube: listing(["ops"]) as never,
      namespace: { name: "ops", from: "state.namespace" },
      logger,
      signal,
    });
  });

  it("throws a ConfigError naming the key and the namespace when it does not exist", async () => {
    const check = checkStateNamespace({
      kube: listing(["ops"]) as never,
      namespace: { name: "opz", from: "state.namespace" },
      logger,
      signal,
    });
    await expect(check).rejects.toBeInstanceOf(ConfigError);
    await expect(check).rejects.toThrow(/\/state\/namespace: namespace "opz" does not exist/);
    const fromEnv = checkStateNamespace({
      kube: listing([]) as never,
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
      kube: { list: () => Promise.reject(new Error("forbidden")) } as never,
      namespace: { name: "ops", from: "state.namespace" },
      logger,
      signal,
    });
  });
});
