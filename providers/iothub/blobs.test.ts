/**
 * Large files over IoT Hub (issue 12, "Size"): a pod with a 40 KB ConfigMap file, which inline
 * would not fit the twin's desired section (DocumentTooLarge), reaches the device with the file by
 * reference once `desired.blobs` names a container. Real parts end to end: the IoT Hub provider on
 * the local IoT Hub emulator, the blob emulator (hack/blob-emulator.ts), and a device on the
 * unmodified device SDK (IotHubLink, DeviceSession). The simulated runtime does not write files, so
 * the device's part is played by the agent's own file writer (src/device/pod-files.ts) over the
 * pods the runtime was given, with a fetcher that trusts the emulator's CA.
 */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBlobEmulator, type BlobEmulator } from "../../hack/blob-emulator.ts";
import { IotHubLink } from "../../src/device/iothub-link.ts";
import { writeAppFiles, type FetchBytes } from "../../src/device/pod-files.ts";
import { DeviceSession } from "../../src/device/session.ts";
import { SimRuntime } from "../../src/device/sim-runtime.ts";
import { desiredContentHash, encodeMessage } from "../../src/protocol/codec.ts";
import type { DesiredPod, Tombstone } from "../../src/protocol/types.ts";
import type { AppFile, Workload } from "../../src/provider/types.ts";
import { testContext } from "../../src/testing/context.ts";
import { workload } from "../../src/testing/workload.ts";
import { workloadHash } from "../../src/workload/translate.ts";
import { eventually } from "../../test/support/eventually.ts";
import { emulatorHubConfig, logger, startTestHub, type TestHub } from "../../test/support/iothub-hub.ts";
import { toDesiredPod } from "../mqtt/translate.ts";
import { createIotHubProvider } from "./index.ts";
import { TWIN_DOCUMENT_SIZE } from "./provider.ts";

/** A runtime that keeps the pods the device session gave it. */
class RecordingRuntime extends SimRuntime {
  applied: readonly DesiredPod[] = [];
  override apply(pods: readonly DesiredPod[], tombstones: readonly Tombstone[]): Promise<void> {
    this.applied = pods;
    return super.apply(pods, tombstones);
  }
}

let hub: TestHub;
let blobs: BlobEmulator;
let dir: string;
beforeAll(async () => {
  [hub, blobs] = await Promise.all([startTestHub(), startBlobEmulator()]);
  dir = mkdtempSync(path.join(tmpdir(), "devicelet-iothub-blobs-"));
  writeFileSync(path.join(dir, "hub-ca.pem"), hub.emulator.ca);
  writeFileSync(path.join(dir, "blob-ca.pem"), blobs.ca);
});
afterAll(async () => {
  await hub.close();
  await blobs.close();
});

/** GET trusting the blob emulator's CA, as a device given that CA would. */
const fetchTrusting: FetchBytes = (url, maxBytes) =>
  new Promise((resolve, reject) => {
    https
      .get(url, { ca: blobs.ca, timeout: 5000 }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const body = Buffer.concat(chunks);
          if (res.statusCode !== 200 || body.length > maxBytes) reject(new Error(`HTTP ${res.statusCode}`));
          else resolve(body);
        });
      })
      .on("error", reject);
  });

describe("IoT Hub with desired.blobs", () => {
  it("gets a pod with a 40 KB file to the device, the file by reference", async () => {
    const deviceId = hub.newDeviceId();
    const runtime = new RecordingRuntime();
    const session = new DeviceSession({
      deviceId,
      link: new IotHubLink({
        deviceId,
        connectionString: hub.emulator.deviceConnectionString(deviceId),
        ca: hub.emulator.ca,
        logger,
        reconnectMs: 100,
      }),
      runtime,
      device: {
        deviceClass: "gateway",
        os: "linux",
        arch: "arm64",
        capacity: { cpu: "2", memory: "1Gi", pods: "10" },
        capabilities: {
          maxMessageBytes: 65536,
          encodings: ["json"],
          runtime: "process",
          logs: false,
          exec: false,
        },
      },
      logger,
      reportCoalesceMs: 1,
    });
    await session.start();
    await session.whenOnline();

    const config = Array.from(
      { length: 40 * 64 },
      (_, i) => `line ${String(i).padStart(5, "0")} of the model`,
    )
      .join("\n")
      .slice(0, 40 * 1024);
    const files: AppFile[] = [
      { path: "/etc/app/model.txt", content: config, encoding: "utf8", secret: false },
    ];
    const base = workload({ name: "bulky", deviceId, image: "example/app:1" });
    const { hash: _hash, ...unhashed } = { ...base, apps: base.apps.map((a) => ({ ...a, files })) };
    const w: Workload = { ...unhashed, hash: workloadHash(unhashed) };
    // Inline, the twin could not hold it: what a provider without a blob store holds back.
    const inline = toDesiredPod(w);
    const inlineBytes = TWIN_DOCUMENT_SIZE.measure(
      encodeMessage({
        protocol: 1,
        kind: "desired",
        deviceId,
        epoch: "e",
        generation: 1,
        issuedAt: new Date().toISOString(),
        pods: [inline],
        tombstones: [],
        contentHash: desiredContentHash([inline], []),
      }),
    );
    expect(inlineBytes).toBeGreaterThan(30 * 1024);

    const provider = createIotHubProvider(
      {
        hub: emulatorHubConfig(hub.emulator, path.join(dir, "hub-ca.pem")),
        devices: { ids: [deviceId] },
        desired: {
          readbackTimeoutMs: 2000,
          blobs: { containerUrl: blobs.containerSasUrl(), caFile: path.join(dir, "blob-ca.pem") },
        },
      },
      testContext(),
    );
    try {
      await provider.start(new AbortController().signal);
      await eventually(
        async () => expect((await provider.listDevices()).map((d) => d.id)).toEqual([deviceId]),
        {
          timeoutMs: 10_000,
        },
      );
      await provider.createPod(w);
      const status = await eventually(
        async () => {
          const s = await provider.getPodStatus(w.pod);
          expect(s?.phase).toBe("Running");
          return s;
        },
        { timeoutMs: 15_000, intervalMs: 50 },
      );
      expect(status?.reason).not.toBe("DocumentTooLarge");
      const [given] = runtime.applied;
      const [file] = given?.apps[0]?.files ?? [];
      expect(file && "ref" in file ? file.ref.size : undefined).toBe(Buffer.byteLength(config));
      const root = path.join(dir, "work", w.pod.uid, "app");
      await writeAppFiles(root, given?.apps[0]?.files ?? [], { fetcher: fetchTrusting });
      expect(readFileSync(path.join(root, "etc/app/model.txt"), "utf8")).toBe(config);
    } finally {
      await provider.stop();
      await session.stop().catch(() => undefined);
    }
  });
});
