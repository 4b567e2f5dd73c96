import pino from "pino";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../config/index.ts";
import { certificateOptions, POD_IP_ENV, resolveKubeletAddress } from "./index.ts";

/** A logger that keeps the messages of its warnings. */
function recorder() {
  const warnings: string[] = [];
  const logger = pino(
    { level: "warn" },
    { write: (line: string) => warnings.push((JSON.parse(line) as { msg: string }).msg) },
  );
  return { logger, warnings };
}

const kubelet = (yaml: string) =>
  parseConfig(`provider: { type: mock }\nkubelet: ${yaml}\n`, "t.yaml").kubelet;

describe("resolveKubeletAddress", () => {
  it("takes kubelet.address, else the pod IP, else 127.0.0.1 with a warning that the API server will not proxy to it", () => {
    const r = recorder();
    expect(
      resolveKubeletAddress(kubelet("{ address: 10.1.2.3 }"), { [POD_IP_ENV]: "10.9.9.9" }, r.logger),
    ).toBe("10.1.2.3");
    expect(resolveKubeletAddress(kubelet("{}"), { [POD_IP_ENV]: "fd00::7" }, r.logger)).toBe("fd00::7");
    expect(r.warnings).toEqual([]);
    expect(resolveKubeletAddress(kubelet("{}"), {}, r.logger)).toBe("127.0.0.1");
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toContain("will not proxy to");
    // Not served: nobody is misled, so no warning.
    expect(resolveKubeletAddress(kubelet("{ serve: false }"), { [POD_IP_ENV]: "garbage" }, r.logger)).toBe(
      "127.0.0.1",
    );
    expect(r.warnings).toHaveLength(2);
    expect(r.warnings[1]).toContain("is not an IP address");
  });
});

describe("certificateOptions", () => {
  it("names the advertised address in the CSR and keeps Secrets in the state namespace by default", () => {
    expect(
      certificateOptions(kubelet("{ tls: { csrExpirationSeconds: 3600 } }"), "10.1.2.3", "devicelet"),
    ).toEqual({
      source: "csr",
      ipAddresses: ["10.1.2.3"],
      dnsNames: [],
      approve: false,
      expirationSeconds: 3600,
      store: { namespace: "devicelet", name: "devicelet-kubelet-serving" },
    });
    expect(
      certificateOptions(kubelet("{ tls: { source: secret, secretName: tls } }"), "10.1.2.3", "ops"),
    ).toEqual({
      source: "secret",
      namespace: "ops",
      name: "tls",
    });
  });
});
