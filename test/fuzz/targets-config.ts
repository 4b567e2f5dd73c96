/**
 * Fuzz target for configuration loading: `parseConfig` with the MQTT and mock provider schemas,
 * fed the example files (examples/*.yaml) and a full MQTT configuration, mutated as values and then
 * written as YAML or JSON, or mutated as text (truncated, spliced with random characters).
 * Accepted, or refused with a ConfigError listing at least one problem; anything else is a crash.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { parse, stringify } from "yaml";
import { mockConfigSchema } from "../../providers/mock/schema.ts";
import { mqttConfigSchema } from "../../providers/mqtt/schema.ts";
import { ConfigError, parseConfig } from "../../src/config/index.ts";
import { anyCodePoints, jsonText, mutate, nestingDepth, Rng, toJson } from "./mutate.ts";
import { accepted, HiddenCrash, rejected, type FuzzTarget } from "./target.ts";

/** yaml's stringify as typed at run time: undefined for undefined. */
const toYaml: (value: unknown) => string | undefined = stringify;

const examplesDir = path.resolve(import.meta.dirname, "../../examples");

const fullMqtt = {
  kubeconfig: "/nonexistent/kubeconfig",
  nodes: { namePrefix: "dev-", taintKey: "example.com/device", extraLabels: { "example.com/site": "a" } },
  api: {
    qps: 50,
    burst: 100,
    heartbeatQps: 100,
    heartbeatBurst: 200,
    eventQps: 10,
    eventBurst: 20,
    requestTimeoutSeconds: 10,
  },
  lease: { durationSeconds: 40, renewIntervalSeconds: 10 },
  pods: { ipRange: "10.250.0.0/16", baseRetryDelayMs: 100, maxRetryDelayMs: 1000 },
  kubelet: { port: 10250, address: "::1" },
  state: { namespace: "devicelet-system" },
  provider: {
    type: "mqtt",
    config: {
      broker: {
        url: "mqtts://broker.example:8883",
        protocolVersion: 5,
        username: "devicelet",
        passwordFile: "/nonexistent/password",
        tls: { ca: "/nonexistent/ca.pem", cert: "/nonexistent/c.pem", key: "/nonexistent/k.pem" },
        reconnect: { minDelayMs: 100, maxDelayMs: 1000 },
      },
      devices: { allow: ["gw-*", "mcu-?"], maxMessageBytes: 65536 },
      desired: { debounceMs: 5, maxDocumentBytes: 131072 },
      commands: { queueLimit: 5, ttlSeconds: 60 },
      supports: ["spec.containers[].ports"],
    },
  },
};

const seeds = (): unknown[] => [
  ...["mock.yaml", "mqtt.yaml"].map((f) => parse(readFileSync(path.join(examplesDir, f), "utf8")) as unknown),
  fullMqtt,
  { provider: { type: "mock", config: { devices: [{ count: 2 }, { id: "one", gateway: "mock-0" }] } } },
];

/** A text from a seed: a mutated value in YAML or JSON, sometimes mutated again as text. */
const configText = (all: readonly unknown[]) =>
  fc.tuple(fc.constantFrom(...all), fc.integer()).map(([seed, n]) => {
    const rng = new Rng(n);
    const value = rng.chance(0.1) ? seed : mutate(seed, rng);
    let text: string;
    try {
      // YAML for most; JSON (also YAML) for some, and for big or deep values, which YAML writes
      // (and reads) slowly: a few thousand levels are as telling as a hundred thousand.
      const json = jsonText(value, rng, { deepest: 2_000 });
      const yaml = json.length < 20_000 && nestingDepth(json) < 30 && rng.chance(0.6);
      text = (yaml ? toYaml(value) : json) ?? "";
    } catch {
      text = toJson(value) ?? "";
    }
    switch (rng.int(6)) {
      case 0:
        return text.slice(0, rng.int(text.length + 1));
      case 1: {
        const at = rng.int(text.length + 1);
        const junk = rng.pick([
          "\t",
          ": ",
          "- ",
          "&a",
          "*a",
          "!!binary",
          "{",
          "]",
          "\u0000",
          "---\n",
          "<<: *a",
          "\ufffe",
        ]);
        return text.slice(0, at) + junk + text.slice(at);
      }
      default:
        return text;
    }
  });

export const configTarget = (): FuzzTarget<string> => ({
  name: "config.parseConfig",
  input: fc.oneof(
    { arbitrary: configText(seeds()), weight: 9 },
    { arbitrary: anyCodePoints(300), weight: 1 },
  ),
  run: (text) => {
    try {
      parseConfig(text, "fuzz.yaml", { providerSchemas: { mqtt: mqttConfigSchema, mock: mockConfigSchema } });
      return accepted;
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      const first = err.problems[0];
      if (!first?.message) throw new HiddenCrash("ConfigError without a problem");
      return rejected(first.path === "" ? "yaml-or-document" : reasonOf(first.message));
    }
  },
});

/** `must be >= 1` → `must be`; `file "x" does not exist` → `file`: a few stable buckets. */
const reasonOf = (message: string): string => {
  if (message.startsWith("unknown key")) return "unknown key";
  if (message.startsWith("is required")) return "is required";
  if (message.startsWith("file ") || message.endsWith("is not a regular file")) return "file";
  if (message.includes("does not match")) return "pattern";
  if (message.startsWith("must be less than") || message.startsWith("must be at")) return "relation";
  if (message.startsWith("must be")) return "type or range";
  return "other";
};
