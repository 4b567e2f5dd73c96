/**
 * The public provider API as a plugin author sees it, imported the way a package would import it
 * (`devicelet/provider`). The `@ts-expect-error` lines are the type tests: `npm run typecheck`
 * fails if any of them compiles, that is if the API stops catching the mistake it names.
 */
import {
  defineProvider,
  hasDeviceInventory,
  hasDeviceSync,
  hasLifecycle,
  hasStatusNotifier,
  isNotFound,
  isTerminal,
  notFound,
  PodFeature,
  unsupported,
  type DeviceInventory,
  type DeviceSync,
  type DeviceSyncReporter,
  type FromSchema,
  type PodLifecycleProvider,
  type ProviderContext,
  type ProviderMetrics,
  type ProviderPlugin,
  type WorkloadStatus,
} from "devicelet/provider";
import { describe, expect, expectTypeOf, it } from "vitest";

const configSchema = {
  type: "object",
  additionalProperties: false,
  required: ["url"],
  properties: {
    url: { type: "string" },
    pollSeconds: { type: "integer", default: 10 },
    mode: { enum: ["push", "poll"] },
    tags: { type: "array", items: { type: "string" } },
    limits: { type: "object", additionalProperties: { type: "number" } },
  },
} as const;

/** The smallest provider that satisfies the contract. */
const toy = (name: string): PodLifecycleProvider => ({
  name,
  supports: [PodFeature.Ports],
  createPod: () => Promise.resolve(),
  updatePod: () => Promise.resolve(),
  deletePod: () => Promise.resolve(),
  getPodStatus: () => Promise.resolve(undefined),
  listPods: () => Promise.resolve([]),
});

describe("defineProvider", () => {
  it("types create's config from an `as const` schema, defaults filled in", () => {
    const plugin = defineProvider({
      type: "@acme/devicelet-provider-toy",
      configSchema,
      create: (config) => {
        expectTypeOf(config).toEqualTypeOf<{
          url: string;
          pollSeconds: number;
          mode?: "push" | "poll";
          tags?: string[];
          limits?: { [key: string]: number };
        }>();
        return toy(config.url);
      },
    });
    expectTypeOf(plugin).toEqualTypeOf<ProviderPlugin<FromSchema<typeof configSchema>>>();
    const provider = plugin.create({ url: "http://x", pollSeconds: 5 }, {} as ProviderContext);
    expect(provider.name).toBe("http://x");
    expect(Object.isFrozen(plugin)).toBe(true);
  });

  it("takes an explicit config type when the schema is beyond inference", () => {
    interface ToyConfig {
      readonly devices: readonly string[];
    }
    const plugin = defineProvider<ToyConfig>({
      type: "toy",
      configSchema: { if: { type: "array" }, then: {}, else: {} },
      create: (config) => {
        expectTypeOf(config).toEqualTypeOf<ToyConfig>();
        return toy(config.devices.join(","));
      },
    });
    expect(plugin.create({ devices: ["a", "b"] }, {} as ProviderContext).name).toBe("a,b");
  });

  it("refuses, at compile time, a create that takes the wrong config", () => {
    defineProvider({
      type: "toy",
      configSchema,
      // @ts-expect-error: `url` is a string in the schema, not a number
      create: (config: { url: number }) => toy(String(config.url)),
    });
    defineProvider<{ port: number }>({
      type: "toy",
      configSchema: {},
      // @ts-expect-error: the explicit type says `port` is a number
      create: (config: { port: string }) => toy(config.port),
    });
    expect(true).toBe(true);
  });

  it("refuses, at compile time, a provider that forgets a method or returns the wrong shape", () => {
    defineProvider({
      type: "toy",
      configSchema: {},
      // @ts-expect-error: listPods is missing
      create: () => ({
        name: "toy",
        supports: [],
        createPod: () => Promise.resolve(),
        updatePod: () => Promise.resolve(),
        deletePod: () => Promise.resolve(),
        getPodStatus: () => Promise.resolve(undefined),
      }),
    });
    defineProvider({
      type: "toy",
      configSchema: {},
      // @ts-expect-error: getPodStatus answers a WorkloadStatus, not a phase string
      create: () => ({ ...toy("toy"), getPodStatus: () => Promise.resolve("Running") }),
    });
    defineProvider({
      type: "toy",
      configSchema: {},
      // @ts-expect-error: `supports` lists PodFeature values only
      create: () => ({ ...toy("toy"), supports: ["spec.everything"] }),
    });
    // @ts-expect-error: a plugin needs its config schema
    defineProvider({ type: "toy", create: () => toy("toy") });
    expect(true).toBe(true);
  });
});

describe("capability guards and errors", () => {
  it("narrow a provider to the capabilities it really has", () => {
    const withInventory: PodLifecycleProvider & DeviceInventory = {
      ...toy("inv"),
      listDevices: () => Promise.resolve([]),
      watchDevices: () => undefined,
    };
    const provider: PodLifecycleProvider = withInventory;
    expect(hasDeviceInventory(provider)).toBe(true);
    expect(hasStatusNotifier(provider)).toBe(false);
    // A start without a stop is not a lifecycle: the engine would never stop it.
    expect(hasLifecycle({ ...toy("half"), start: () => Promise.resolve() })).toBe(false);
    if (hasDeviceInventory(provider)) expectTypeOf(provider).toHaveProperty("watchDevices");
    const status = {} as WorkloadStatus;
    // @ts-expect-error: statuses are frozen engine data
    status.phase = "Running";
  });

  it("classify errors by code, across copies of the module", () => {
    expect(isNotFound(notFound("no such pod"))).toBe(true);
    expect(isNotFound({ code: "DEVICELET_NOT_FOUND" })).toBe(true);
    expect(isTerminal(unsupported("no exec on a microcontroller"))).toBe(true);
    expect(isTerminal(notFound("x"))).toBe(false);
  });
});

describe("provider metrics", () => {
  it("are optional in the context, typed, and take no device or pod", () => {
    const report = (context: ProviderContext) => {
      context.metrics?.desiredApplied(1.5);
      context.metrics?.messageRejected("schema");
      context.metrics?.observe({ commandsQueued: () => 0, transportConnected: () => true });
      // @ts-expect-error: a gauge is a callback read at scrape time, not a value
      context.metrics?.observe({ commandsQueued: 3 });
      // @ts-expect-error: latencies are one number of seconds, never per device
      context.metrics?.desiredDelivered("gw-1", 0.2);
    };
    expectTypeOf(report).parameter(0).toHaveProperty("metrics");
    expectTypeOf<ProviderContext["metrics"]>().toEqualTypeOf<ProviderMetrics | undefined>();
    expect(typeof report).toBe("function");
  });
});

describe("device sync", () => {
  it("is a capability of two methods, its state typed", () => {
    const synced: PodLifecycleProvider & DeviceSyncReporter = {
      ...toy("sync"),
      deviceSync: () => ({ desiredGeneration: 2, appliedGeneration: 1, behindSince: new Date(0) }),
      notifyDeviceSync: () => undefined,
    };
    expect(hasDeviceSync(synced)).toBe(true);
    // Without the notification the engine would never look again: not the capability.
    expect(hasDeviceSync({ ...toy("half"), deviceSync: () => undefined })).toBe(false);
    const rejected: DeviceSync = {
      desiredGeneration: 3,
      appliedGeneration: 2,
      // @ts-expect-error: a rejection carries the device's reason and message
      rejected: { generation: 3 },
    };
    expect(rejected.desiredGeneration).toBe(3);
  });
});
