/**
 * The rules beyond the schemas (docs/configuration.md § Rules): each one alone, then a file with
 * several problems of every kind, all listed in one error.
 */
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { mockConfigSchema } from "../../providers/mock/schema.ts";
import { createMqttProvider } from "../../providers/mqtt/index.ts";
import { mqttConfigSchema } from "../../providers/mqtt/schema.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { ConfigError, parseConfig, type ConfigProblem } from "./index.ts";

const dir = mkdtempSync(join(tmpdir(), "devicelet-rules-"));
const pem = join(dir, "client.pem");
writeFileSync(pem, "not checked here, only that it can be read\n");
const missing = join(dir, "missing.pem");

const providerSchemas = { mqtt: mqttConfigSchema, mock: mockConfigSchema };

const problemsOf = (text: string): readonly ConfigProblem[] => {
  try {
    parseConfig(text, "rules.yaml", { providerSchemas });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  return [];
};

/** An MQTT config with `broker` fields merged in (flow YAML). */
const mqtt = (broker: string, extra = "") =>
  `provider: { type: mqtt, config: { broker: { ${broker} }, devices: { allow: ["*"] } } }\n${extra}`;

const paths = (text: string) => problemsOf(text).map((p) => `${p.path}: ${p.message}`);

describe("configuration rules", () => {
  it("accepts a valid MQTT file with TLS files that exist", () => {
    expect(
      paths(mqtt(`url: "mqtts://b:8883", tls: { ca: "${pem}", cert: "${pem}", key: "${pem}" }`)),
    ).toEqual([]);
  });

  it("tls.cert needs tls.key, and the reverse", () => {
    expect(paths(mqtt(`url: "mqtts://b", tls: { cert: "${pem}" }`))).toEqual([
      "/provider/config/broker/tls/key: is required when /provider/config/broker/tls/cert is set",
    ]);
    expect(paths(mqtt(`url: "mqtts://b", tls: { key: "${pem}" }`))).toEqual([
      "/provider/config/broker/tls/cert: is required when /provider/config/broker/tls/key is set",
    ]);
  });

  it("reconnect.minDelayMs must be at most maxDelayMs", () => {
    expect(paths(mqtt(`url: "mqtt://b", reconnect: { minDelayMs: 5000, maxDelayMs: 1000 }`))).toEqual([
      "/provider/config/broker/reconnect/minDelayMs: must be at most /provider/config/broker/reconnect/maxDelayMs (1000)",
    ]);
  });

  it("refuses TLS settings on a plain mqtt:// or ws:// URL, where they would be unused", () => {
    expect(paths(mqtt(`url: "mqtt://b", tls: { ca: "${pem}", rejectUnauthorized: false }`))).toEqual([
      "/provider/config/broker/tls/ca: is a TLS setting, but /provider/config/broker/url is a plain mqtt:// URL where it would be silently unused: use mqtts:// or remove it",
      "/provider/config/broker/tls/rejectUnauthorized: is a TLS setting, but /provider/config/broker/url is a plain mqtt:// URL where it would be silently unused: use mqtts:// or remove it",
    ]);
    expect(paths(mqtt(`url: "ws://b/mqtt", tls: { servername: broker }`))).toEqual([
      "/provider/config/broker/tls/servername: is a TLS setting, but /provider/config/broker/url is a plain ws:// URL where it would be silently unused: use wss:// or remove it",
    ]);
    expect(paths(mqtt(`url: "wss://b/mqtt", tls: { servername: broker }`))).toEqual([]);
  });

  it("files named in the config must exist and be readable now", () => {
    expect(paths(mqtt(`url: "mqtts://b", passwordFile: "${missing}", tls: { ca: "${dir}" }`))).toEqual([
      `/provider/config/broker/passwordFile: file "${missing}" does not exist`,
      `/provider/config/broker/tls/ca: "${dir}" is not a regular file`,
    ]);
    expect(paths(`kubeconfig: "${missing}"\nprovider: { type: mock }`)).toEqual([
      `/kubeconfig: file "${missing}" does not exist`,
    ]);
  });

  it.skipIf(process.getuid?.() === 0)("a file this process may not read is refused", () => {
    const secret = join(dir, "secret");
    writeFileSync(secret, "x");
    chmodSync(secret, 0o000);
    expect(paths(mqtt(`url: "mqtt://b", passwordFile: "${secret}"`))).toEqual([
      `/provider/config/broker/passwordFile: file "${secret}" is not readable`,
    ]);
  });

  it.each([
    ["10.0.0.0/31", "leaves no address for a pod"],
    ["10.0.0.7/32", "leaves no address for a pod"],
    ["fd00::/64", "is not an IPv4 CIDR: pod IPs are allocated from IPv4 ranges only"],
    ["10.0.0.0/7", "is wider than the /8 the allocator serves"],
  ])("refuses the pod IP range %s, which the allocator cannot serve", (range, why) => {
    const problems = problemsOf(`pods: { ipRange: "${range}" }\nprovider: { type: mock }`);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ path: "/pods/ipRange", line: 1 });
    expect(problems[0]?.message).toContain(why);
  });

  it("kubelet: the port range fits, and the certificate source has what it needs", () => {
    const core = (kubelet: string) => paths(`provider: { type: mock }\nkubelet: ${kubelet}\n`);
    expect(core("{ port: 65000, portCount: 1000 }")).toEqual([
      "/kubelet/portCount: the range 65000..65999 goes past port 65535",
    ]);
    expect(core("{ tls: { source: files, certFile: '' } }")).toEqual([
      "/kubelet/tls/certFile: is required when /kubelet/tls/source is files",
      "/kubelet/tls/keyFile: is required when /kubelet/tls/source is files",
    ]);
    expect(core(`{ tls: { source: files, certFile: ${pem}, keyFile: ${missing} } }`)).toEqual([
      `/kubelet/tls/keyFile: file ${JSON.stringify(missing)} does not exist`,
    ]);
    expect(core("{ tls: { source: secret } }")).toEqual([
      "/kubelet/tls/secretName: is required when /kubelet/tls/source is secret",
    ]);
    expect(core("{ address: not-an-ip }")).toEqual(["/kubelet/address: must be a valid ip address"]);
    // Not served: nothing about the certificate matters.
    expect(core("{ serve: false, tls: { source: files } }")).toEqual([]);
    expect(core("{ address: '', bindAddress: 10.0.0.1, tls: { source: csr } }")).toEqual([]);
  });

  it("accepts the narrowest and widest ranges the allocator serves", () => {
    expect(paths(`pods: { ipRange: 10.0.0.0/30 }\nprovider: { type: mock }`)).toEqual([]);
    expect(paths(`pods: { ipRange: 10.0.0.0/8 }\nprovider: { type: mock }`)).toEqual([]);
  });

  it("mock: crashBackoffMs must be at most crashBackoffMaxMs", () => {
    expect(
      paths("provider: { type: mock, config: { crashBackoffMs: 900, crashBackoffMaxMs: 100 } }"),
    ).toEqual(["/provider/config/crashBackoffMs: must be at most /provider/config/crashBackoffMaxMs (100)"]);
  });

  it("lists every problem of a file at once, schema and rules, core and provider", () => {
    const text = [
      "api: { qps: 0 }", // 1: schema
      "lease: { durationSeconds: 10, renewIntervalSeconds: 10 }", // 2: rule
      "pods: { ipRange: 10.1.2.3/32, baseRetryDelayMs: 900, maxRetryDelayMs: 10 }", // 3: two rules
      `kubeconfig: "${missing}"`, // 4: file
      "provider:",
      "  type: mqtt",
      "  config:",
      "    broker:",
      '      url: "mqtt://b"', // 9
      `      tls: { cert: "${missing}" }`, // 10: no key, TLS on mqtt://, file missing
      "      reconnect: { minDelayMs: 900, maxDelayMs: 100 }", // 11: rule
      '    devices: { allow: ["*"], maxMessageBytes: 1 }', // 12: schema
    ].join("\n");
    const problems = problemsOf(text);
    expect(problems.map((p) => [p.path, p.line])).toEqual(
      expect.arrayContaining([
        ["/api/qps", 1],
        ["/lease/renewIntervalSeconds", 2],
        ["/pods/ipRange", 3],
        ["/pods/baseRetryDelayMs", 3],
        ["/kubeconfig", 4],
        ["/provider/config/broker/tls/key", 10],
        ["/provider/config/broker/tls/cert", 10],
        ["/provider/config/broker/reconnect/minDelayMs", 11],
        ["/provider/config/devices/maxMessageBytes", 12],
      ]),
    );
    // tls.cert is both on a plain URL and missing: two problems at the same path.
    expect(problems.filter((p) => p.path === "/provider/config/broker/tls/cert")).toHaveLength(2);
    expect(problems).toHaveLength(10);
  });

  it("a rule is not reported between fields the schema already refused", () => {
    expect(paths(mqtt(`url: "mqtt://b", reconnect: { minDelayMs: 5000, maxDelayMs: 1 }`))).toEqual([
      "/provider/config/broker/reconnect/maxDelayMs: must be >= 10",
    ]);
  });

  it("createMqttProvider applies the same rules to a config given in code", () => {
    const create = () =>
      createMqttProvider(
        { broker: { url: "mqtt://b", tls: { cert: pem } }, devices: { allow: ["*"] } },
        {
          logger: pino({ level: "silent" }),
          store: new MemoryStore(),
          recordEvent: () => undefined,
          fail: (err: Error) => {
            throw err;
          },
        },
      );
    expect(create).toThrow(ConfigError);
    expect(create).toThrow(
      /\/provider\/config\/broker\/tls\/key: is required when \/provider\/config\/broker\/tls\/cert is set/,
    );
  });
});
