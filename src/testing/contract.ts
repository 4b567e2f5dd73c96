/**
 * The contract layer of the conformance kit: a provider against the rules of
 * `devicelet/provider` (types.ts), no cluster needed. Each scenario is a plain async function
 * that throws a ContractViolation; {@link describeProviderContract} registers them all as vitest
 * tests around the target's setUp/tearDown.
 *
 *   // my-provider.conformance.test.ts
 *   import { describeProviderContract } from "devicelet/provider/testing";
 *   describeProviderContract({
 *     name: "acme",
 *     devices: ["dev-0", "dev-1"],
 *     image: "acme/app:1",
 *     create: (context) => createAcmeProvider(config, context),
 *     setDeviceOnline: (provider, id, online) => fleet.setOnline(id, online),
 *   });
 *
 *   // or one scenario on its own, e.g. in a debugger:
 *   await contractScenarios.offlineLatestWins.run(target);
 *
 * What the kit decides where types.ts leaves room (docs/providers.md says the same):
 * - statuses that arrive after a pod's deletion was reported are allowed (the engine ignores
 *   them); statuses for pods the kit never created, or under another pod's uid, are not;
 * - a pod deleted while its device is away may not be reported deleted within its grace period
 *   (30 s in the kit): the device may still run it;
 * - capabilities a provider does not have are skipped (their tests pass without checking); exec
 *   is checked with the commands the target names in `capabilities.exec` (scenarios-capabilities.ts);
 * - with its device away, a capability call answers within five seconds (or the patience, if
 *   shorter), from what the provider holds or with a classified refusal.
 *
 * Scenarios share the target's durable store and leave no pods behind (they delete what they
 * created), but a provider may still report pods of earlier scenarios whose deletion completes
 * later: every check is about the scenario's own pods.
 */
import { afterAll, beforeAll, describe, it } from "vitest";
import type { PodLifecycleProvider } from "../provider/types.ts";
import { ContractViolation } from "./checks.ts";
import { suiteOf } from "./harness.ts";
import * as capabilities from "./scenarios-capabilities.ts";
import * as pods from "./scenarios-pods.ts";
import * as presence from "./scenarios-presence.ts";
import type { ProviderTarget } from "./target.ts";

export interface ContractScenario {
  /** The test's title. */
  readonly title: string;
  /** Runs the scenario on a fresh provider instance; rejects with what broke the contract. */
  readonly run: (target: ProviderTarget) => Promise<void>;
}

const scenario = (title: string, run: ContractScenario["run"]): ContractScenario => ({ title, run });

/** Every scenario of the contract layer, by id, in the order describeProviderContract runs them. */
export const contractScenarios = {
  idempotentCreate: scenario("createPod twice with one hash runs the pod once", pods.idempotentCreate),
  update: scenario("updatePod with a new hash replaces what runs", pods.update),
  updateUnknownCreates: scenario("updatePod of an unknown pod creates it", pods.updateUnknownCreates),
  deleteWithGrace: scenario("deletePod stops the pod and reports it deleted once", pods.deleteWithGrace),
  unknownPods: scenario("deletePod and getPodStatus of an unknown pod resolve", pods.unknownPods),
  durableCreate: scenario("a resolved create or update survives a restart", pods.durableCreate),
  durableDelete: scenario("a resolved delete survives a restart", pods.durableDelete),
  restartKeepsPods: scenario(
    "listPods after a restart has the pods, and status arrives",
    pods.restartKeepsPods,
  ),
  restartKeepsHash: scenario("listPods after a restart keeps the last workload hash", pods.restartKeepsHash),
  offlineCreate: scenario("a pod for an away device is not Running until it is back", presence.offlineCreate),
  offlineLatestWins: scenario("two updates while away: only the latest runs", presence.offlineLatestWins),
  offlineDelete: scenario("a delete while away waits for the device", presence.offlineDelete),
  quietAfterStop: scenario("no callback after stop resolved", presence.quietAfterStop),
  concurrentPods: scenario("calls for different pods overlap", pods.concurrentPods),
  onePodSequences: scenario("create/delete/create for one name leaves the newest", pods.onePodSequences),
  deviceInventory: scenario(
    "DeviceInventory lists the devices and reports presence",
    presence.deviceInventory,
  ),
  lifecycle: scenario("Lifecycle: stop resolves, also twice", presence.lifecycle),
  logs: scenario("logs of a container end; an unknown pod or container is NotFound", capabilities.logs),
  logsFollow: scenario("a followed log ends when the client goes", capabilities.logsFollow),
  exec: scenario("exec reports exit codes; an unknown pod is NotFound", capabilities.exec),
  stats: scenario(
    "getStats answers with times and sane numbers; an unknown device is NotFound",
    capabilities.stats,
  ),
  capabilitiesAway: scenario(
    "logs, exec and stats answer at once while the device is away",
    capabilities.capabilitiesAway,
  ),
} as const satisfies Record<string, ContractScenario>;

export type ContractScenarioId = keyof typeof contractScenarios;

export interface ContractOptions {
  /**
   * Scenarios the provider is known to fail, each with why. They run as `it.fails`: the suite
   * stays green while they fail and turns red once the provider is fixed, so the entry goes.
   */
  readonly knownDeviations?: Partial<Record<ContractScenarioId, string>>;
  /** Only these scenarios (default all). */
  readonly only?: readonly ContractScenarioId[];
}

/** Registers the contract suite for `target` with vitest (`describe`, one `it` per scenario). */
export function describeProviderContract<P extends PodLifecycleProvider>(
  target: ProviderTarget<P>,
  options: ContractOptions = {},
): void {
  const patienceMs = target.patienceMs ?? 20_000;
  // Bounds a scenario stuck in the provider; the waits inside it are bounded by the patience.
  const timeoutMs = patienceMs * 8 + 30_000;
  const general = target as unknown as ProviderTarget;
  describe(`provider contract: ${target.name}`, () => {
    beforeAll(() => target.setUp?.(), timeoutMs);
    afterAll(() => target.tearDown?.(), timeoutMs);
    for (const [id, s] of Object.entries(contractScenarios) as [ContractScenarioId, ContractScenario][]) {
      if (options.only && !options.only.includes(id)) continue;
      const deviation = options.knownDeviations?.[id];
      if (deviation === undefined) it(s.title, () => s.run(general), timeoutMs);
      else it.fails(`${s.title} (known deviation: ${deviation})`, () => s.run(general), timeoutMs);
    }
    it("nothing arrived late from an earlier scenario", () => {
      const late = suiteOf(target).violations;
      if (late.length > 0) throw new ContractViolation(late.join("\n"));
    });
  });
}
