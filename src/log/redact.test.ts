import { Writable } from "node:stream";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { desiredDocument, desiredPod } from "../device/fixtures.ts";
import { redaction, urlLocation, withoutCredentials } from "./redact.ts";

const MARKER = "marker-2c9e41d07b6a4f13a85e0d92c7b3f468";

const capture = () => {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(chunk.toString("utf8"));
      done();
    },
  });
  return { logger: pino({ level: "info", redact: redaction }, stream), lines };
};

describe("log redaction", () => {
  it("censors Secret-bearing fields of workloads, desired pods and documents, Secrets and ConfigMaps, at any logged depth", () => {
    const { logger, lines } = capture();
    const pod = desiredPod({
      uid: "u1",
      apps: [
        {
          name: "main",
          env: { TOKEN: MARKER },
          files: [{ path: "token", encoding: "utf8", content: MARKER }],
        },
      ],
    });
    const doc = desiredDocument({ deviceId: "gw-1", generation: 1, pods: [pod] });
    const workload = {
      apps: [{ env: { TOKEN: MARKER }, secretEnv: ["TOKEN"], files: [{ content: MARKER }] }],
    };
    const secret = { kind: "Secret", data: { v: MARKER }, stringData: { v: MARKER } };
    logger.info(doc, "document at the top");
    logger.info({ doc }, "document under a key");
    logger.info({ device: { last: doc } }, "document two down");
    logger.info({ pod }, "pod");
    logger.info({ pods: [pod] }, "pods");
    logger.info({ workload }, "workload");
    logger.info(workload, "workload at the top");
    logger.info({ secret, configMap: { data: { v: MARKER }, binaryData: { v: MARKER } } }, "objects");
    logger.info({ auth: { password: MARKER, token: MARKER } }, "credentials");
    expect(lines).toHaveLength(9);
    for (const line of lines) expect(line).not.toContain(MARKER);
    // Only the values go: ids and names stay readable.
    expect(lines[1]).toContain('"uid":"u1"');
    expect(lines[1]).toContain("[redacted]");
  });

  it("strips credentials from URLs and leaves others as they are", () => {
    expect(withoutCredentials("mqtt://user:pa%40ss@broker.example:1883")).toBe("mqtt://broker.example:1883");
    expect(withoutCredentials("mqtts://devicelet@10.0.0.1:8883/x?y=1")).toBe("mqtts://10.0.0.1:8883/x?y=1");
    expect(withoutCredentials("wss://u:p@host/mqtt")).toBe("wss://host/mqtt");
    expect(withoutCredentials("mqtt://broker:1883/a@b")).toBe("mqtt://broker:1883/a@b");
    expect(withoutCredentials("mqtt://127.0.0.1:1883")).toBe("mqtt://127.0.0.1:1883");
  });

  it("shows only scheme, host and path of a URL whose query may carry a token", () => {
    expect(urlLocation("https://u:p@blobs.example:8443/a/m.bin?X-Amz-Signature=s#f")).toBe(
      "https://blobs.example:8443/a/m.bin",
    );
    expect(urlLocation("http://127.0.0.1/m")).toBe("http://127.0.0.1/m");
    expect(urlLocation("not a url?token=s")).toBe("not a url");
  });
});
