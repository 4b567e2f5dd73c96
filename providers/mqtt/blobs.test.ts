/**
 * Large files by reference (blobs.ts): the Azure Blob container store against the local blob
 * emulator (hack/blob-emulator.ts, SAS verified with the account key), the policy of which files
 * go by reference, and the MQTT provider end to end — a real provider on the embedded broker, a
 * device played by an MQTT client — publishing a 40 KB ConfigMap file as a reference whose URL
 * serves the exact bytes, keeping a Secret's file inline, and publishing nothing new for the same
 * pod after a restart.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import https from "node:https";
import { tmpdir } from "node:os";
import path from "node:path";
import mqtt from "mqtt";
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startBlobEmulator, type BlobEmulator } from "../../hack/blob-emulator.ts";
import { startEmbeddedBroker, type EmbeddedBroker } from "../../src/broker/embedded.ts";
import { ConfigError, parseConfig } from "../../src/config/index.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { DesiredDocument, DesiredFile, PresenceMessage } from "../../src/protocol/types.ts";
import { isTransient } from "../../src/provider/errors.ts";
import type { AppFile, Workload } from "../../src/provider/types.ts";
import { testContext, type TestContext } from "../../src/testing/context.ts";
import { refOf, workload } from "../../src/testing/workload.ts";
import { workloadHash } from "../../src/workload/translate.ts";
import { eventually } from "../../test/support/eventually.ts";
import { gatewayBirth } from "../../test/support/device-messages.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { AzureBlobContainer, BLOB_PREFIX, BlobStoreError, FileReferences, type BlobStore } from "./blobs.ts";
import { iothubConfigSchema } from "../iothub/schema.ts";
import { DesiredStore } from "./desired.ts";
import { GenerationAllocator } from "./generations.ts";
import { createMqttProvider, type MqttProvider } from "./index.ts";
import { MqttMetrics } from "./metrics.ts";
import { mqttConfigSchema, type MqttConfig } from "./schema.ts";
import { SecretGate } from "./secret-gate.ts";
import { WorkloadHashes } from "./workload-hashes.ts";
import { Workloads } from "./workloads.ts";

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** 40 KB of text that does not compress to nothing. */
const bigText = (seed: string) =>
  Array.from(
    { length: 1000 },
    (_, i) => `${seed}-${String(i).padStart(4, "0")}-${"abcdefghijklmnopqrstuvwxyz0123".slice(i % 7)}`,
  )
    .join("\n")
    .padEnd(40 * 1024, "#");

let blobs: BlobEmulator;
let caFile: string;
beforeAll(async () => {
  blobs = await startBlobEmulator();
  caFile = path.join(mkdtempSync(path.join(tmpdir(), "devicelet-blobs-")), "blob-ca.pem");
  writeFileSync(caFile, blobs.ca);
});
afterAll(async () => {
  await blobs.close();
});

/** GET of a URL, trusting the emulator's CA. */
const get = (url: string): Promise<{ status: number; body: Buffer }> =>
  new Promise((resolve, reject) => {
    https
      .get(url, { ca: blobs.ca, timeout: 5000 }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      })
      .on("error", reject);
  });

