import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { createMockProvider, mockConfigSchema } from "../../providers/mock/index.ts";
import {
  ConfigError,
  isCidr,
  loadConfig,
  parseConfig,
  registerProviderSchema,
  type ConfigProblem,
} from "./index.ts";

const problemsOf = (fn: () => unknown): readonly ConfigProblem[] => {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error("expected a ConfigError");
};

const toySchema = {
  type: "object",
  additionalProperties: false,
  required: ["broker"],
  properties: {
    broker: { type: "string", pattern: "^mqtts?://" },
    keepaliveSeconds: { type: "integer", minimum: 1, default: 30 },
  },
} as const;

describe("parseConfig", () => {
  it("fills every default from a minimal file", () => {
    const config = parseConfig("provider: { type: mock }\n", "min.yaml");
    expect(config).toEqual({
      nodes: {
        namePrefix: "",
        taintKey: "virtual-kubelet.io/provider",
        extraLabels: {},
        deviceLabels: { prefix: "device.devicelet.dev/", allow: [] },
        addressRanges: [],
      },
      api: {
        qps: 100,
        burst: 200,
        heartbeatQps: 200,
        heartbeatBurst: 400,
        eventQps: 50,
        eventBurst: 100,
        requestTimeoutSeconds: 30,
      },
      lease: { durationSeconds: 40, renewIntervalSeconds: 10 },
      nodeStatus: { maxIntervalSeconds: 300 },
      pods: {
        ipRange: "10.250.0.0/16",
        baseRetryDelayMs: 250,
        maxRetryDelayMs: 30000,
        statusDebounceMs: 100,
        firstStatusWaitMs: 1000,
        resyncIntervalMs: 300_000,
        secretRefreshSeconds: 60,
      },
      kubelet: {
        serve: true,
        address: "",
        bindAddress: "",
        port: 10250,
        portCount: 1000,
        clientCAFile: "",
        tls: {
          source: "csr",
          certFile: "",
          keyFile: "",
          secretName: "",
          secretNamespace: "",
          csrApprove: false,
          csrExpirationSeconds: 0,
          csrSecretName: "devicelet-kubelet-serving",
        },
        auth: {
          authenticationCacheTTLSeconds: 120,
          authorizedCacheTTLSeconds: 300,
          unauthorizedCacheTTLSeconds: 30,
          cacheSize: 4096,
        },
      },
      health: { serve: true, bindAddress: "0.0.0.0", port: 8081 },
      metrics: { serve: true, bindAddress: "0.0.0.0", port: 8080 },
      leaderElection: {
        enabled: false,
        leaseName: "devicelet",
        identity: "",
        leaseDurationSeconds: 15,
        renewDeadlineSeconds: 10,
        retryPeriodSeconds: 2,
        releaseOnCancel: true,
      },
      sharding: { enabled: false, shards: 64, leasePrefix: "devicelet" },
      log: { level: "info" },
      provider: { type: "mock", config: {} },
      state: { namespace: null },
    });
    expect(config.kubeconfig).toBeUndefined();
  });

  it("keeps given values and fills the rest of a partly given section", async () => {
    const kubeconfig = join(await mkdtemp(join(tmpdir(), "devicelet-config-")), "kc");
    await writeFile(kubeconfig, "a kubeconfig that exists");
    const config = parseConfig(
      [
        `kubeconfig: ${kubeconfig}`,
        "api: { qps: 200, burst: 400 }",
        "nodes: { namePrefix: dev-, extraLabels: { example.com/site: berlin } }",
        "state: { namespace: devicelet-system }",
        "kubelet: { address: '::1' }",
        "provider: { type: mock }",
      ].join("\n"),
      "partial.yaml",
    );
    expect(config.kubeconfig).toBe(kubeconfig);
    expect(config.api).toEqual({
      qps: 200,
      burst: 400,
      heartbeatQps: 200,
      heartbeatBurst: 400,
      eventQps: 50,
      eventBurst: 100,
      requestTimeoutSeconds: 30,
    });
    expect(config.nodes.namePrefix).toBe("dev-");
    expect(config.nodes.extraLabels).toEqual({ "example.com/site": "berlin" });
    expect(config.state.namespace).toBe("devicelet-system");
    expect(config.kubelet).toMatchObject({ port: 10250, address: "::1", bindAddress: "", serve: true });
  });

  it("returns a deep-frozen object", () => {
    const config = parseConfig("provider: { type: mock, config: { a: { b: [1] } } }\n", "f.yaml");
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.pods)).toBe(true);
    expect(Object.isFrozen(config.nodes.extraLabels)).toBe(true);
    expect(Object.isFrozen((config.provider.config as { a: { b: number[] } }).a.b)).toBe(true);
    expect(() => {
      (config.api as { qps: number }).qps = 1;
    }).toThrow(TypeError);
  });

  it("reports every mistake at once, each with its JSON path and line", () => {
    const text = [
      "api:",
      "  qps: 0", // line 2
      "pods:",
      "  ipRange: 10.250.0.0/99", // line 4
      "log:",
      "  level: loud", // line 6
      "lease:",
      "  durationSeconds: 10",
      "  renewIntervalSeconds: 10", // line 9
      "provider: { type: mock }",
    ].join("\n");
    const problems = problemsOf(() => parseConfig(text, "bad.yaml"));
    expect(problems).toEqual(
      expect.arrayContaining([
        { path: "/api/qps", message: "must be >= 1", line: 2 },
        { path: "/pods/ipRange", message: "must be a CIDR such as 10.250.0.0/16", line: 4 },
        {
          path: "/log/level",
          message: "must be one of: fatal, error, warn, info, debug, trace, silent",
          line: 6,
        },
        {
          path: "/lease/renewIntervalSeconds",
          message: "must be less than /lease/durationSeconds (10)",
          line: 9,
        },
      ]),
    );
    expect(problems).toHaveLength(4);
    let message = "";
    try {
      parseConfig(text, "bad.yaml");
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("invalid configuration bad.yaml (4 problems):");
    expect(message).toContain("/api/qps: must be >= 1 (line 2)");
    expect(message).toContain("/log/level: must be one of:");
  });

  it("refuses unknown keys at every level", () => {
    const text = "colour: blue\nnodes: { namePrefx: x }\nprovider: { type: mock, extra: 1 }\n";
    const problems = problemsOf(() => parseConfig(text, "k.yaml"));
    expect(problems.map((p) => p.path).sort()).toEqual(["/colour", "/nodes/namePrefx", "/provider/extra"]);
    const nodes = problems.find((p) => p.path === "/nodes/namePrefx");
    expect(nodes?.message).toBe(
      "unknown key (expected one of: namePrefix, taintKey, extraLabels, deviceLabels, addressRanges)",
    );
    expect(nodes?.line).toBe(2);
  });

  it("refuses device labels allowed in Kubernetes' or devicelet's own namespaces", () => {
    const text = [
      "nodes:",
      "  deviceLabels:",
      "    prefix: topology.kubernetes.io/",
      "    allow: [node-role.kubernetes.io/*, devicelet.dev/transport, example.com/line, type]",
      "  addressRanges: [10.0.0.0/8, not-a-cidr]",
      "provider: { type: mock }",
    ].join("\n");
    const problems = problemsOf(() => parseConfig(text, "labels.yaml"));
    expect(problems.map((p) => p.path).sort()).toEqual([
      "/nodes/addressRanges/1",
      "/nodes/deviceLabels/allow/0",
      "/nodes/deviceLabels/allow/1",
      "/nodes/deviceLabels/allow/3",
      "/nodes/deviceLabels/prefix",
    ]);
    expect(problems.find((p) => p.path === "/nodes/deviceLabels/allow/0")?.message).toContain(
      "reserved Kubernetes label namespace kubernetes.io",
    );
  });

  it("requires a provider type and checks label keys and values", () => {
    const text = "nodes: { extraLabels: { 'Bad Key': ok, good: 'not ok!' } }\n";
    const problems = problemsOf(() => parseConfig(text, "l.yaml"));
    expect(problems.map((p) => p.path).sort()).toEqual([
      "/nodes/extraLabels/Bad Key",
      "/nodes/extraLabels/good",
      "/provider",
    ]);
    expect(problems.find((p) => p.path === "/provider")?.message).toBe("is required");
  });

  it("reports YAML syntax errors with their line and does not go on to the schema", () => {
    const text = "api:\n  qps: [1\nlog: { level: info }\nprovider: : x\n";
    const problems = problemsOf(() => parseConfig(text, "syntax.yaml"));
    expect(problems.length).toBeGreaterThanOrEqual(1);
    expect(problems.every((p) => p.path === "" && typeof p.line === "number")).toBe(true);
    expect(problems[0]?.line).toBe(3);
    try {
      parseConfig(text, "syntax.yaml");
    } catch (err) {
      expect((err as Error).message).toMatch(/line 3, column \d+: /);
    }
  });

  it("refuses a mapping or a list as a key with its line, without a process warning", async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on("warning", onWarning);
    try {
      const text = "provider: { type: mock }\nnodes:\n  ? [a, b]\n  : 1\n";
      expect(problemsOf(() => parseConfig(text, "complex.yaml"))).toEqual([
        { path: "", message: "a key must be a plain name, not a mapping or a list", line: 3, column: 5 },
      ]);
      // Process warnings are emitted on a later tick.
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off("warning", onWarning);
    }
    expect(warnings).toEqual([]);
  });

  it("refuses duplicate keys and a non-object document", () => {
    expect(problemsOf(() => parseConfig("a: 1\na: 2\n", "dup.yaml"))[0]?.line).toBe(2);
    expect(problemsOf(() => parseConfig("- 1\n", "list.yaml"))).toEqual([
      { path: "", message: "must be object", line: 1 },
    ]);
    expect(problemsOf(() => parseConfig("", "empty.yaml"))).toEqual([
      { path: "/provider", message: "is required" },
    ]);
  });

  it("validates provider.config with the provider's schema in the same pass", () => {
    const text = [
      "api: { burst: 0 }",
      "provider:",
      "  type: toy",
      "  config:",
      "    broker: tcp://x", // line 5
      "    keepaliveSeconds: 0", // line 6
      "    colour: red", // line 7
    ].join("\n");
    const problems = problemsOf(() => parseConfig(text, "p.yaml", { providerSchemas: { toy: toySchema } }));
    expect(problems).toEqual([
      { path: "/api/burst", message: "must be >= 1", line: 1 },
      expect.objectContaining({ path: "/provider/config/colour", line: 7 }),
      { path: "/provider/config/broker", message: '"tcp://x" does not match ^mqtts?://', line: 5 },
      { path: "/provider/config/keepaliveSeconds", message: "must be >= 1", line: 6 },
    ]);
    const missing = problemsOf(() =>
      parseConfig("provider: { type: toy }\n", "p.yaml", { providerSchemas: { toy: toySchema } }),
    );
    expect(missing).toEqual([{ path: "/provider/config/broker", message: "is required", line: 1 }]);
  });

  it("fills provider defaults and uses registered schemas", () => {
    registerProviderSchema("toy-registered", toySchema);
    const config = parseConfig(
      "provider: { type: toy-registered, config: { broker: 'mqtt://b' } }",
      "r.yaml",
    );
    expect(config.provider.config).toEqual({ broker: "mqtt://b", keepaliveSeconds: 30 });
    // An unknown type (a plugin package not imported yet) takes any object.
    const plugin = parseConfig("provider: { type: '@acme/devicelet-lora', config: { x: 1 } }", "u.yaml");
    expect(plugin.provider.config).toEqual({ x: 1 });
  });

  it("checks relations between fields", () => {
    const text =
      "api: { qps: 100, burst: 10 }\npods: { baseRetryDelayMs: 5000, maxRetryDelayMs: 100 }\nprovider: { type: m }";
    expect(problemsOf(() => parseConfig(text, "x.yaml"))).toEqual([
      { path: "/pods/baseRetryDelayMs", message: "must be at most /pods/maxRetryDelayMs (100)", line: 2 },
      { path: "/api/burst", message: "must be at least /api/qps (100)", line: 1 },
    ]);
  });
});

