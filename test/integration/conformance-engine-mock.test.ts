/**
 * The mock provider through the engine layer of the conformance kit: the real engine in this
 * process, the real control plane and scheduler. Its state file is what a second provider instance
 * (the kit's devicelet restart) finds its running pods in.
 */
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { expect } from "vitest";
import { createMockProvider, type MockProvider } from "../../providers/mock/index.ts";
import { describeEngineConformance, type ProviderTarget } from "devicelet/provider/testing";
import { eventually } from "../support/eventually.ts";
import { testenvDir } from "../support/testenv.ts";

const stateFile = path.join(mkdtempSync(path.join(os.tmpdir(), "devicelet-kit-mock-")), "state.json");
const devices = ["dev-0", "dev-1"] as const;

const target: ProviderTarget<MockProvider> = {
  name: "mock",
  devices,
  image: "example/app:1",
  create: (context) =>
    createMockProvider({ devices: devices.map((id) => ({ id })), appStartDelayMs: 100, stateFile }, context),
  setDeviceOnline: async (provider, id, online) => {
    provider.setConnected(id, online);
    await eventually(async () =>
      expect((await provider.listDevices()).find((d) => d.id === id)?.connected).toBe(online),
    );
  },
};

describeEngineConformance(target, { controlPlaneDir: testenvDir });