describe("AzureBlobContainer", () => {
  it("uploads under the content's sha256 and answers a URL with the SAS that serves it", async () => {
    const store = new AzureBlobContainer({ containerUrl: blobs.containerSasUrl(), ca: blobs.ca });
    const content = Buffer.from(bigText("upload"));
    const { url } = await store.put(sha256(content), content);
    store.close();
    expect(blobs.blob(`${BLOB_PREFIX}${sha256(content)}`)?.equals(content)).toBe(true);
    expect(new URL(url).pathname).toBe(
      `/${blobs.account}/${blobs.container}/${BLOB_PREFIX}${sha256(content)}`,
    );
    expect(new URL(url).searchParams.get("sig")).not.toBeNull();
    const fetched = await get(url);
    expect(fetched.status).toBe(200);
    expect(fetched.body.equals(content)).toBe(true);
  });

  it("sends content already stored only once (a HEAD finds it), also from a new process", async () => {
    const content = Buffer.from(bigText("dedupe"));
    const puts = () => blobs.requests.PUT ?? 0;
    const before = puts();
    const containerUrl = blobs.containerSasUrl();
    const first = new AzureBlobContainer({ containerUrl, ca: blobs.ca });
    const a = await first.put(sha256(content), content);
    const b = await first.put(sha256(content), content);
    first.close();
    const second = new AzureBlobContainer({ containerUrl, ca: blobs.ca });
    const c = await second.put(sha256(content), content);
    second.close();
    expect(puts() - before).toBe(1);
    expect(new Set([a.url, b.url, c.url]).size).toBe(1);
  });

  it("refuses with the blob's location and status, never the SAS", async () => {
    const forged = blobs.containerSasUrl({ signature: Buffer.alloc(32, 1).toString("base64") });
    const store = new AzureBlobContainer({ containerUrl: forged, ca: blobs.ca });
    const content = Buffer.from("refused");
    const failure = await store.put(sha256(content), content).catch((err: unknown) => err);
    store.close();
    expect(failure).toBeInstanceOf(BlobStoreError);
    const message = (failure as Error).message;
    expect(message).toContain(`${blobs.containerUrl}/${BLOB_PREFIX}${sha256(content)}`);
    expect(message).toContain("403 AuthenticationFailed");
    expect(message).not.toContain("sig=");
    expect(message).not.toContain("?");
    expect(blobs.blob(`${BLOB_PREFIX}${sha256(content)}`)).toBeUndefined();
  });

  it("refuses a URL that is not a container SAS URL without quoting its query", () => {
    expect(
      () => new AzureBlobContainer({ containerUrl: `${blobs.containerUrl}?sv=2021-08-06&sp=r` }),
    ).toThrow(/carries no SAS/);
    expect(
      () => new AzureBlobContainer({ containerUrl: blobs.containerSasUrl().replace("https:", "http:") }),
    ).toThrow(
      /^the blob container URL http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1\/devicelet is not an https URL$/,
    );
  });
});

const file = (p: string, content: string, o: Partial<AppFile> = {}): AppFile => ({
  path: p,
  content,
  encoding: "utf8",
  secret: false,
  ...o,
});

/** A kit workload whose first app carries `files`, hashed again. */
const withFiles = (name: string, deviceId: string, files: AppFile[], uid?: string): Workload => {
  const w = workload({ name, deviceId, image: "example/app:1", ...(uid ? { uid } : {}) });
  const { hash: _hash, ...unhashed } = { ...w, apps: w.apps.map((a) => ({ ...a, files })) };
  return { ...unhashed, hash: workloadHash(unhashed) };
};

/** A store that keeps what it is given and can be made to fail. */
const recordingStore = () => {
  const puts: string[] = [];
  const store: BlobStore & { puts: string[]; failWith?: Error } = {
    puts,
    put(hash) {
      if (store.failWith) return Promise.reject(store.failWith);
      puts.push(hash);
      return Promise.resolve({ url: `https://blobs.test/c/${hash}?sig=secret` });
    },
    close: () => undefined,
  };
  return store;
};

describe("FileReferences", () => {
  it("references files not from Secrets at least minFileBytes long (decoded), each content stored once", async () => {
    const store = recordingStore();
    const refs = new FileReferences({ store, minFileBytes: 100 });
    const big = file("/etc/big.txt", "b".repeat(100));
    const binary = file("/etc/model.bin", Buffer.alloc(150, 3).toString("base64"), { encoding: "base64" });
    const shortBase64 = file("/etc/short.bin", Buffer.alloc(99, 1).toString("base64"), {
      encoding: "base64",
    });
    const secret = file("/etc/key.pem", "k".repeat(500), { secret: true, mode: 0o600 });
    const w1 = withFiles("one", "gw-1", [big, binary, shortBase64, secret]);
    const w2 = withFiles("two", "gw-1", [file("/other/path.txt", "b".repeat(100))]);
    const [refOf1, refOf2] = await Promise.all([refs.prepare(w1), refs.prepare(w2)]);
    expect(refOf1(big)).toEqual({
      url: `https://blobs.test/c/${sha256(Buffer.from(big.content))}?sig=secret`,
      sha256: sha256(Buffer.from(big.content)),
      size: 100,
    });
    expect(refOf1(binary)?.sha256).toBe(sha256(Buffer.alloc(150, 3)));
    expect(refOf1(binary)?.size).toBe(150);
    expect([refOf1(shortBase64), refOf1(secret)]).toEqual([undefined, undefined]);
    expect(refOf2(w2.apps[0]?.files[0] as AppFile)?.url).toBe(refOf1(big)?.url);
    expect(store.puts.sort()).toEqual(
      [sha256(Buffer.from(big.content)), sha256(Buffer.alloc(150, 3))].sort(),
    );
  });

  it("fails Transient naming the file when the store fails", async () => {
    const store = recordingStore();
    store.failWith = new BlobStoreError(503, "Azure Blob PUT https://a/c/x answered 503 ServerBusy");
    const refs = new FileReferences({ store, minFileBytes: 10 });
    const failure = await refs
      .prepare(withFiles("p", "gw-1", [file("/etc/big.txt", "x".repeat(20))]))
      .catch((err: unknown) => err);
    expect(isTransient(failure)).toBe(true);
    expect((failure as Error).message).toMatch(/file \/etc\/big\.txt of pod default\/p .*503 ServerBusy/);
  });
});