describe("loadConfig", () => {
  it("reads a file, and reports an unreadable one as a ConfigError", async () => {
    const dir = await mkdtemp(join(tmpdir(), "devicelet-config-"));
    const file = join(dir, "c.yaml");
    await writeFile(file, "provider: { type: mock }\nlog: { level: debug }\n");
    expect((await loadConfig(file)).log.level).toBe("debug");
    await expect(loadConfig(join(dir, "missing.yaml"))).rejects.toThrow(
      /\(1 problem\):\n {2}cannot read file: ENOENT/,
    );
    await writeFile(file, "hello");
    await expect(loadConfig(file)).rejects.toThrow(/\n {2}\/: must be object \(line 1\)$/);
  });
});

describe("examples/mock.yaml", () => {
  it("validates and gives ten devices with room for at least twelve pods each", async () => {
    const path = new URL("../../examples/mock.yaml", import.meta.url).pathname;
    const config = await loadConfig(path, { providerSchemas: { mock: mockConfigSchema } });
    expect(config.provider.type).toBe("mock");
    const provider = createMockProvider(config.provider.config, { logger: pino({ level: "silent" }) });
    const devices = await provider.listDevices();
    expect(devices).toHaveLength(10);
    expect(devices.every((d) => Number(d.capacity.pods) >= 12 && d.connected)).toBe(true);
  });

  it("reports mock config mistakes under /provider/config in the same pass as the core", () => {
    const text =
      "api: { qps: 0 }\nprovider:\n  type: mock\n  config:\n    devices: { count: x }\n    failImages: [1]\n";
    const problems = problemsOf(() =>
      parseConfig(text, "m.yaml", { providerSchemas: { mock: mockConfigSchema } }),
    );
    expect(problems).toEqual([
      { path: "/api/qps", message: "must be >= 1", line: 1 },
      { path: "/provider/config/devices/count", message: "must be integer", line: 5 },
      { path: "/provider/config/failImages/0", message: "must be string", line: 6 },
    ]);
  });
});

describe("isCidr", () => {
  it.each([
    ["10.250.0.0/16", true],
    ["fd00::/64", true],
    ["10.0.0.0/33", false],
    ["10.0.0.0", false],
    ["x/8", false],
  ])("%s → %s", (s, ok) => {
    expect(isCidr(s)).toBe(ok);
  });
});
