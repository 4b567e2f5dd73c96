import { describe, expect, it } from "vitest";
import { createToken, parseToken } from "../../hack/iothub-emulator/index.ts";
import { parseServiceConnectionString, SasTokenSource, serviceToken } from "./sas.ts";

const key = Buffer.alloc(32, 7).toString("base64");
const text = `HostName=hub-1.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=${key}`;

describe("parseServiceConnectionString", () => {
  it("reads the three parts in any order, keeping a key that ends in '='", () => {
    const shuffled = `SharedAccessKey=${key};HostName=hub-1.azure-devices.net;SharedAccessKeyName=iothubowner`;
    expect(key.endsWith("=")).toBe(true);
    expect(parseServiceConnectionString(shuffled)).toEqual({
      hostName: "hub-1.azure-devices.net",
      policyName: "iothubowner",
      key,
    });
  });

  it("names every missing part and never shows the key", () => {
    expect(() => parseServiceConnectionString(`HostName=h;SharedAccessKey=${key}`)).toThrow(
      /lacks SharedAccessKeyName$/,
    );
    expect(() => parseServiceConnectionString("SharedAccessKeyName=p;SharedAccessKey=")).toThrow(
      "IoT Hub service connection string lacks HostName, SharedAccessKey",
    );
    try {
      parseServiceConnectionString(`SharedAccessKey=${key}`);
    } catch (err) {
      expect((err as Error).message).not.toContain(key);
    }
  });
});

describe("service tokens", () => {
  it("are signed as the hub checks them: HMAC-SHA256 of the encoded resource and the expiry", () => {
    const credentials = parseServiceConnectionString(text);
    const token = serviceToken({ credentials, expirySeconds: 2_000_000_000 });
    expect(token).toBe(
      createToken({ resource: credentials.hostName, key, policy: "iothubowner", expiry: 2_000_000_000 }),
    );
    const parsed = parseToken(token);
    expect(parsed).toMatchObject({
      resource: "hub-1.azure-devices.net",
      expiry: 2_000_000_000,
      policy: "iothubowner",
    });
    expect(parsed?.signedWith(key)).toBe(true);
    expect(parsed?.signedWith(Buffer.from("another key").toString("base64"))).toBe(false);
  });

  it("are cached and renewed once a fifth of their lifetime is left", () => {
    let now = 1_000_000_000_000;
    const tokens = new SasTokenSource({
      credentials: parseServiceConnectionString(text),
      ttlSeconds: 1000,
      now: () => now,
    });
    const first = tokens.token();
    expect(tokens.expirySeconds()).toBe(1_000_000_000 + 1000);
    now += 799_000;
    expect(tokens.token()).toBe(first);
    now += 2_000; // 199 s left: under a fifth
    const second = tokens.token();
    expect(second).not.toBe(first);
    expect(parseToken(second)?.expiry).toBe(1_000_000_000 + 801 + 1000);
  });
});