describe("Workloads with files by reference", () => {
  it("an apply whose upload ends after the pod was deleted puts nothing back", async () => {
    const logger = pino({ level: "silent" });
    const uploads: (() => void)[] = [];
    let uploading: () => void = () => undefined;
    const started = new Promise<void>((resolve) => (uploading = resolve));
    const store: BlobStore = {
      put: (hash) =>
        new Promise((resolve) => {
          uploads.push(() => resolve({ url: `https://blobs.test/c/${hash}?sig=s` }));
          uploading();
        }),
      close: () => undefined,
    };
    const memory = new MemoryStore();
    const published: string[] = [];
    const desired = new DesiredStore({
      allocator: new GenerationAllocator({ store: memory, blockSize: 1000 }),
      publish: (_topic, payload) => {
        published.push(payload.toString("utf8"));
        return Promise.resolve();
      },
      maxBytes: () => 256 * 1024,
      debounceMs: 1,
      publishTimeoutMs: 1000,
      onChange: () => undefined,
      metrics: new MqttMetrics(),
      logger,
    });
    const deleted: string[] = [];
    const workloads = new Workloads({
      desired,
      statuses: { mark: () => undefined, forget: () => undefined },
      orphans: { claim: () => undefined, listed: () => undefined },
      restarts: {
        observe: () => undefined,
        seen: () => undefined,
        recall: () => undefined,
        forget: () => undefined,
      },
      secrets: new SecretGate({
        insecurity: undefined,
        devices: { secrets: { allow: [] } },
        allowSecretsWithoutTls: false,
      }),
      hashes: new WorkloadHashes({ store: memory, logger }),
      deleted: (ref) => deleted.push(ref.name),
      files: new FileReferences({ store, minFileBytes: 10 }),
    });
    const w = withFiles("late", "gw-1", [file("/etc/big.txt", "x".repeat(20))]);
    const applying = workloads.apply(w);
    await started;
    await workloads.delete(refOf(w), 0);
    uploads.forEach((finish) => finish());
    await applying;
    await desired.stop();
    expect(deleted).toEqual(["late"]);
    expect(desired.device("gw-1")?.pods.size ?? 0).toBe(0);
    expect(workloads.list()).toEqual([]);
    expect(published).toEqual([]);
  });
});

