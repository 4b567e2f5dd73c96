/**
 * What a provider author hands the conformance kit: how to build the provider, which devices it
 * may use, and how to make a device go away and come back. Both layers of the kit (contract.ts,
 * no cluster; engine.ts, a real control plane) take the same target.
 *
 *   const target: ProviderTarget<MockProvider> = {
 *     name: "mock",
 *     devices: ["kit-0", "kit-1"],
 *     image: "example/app:1",
 *     create: (context) => createMockProvider({ devices: [{ id: "kit-0" }, { id: "kit-1" }], stateFile }, context),
 *     setDeviceOnline: async (provider, id, online) => provider.setConnected(id, online),
 *   };
 *   describeProviderContract(target);
 */
import type { PodLifecycleProvider, ProviderContext } from "../provider/types.ts";

export interface ProviderTarget<P extends PodLifecycleProvider = PodLifecycleProvider> {
  /** Shown in the suite's name. */
  readonly name: string;
  /**
   * Builds a provider. The kit calls it again with the same `context.store` to play a restart of
   * devicelet: whatever the provider keeps elsewhere (a state file, retained messages) must be
   * found again by the new instance, as it would be after a real restart.
   */
  create(context: ProviderContext): P | Promise<P>;
  /**
   * Ids of devices the kit may use, each online when the suite starts and reported by the
   * provider's inventory (if it has one). At least one; scenarios about two devices use the
   * first two when there are two.
   */
  readonly devices: readonly [string, ...string[]];
  /** An image every device runs successfully and keeps running. */
  readonly image: string;
  /**
   * Takes a device away (it keeps what it holds, as a device that loses its network does) or
   * brings it back; resolves once the provider has noticed (its inventory says so).
   */
  setDeviceOnline(provider: P, deviceId: string, online: boolean): Promise<void>;
  /** Starts what the provider needs outside itself (a broker, simulated devices); once per suite. */
  setUp?(): Promise<void>;
  /** Stops what `setUp` started. */
  tearDown?(): Promise<void>;
  /** How long a device may take to act (apply, report, stop an app); default 20 s. */
  readonly patienceMs?: number;
  /**
   * What the kit needs to check optional capabilities beyond their guards. Capabilities the
   * provider lacks are skipped whatever this says.
   */
  readonly capabilities?: TargetCapabilities;
}

export interface TargetCapabilities {
  /**
   * false when the target's devices serve no logs (their transport carries no sessions, e.g. IoT
   * Hub): logs are then checked only for a prompt Unsupported refusal, and NotFound for an
   * unknown pod. Default true.
   */
  readonly logs?: boolean;
  /** Commands a container running `image` answers; without them exec is checked only for refusals. */
  readonly exec?: {
    /** A command that exits 0, e.g. `["true"]`. */
    readonly ok: readonly string[];
    /** A command that exits with `exitCode` (not 0), e.g. `{ command: ["sh", "-c", "exit 3"], exitCode: 3 }`. */
    readonly failing: { readonly command: readonly string[]; readonly exitCode: number };
  };
}
