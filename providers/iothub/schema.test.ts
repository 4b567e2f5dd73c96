/**
 * The IoT Hub provider's configuration as `devicelet run` parses it: defaults filled in, and every
 * problem reported at once with its path.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig, type ConfigProblem } from "../../src/config/index.ts";
import { iothubConfigSchema, type IotHubConfig } from "./schema.ts";

const dir = mkdtempSync(join(tmpdir(), "devicelet-iothub-schema-"));
const secret = join(dir, "connection-string");
writeFileSync(secret, "HostName=h.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey=a2V5\n");
const missing = join(dir, "missing");

const parse = (config: string) =>
  parseConfig(`provider: { type: iothub, config: ${config} }\n`, "iothub.yaml", {
    providerSchemas: { iothub: iothubConfigSchema },
  });

const problems = (config: string): string[] => {
  try {
    parse(config);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems.map((p: ConfigProblem) => `${p.path}: ${p.message}`);
  }
  return [];
};

describe("iothub provider config", () => {
  it("fills the defaults: S1 with one unit, every device allowed, 30 KB of the desired section", () => {
    const config = parse(`{ hub: { connectionStringFile: "${secret}" }, devices: {} }`).provider
      .config as unknown as IotHubConfig;
    expect(config.hub).toMatchObject({
      tier: "S1",
      units: 1,
      sweepIntervalSeconds: 15,
      watchSeconds: 30,
      methodResponseTimeoutSeconds: 10,
      budget: {},
    });
    expect(config.devices.allow).toEqual(["*"]);
    expect(config.desired.maxDocumentBytes).toBe(30 * 1024);
    expect(config.events).toBeUndefined();
  });

  it("lists every problem at once, each with its path", () => {
    const found = problems(
      `{ hub: { connectionStringFile: "${missing}", connectionString: "x", caFile: "${secret}", tier: S9, units: 0, methodResponseTimeoutSeconds: 1 },
         events: { consumerGroup: cg }, devices: { ids: ["Bad Id"] }, desired: { maxDocumentBytes: 40000 } }`,
    );
    expect(found).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^\/provider\/config\/hub\/tier: /),
        expect.stringMatching(/^\/provider\/config\/hub\/units: /),
        expect.stringMatching(/^\/provider\/config\/hub\/methodResponseTimeoutSeconds: /),
        expect.stringMatching(/^\/provider\/config\/devices\/ids\/0: /),
        expect.stringMatching(/^\/provider\/config\/desired\/maxDocumentBytes: .*32768/),
      ]),
    );
  });

  it("wants exactly one way to give each connection string, and readable files", () => {
    expect(problems(`{ hub: {}, devices: {} }`)).toEqual([
      "/provider/config/hub/connectionStringFile: or /provider/config/hub/connectionString is required",
    ]);
    expect(
      problems(`{ hub: { connectionString: "a", connectionStringFile: "${secret}" }, devices: {} }`),
    ).toEqual([
      "/provider/config/hub/connectionString: give one of /provider/config/hub/connectionStringFile and /provider/config/hub/connectionString, not both",
    ]);
    expect(problems(`{ hub: { connectionString: "a" }, events: {}, devices: {} }`)).toEqual([
      "/provider/config/events/connectionStringFile: or /provider/config/events/connectionString is required",
    ]);
    expect(problems(`{ hub: { connectionStringFile: "${missing}" }, devices: {} }`)).toEqual([
      expect.stringMatching(/^\/provider\/config\/hub\/connectionStringFile: .*(exist|found)/),
    ]);
  });

  it("refuses a CA file without an endpoint it could apply to", () => {
    expect(problems(`{ hub: { connectionString: "a", caFile: "${secret}" }, devices: {} }`)).toEqual([
      expect.stringMatching(
        /^\/provider\/config\/hub\/caFile: applies only to \/provider\/config\/hub\/endpoint/,
      ),
    ]);
    expect(
      problems(
        `{ hub: { connectionString: "a", caFile: "${secret}", endpoint: "https://127.0.0.1:8443" }, devices: {} }`,
      ),
    ).toEqual([]);
  });
});