/** The MQTT provider with a blob store, on an embedded broker, and a device played by a client. */
describe("the MQTT provider with desired.blobs", () => {
  let broker: EmbeddedBroker | undefined;
  let device: mqtt.MqttClient | undefined;
  const providers: MqttProvider[] = [];
  afterEach(async () => {
    await device?.endAsync();
    for (const p of providers.splice(0)) await p.stop();
    await broker?.close();
    [device, broker] = [undefined, undefined];
  });

  const birth = (deviceId: string): PresenceMessage => ({
    protocol: 1,
    kind: "presence",
    deviceId,
    state: "online",
    bootId: "b-1",
    seq: 1,
    sentAt: new Date().toISOString(),
    device: gatewayBirth({ cpu: "4", memory: "2Gi", pods: "20" }),
  });

  async function startDevice(b: EmbeddedBroker): Promise<DesiredDocument[]> {
    const documents: DesiredDocument[] = [];
    device = await mqtt.connectAsync(b.url, { clientId: "gw-1", clean: true, reconnectPeriod: 0 });
    device.on("message", (_topic, payload) => {
      if (payload.length > 0) documents.push(JSON.parse(payload.toString("utf8")) as DesiredDocument);
    });
    await device.subscribeAsync(topics.desired("gw-1"), { qos: 1 });
    await device.publishAsync(topics.state("gw-1"), encodeMessage(birth("gw-1")), { qos: 1, retain: true });
    return documents;
  }

  async function startProvider(b: EmbeddedBroker, containerUrl: string, context: TestContext) {
    const provider = createMqttProvider(
      {
        broker: { url: b.url, clientId: "devicelet-blobs-test" },
        devices: { allow: ["gw-*"] },
        desired: { readbackTimeoutMs: 500, blobs: { containerUrl, caFile } },
        // The embedded broker is plain MQTT: let the Secret's file through to see it stays inline.
        allowSecretsWithoutTls: true,
      },
      context,
    );
    providers.push(provider);
    await provider.start(new AbortController().signal);
    await eventually(async () => expect((await provider.listDevices()).length).toBe(1));
    return provider;
  }

  const filesOf = (doc: DesiredDocument | undefined, name: string): readonly DesiredFile[] =>
    doc?.pods.find((p) => p.name === name)?.apps[0]?.files ?? [];

  it("sends a 40 KB ConfigMap file by reference, a Secret's inline, and the same document after a restart", async () => {
    broker = await startEmbeddedBroker();
    const documents = await startDevice(broker);
    const config = bigText("configmap");
    const secretKey = "s".repeat(8 * 1024);
    const w = withFiles("bulky", "gw-1", [
      file("/etc/app/config.txt", config, { mode: 0o640 }),
      file("/etc/app/key.pem", secretKey, { secret: true, mode: 0o600 }),
    ]);
    const context = testContext();
    const containerUrl = blobs.containerSasUrl(); // the config, the same for both processes
    const first = await startProvider(broker, containerUrl, context);
    await first.createPod(w);
    const sent = await eventually(() => {
      const doc = documents.at(-1);
      expect(filesOf(doc, "bulky")).toHaveLength(2);
      return doc;
    });
    const [byRef, inline] = filesOf(sent, "bulky");
    expect(byRef).toEqual({
      path: "/etc/app/config.txt",
      mode: 0o640,
      ref: {
        url: expect.any(String) as string,
        sha256: sha256(Buffer.from(config)),
        size: Buffer.byteLength(config),
      },
    });
    expect(inline).toEqual({ path: "/etc/app/key.pem", encoding: "utf8", content: secretKey, mode: 0o600 });
    const fetched = await get((byRef as { ref: { url: string } }).ref.url);
    expect(fetched.body.toString("utf8")).toBe(config);
    expect(JSON.stringify(sent)).not.toContain(config.slice(0, 200));

    // A restart: a new provider over the same durable store and retained document, given the pod
    // again, builds the same document and publishes nothing for it; the next document (a marker
    // pod's) still carries the bulky pod exactly as before, and its file was not uploaded again.
    await first.stop();
    const putsBefore = blobs.requests.PUT ?? 0;
    const seen = documents.length;
    const second = await startProvider(broker, containerUrl, testContext({ store: context.store }));
    await second.createPod(w);
    await second.createPod(withFiles("marker", "gw-1", []));
    const next = await eventually(() => {
      const doc = documents.at(-1);
      expect(doc?.pods.map((p) => p.name).sort()).toEqual(["bulky", "marker"]);
      return doc;
    });
    expect(documents.length - seen).toBe(1);
    expect(next?.pods.find((p) => p.name === "bulky")).toEqual(sent?.pods.find((p) => p.name === "bulky"));
    expect((blobs.requests.PUT ?? 0) - putsBefore).toBe(0);
  });

  it("fails createPod Transient, without the SAS, when the container refuses the upload", async () => {
    broker = await startEmbeddedBroker();
    const documents = await startDevice(broker);
    const provider = await startProvider(broker, blobs.containerSasUrl({ permissions: "r" }), testContext());
    const w = withFiles("refused", "gw-1", [file("/etc/app/config.txt", bigText("refused"))]);
    const failure = await provider.createPod(w).catch((err: unknown) => err);
    expect(isTransient(failure)).toBe(true);
    expect((failure as Error).message).toMatch(
      /\/etc\/app\/config\.txt .*403 AuthorizationPermissionMismatch/,
    );
    expect((failure as Error).message).not.toContain("sig=");
    // Settled: a later pod's document goes out without the refused one.
    await provider.createPod(withFiles("marker", "gw-1", []));
    await eventually(() => expect(documents.at(-1)?.pods.map((p) => p.name)).toEqual(["marker"]));
  });
});

