/**
 * The mock provider: simulated devices in memory, for the engine's tests, benchmarks and the demo.
 *
 * It implements the whole contract (lifecycle, push status, deletion notices, device inventory,
 * logs, exec, attach, port-forward, stats, start) with device semantics worth testing against: a pod for an offline device is
 * queued (Pending/DeviceOffline) and applied once on reconnect with the latest workload; a delete
 * while offline leaves a tombstone carried out on reconnect; `failImages` crash-loop; an optional
 * state file lets a SIGKILLed devicelet find its pods still running. See docs/configuration.md.
 *
 * ```ts
 * const provider = createMockProvider({ devices: { count: 3 }, appStartDelayMs: 50 }, { logger });
 * provider.notifyStatus((s) => console.log(s.pod.name, s.phase));
 * await provider.start(signal);
 * provider.setConnected("mock-0", false); // pods on mock-0 now queue
 * provider.stats().createsByUid;           // { [uid]: 1 } – nothing created twice
 * await provider.execInContainer(ref, "app", ["sh", "-c", "exit 3"], io); // { exitCode: 3 }
 * ```
 */
import { validateWithSchema } from "../../src/config/index.ts";
import { mockConfigSchema, type MockConfig, type MockConfigInput } from "./schema.ts";
import { MockProvider } from "./provider.ts";
import type { MockProviderDeps } from "./provider-types.ts";

export { systemClock, type Clock } from "../../src/base/clock.ts";
export { MockProvider } from "./provider.ts";
export type { MockProviderDeps, MockStats } from "./provider-types.ts";
export {
  expandDevices,
  matchesImage,
  MOCK_DEFAULT_SUPPORTS,
  mockConfigSchema,
  type MockConfig,
  type MockConfigInput,
  type MockDeviceFields,
  type MockDeviceGroup,
  type MockDeviceSpec,
  type MockExecConfig,
  type MockStatsConfig,
} from "./schema.ts";
export type { PersistedPod, PersistedState } from "./state-file.ts";
export { NO_STATS_ANNOTATION } from "./stats.ts";

/**
 * Builds a MockProvider. `config` may be the `provider.config` that parseConfig already validated,
 * or any partial object: it is validated again (same messages, paths under `/provider/config`)
 * and defaulted on a copy. Call `start(signal)` before anything else.
 * @throws ConfigError when the config is invalid; ProviderError InvalidInput on duplicate device
 *   ids, unknown gateways or offline entries naming unknown devices.
 */
export const createMockProvider = (
  config: MockConfigInput | undefined,
  deps: MockProviderDeps,
): MockProvider =>
  new MockProvider(
    validateWithSchema(
      mockConfigSchema,
      config ?? {},
      "mock provider config",
      "/provider/config",
    ) as MockConfig,
    deps,
  );

/** The shape a provider module exposes to the plugin loader: its type, schema and factory. */
export const mockPlugin = {
  type: "mock",
  configSchema: mockConfigSchema,
  create: createMockProvider,
} as const;
