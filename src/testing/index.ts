/**
 * `devicelet/provider/testing`: the conformance kit for provider authors. The contract layer
 * (contract.ts, no cluster) and the engine layer (engine.ts, a real control plane) take the same
 * {@link ProviderTarget}; the helpers build what a provider's own tests need (a ProviderContext
 * with an in-memory durable store, valid workloads).
 *
 *   import { describeProviderContract, testContext, workload } from "devicelet/provider/testing";
 */
export type { ProviderTarget, TargetCapabilities } from "./target.ts";
export {
  contractScenarios,
  describeProviderContract,
  type ContractOptions,
  type ContractScenario,
  type ContractScenarioId,
} from "./contract.ts";
export { ContractViolation } from "./checks.ts";
export { testContext, TestMetrics, type TestContext, type TestContextOptions } from "./context.ts";
export { MemoryStore } from "./memory-store.ts";
export { app, appNames, refOf, workload, type WorkloadOptions } from "./workload.ts";
export { FakeClock } from "../base/fake-clock.ts";
export { describeEngineConformance, type EngineConformanceOptions } from "./engine.ts";
export {
  defaultControlPlaneDir,
  startControlPlane,
  stopControlPlane,
  type ControlPlane,
} from "./controlplane/index.ts";