describe("desired.blobs config", () => {
  const parse = (type: "mqtt" | "iothub", blobsYaml: string) => {
    const base =
      type === "mqtt"
        ? `broker: { url: "mqtt://127.0.0.1:1883" }, devices: { allow: ["*"] }`
        : `hub: { connectionString: "HostName=h.azure-devices.net;SharedAccessKeyName=s;SharedAccessKey=a2V5" }, devices: {}`;
    return parseConfig(
      `provider: { type: ${type}, config: { ${base}, desired: { blobs: ${blobsYaml} } } }\n`,
      "c.yaml",
      {
        providerSchemas: { mqtt: mqttConfigSchema, iothub: iothubConfigSchema },
      },
    );
  };
  const problems = (type: "mqtt" | "iothub", blobsYaml: string): string[] => {
    try {
      parse(type, blobsYaml);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as ConfigError).problems.map((p) => `${p.path}: ${p.message}`);
    }
    return [];
  };

  it("takes the URL from a file or inline, with minFileBytes 4096 unless set, in both providers", () => {
    const urlFile = path.join(path.dirname(caFile), "container-url");
    writeFileSync(urlFile, `${blobs.containerSasUrl()}\n`);
    for (const type of ["mqtt", "iothub"] as const) {
      const config = parse(type, `{ containerUrlFile: "${urlFile}", caFile: "${caFile}" }`).provider
        .config as unknown as MqttConfig;
      expect(config.desired.blobs).toEqual({ containerUrlFile: urlFile, caFile, minFileBytes: 4096 });
    }
  });

  it("wants exactly one of containerUrlFile and containerUrl, a container SAS URL, readable files; lists every problem, never the SAS", () => {
    const sas = blobs.containerSasUrl();
    const signature = new URL(sas).searchParams.get("sig") ?? "";
    for (const type of ["mqtt", "iothub"] as const) {
      const at = "/provider/config/desired/blobs";
      expect(problems(type, "{}")).toEqual([`${at}/containerUrlFile: or ${at}/containerUrl is required`]);
      const both = problems(
        type,
        `{ containerUrl: "${sas}", containerUrlFile: "${caFile}", caFile: "/nonexistent/ca.pem" }`,
      );
      expect(both).toEqual([
        `${at}/containerUrl: give one of ${at}/containerUrlFile and ${at}/containerUrl, not both`,
        `${at}/containerUrlFile: the URL in it is not a URL`,
        `${at}/caFile: file "/nonexistent/ca.pem" does not exist`,
      ]);
      const unsigned = problems(type, `{ containerUrl: "${sas.replace(/&sig=.*$/, "")}" }`);
      expect(unsigned).toEqual([
        expect.stringMatching(
          /containerUrl: https:\/\/127\.0\.0\.1:\d+\/devstoreaccount1\/devicelet carries no SAS/,
        ),
      ]);
      const plain = problems(type, `{ containerUrl: "${sas.replace("https:", "http:")}" }`);
      expect(plain).toEqual([expect.stringMatching(/is not an https URL$/)]);
      const wrongFile = path.join(path.dirname(caFile), "not-a-sas");
      writeFileSync(wrongFile, `${blobs.containerUrl}?sv=2021-08-06&sp=rcw\n`);
      const fromFile = problems(type, `{ containerUrlFile: "${wrongFile}" }`);
      expect(fromFile).toEqual([
        expect.stringMatching(/containerUrlFile: the URL in it https:.* carries no SAS/),
      ]);
      expect(JSON.stringify([both, unsigned, plain])).not.toContain(signature);
    }
  });
});
