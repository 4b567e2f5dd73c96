/**
 * The mock provider against the contract layer of the conformance kit. Its devices are simulated
 * in the provider itself, so taking one away is `setConnected`; its state file (in a temporary
 * folder) is what lets the kit's restarts find the pods again.
 */
import { mkdtempSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeProviderContract, type ProviderTarget } from "../../src/testing/index.ts";
import { createMockProvider, type MockProvider } from "./index.ts";

const dir = mkdtempSync(join(tmpdir(), "devicelet-mock-contract-"));

const target: ProviderTarget<MockProvider> = {
  name: "mock",
  devices: ["kit-0", "kit-1"],
  image: "example/app:1",
  create: (context) =>
    createMockProvider(
      {
        devices: { count: 2, idPrefix: "kit-" },
        stateFile: join(dir, "state.json"),
        appStartDelayMs: 20,
        appStopDelayMs: 20,
      },
      context,
    ),
  setDeviceOnline: (provider, deviceId, online) => {
    provider.setConnected(deviceId, online);
    return Promise.resolve();
  },
  tearDown: () => rm(dir, { recursive: true, force: true }),
  patienceMs: 5_000,
  capabilities: {
    exec: { ok: ["echo", "hello"], failing: { command: ["sh", "-c", "exit 3"], exitCode: 3 } },
  },
};

describeProviderContract(target);
