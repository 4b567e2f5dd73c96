/**
 * A fault-injecting proxy between devicelet and the harness API server, for tests of what devicelet
 * does when the API server throttles, fails or stalls. It listens on plain HTTP on loopback and
 * forwards every request over TLS with devicelet's own client certificate, so devicelet (given
 * {@link FaultProxy.kubeconfig}) keeps its real identity and RBAC, and the proxy sees every request
 * in clear to decide its fate:
 *
 * - `fail`: answer at once with the rule's status (429 carries `Retry-After: 1`), never forwarded;
 * - `hang`: never answer; the connection stays open until the client gives up;
 * - otherwise forwarded, watch streams included.
 *
 *   const proxy = await startFaultProxy({ rules: [{ match: isLease, fail: { share: 0.3, status: 503 } }] });
 *   // run devicelet with kubeconfig: proxy.kubeconfig
 *   proxy.stats();   // { forwarded, failed: { 503: n }, hung }
 *   await proxy.stop();
 *
 * Decisions come from a seeded generator, so a failing run can be repeated.
 */
import { readFileSync, writeFileSync } from "node:fs";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { mkdtempSync } from "node:fs";
import { readState } from "../../src/testing/controlplane/controlplane.ts";
import { seededRandom } from "./seeded-random.ts";
import { testenvDir } from "./testenv.ts";

export interface FaultRule {
  /** Which requests the rule applies to (method and path with query). */
  readonly match: (method: string, url: string) => boolean;
  /** Share (0..1) of matching requests answered at once with `status`. */
  readonly fail?: { readonly share: number; readonly status: 429 | 500 | 503 };
  /** Share (0..1) of matching requests never answered. */
  readonly hang?: number;
}

export interface FaultProxyStats {
  readonly forwarded: number;
  readonly failed: Readonly<Record<number, number>>;
  readonly hung: number;
}

export interface FaultProxy {
  /** A kubeconfig for devicelet that goes through the proxy. */
  readonly kubeconfig: string;
  readonly url: string;
  stats(): FaultProxyStats;
  /** Replaces the rules (e.g. to end the faults and watch recovery). */
  setRules(rules: readonly FaultRule[]): void;
  stop(): Promise<void>;
}

/** Requests for node Leases in kube-node-lease. */
export const isLeaseRequest = (_method: string, url: string) =>
  url.startsWith("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases");

export async function startFaultProxy(options: {
  readonly rules: readonly FaultRule[];
  readonly seed?: number;
}): Promise<FaultProxy> {
  const state = readState(testenvDir);
  if (!state) throw new Error(`no harness control plane recorded in ${testenvDir}`);
  const upstream = new URL(state.server);
  const pki = path.join(testenvDir, "pki");
  const agent = new https.Agent({
    keepAlive: true,
    ca: readFileSync(path.join(pki, "ca.crt")),
    cert: readFileSync(path.join(pki, "devicelet.crt")),
    key: readFileSync(path.join(pki, "devicelet.key")),
  });
  const random = seededRandom(options.seed ?? 7);
  let rules = options.rules;
  let forwarded = 0;
  let hung = 0;
  const failed: Record<number, number> = {};
  const open = new Set<ServerResponse>();

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const method = req.method ?? "GET";
    const url = req.url ?? "/";
    open.add(res);
    res.on("close", () => open.delete(res));
    for (const rule of rules) {
      if (!rule.match(method, url)) continue;
      const roll = random();
      if (rule.fail && roll < rule.fail.share) {
        const { status } = rule.fail;
        failed[status] = (failed[status] ?? 0) + 1;
        req.resume();
        const reason =
          status === 429 ? "TooManyRequests" : status === 503 ? "ServiceUnavailable" : "InternalError";
        res.writeHead(status, {
          "content-type": "application/json",
          ...(status === 429 ? { "retry-after": "1" } : {}),
        });
        res.end(
          JSON.stringify({ kind: "Status", apiVersion: "v1", status: "Failure", reason, code: status }),
        );
        return;
      }
      if (rule.hang !== undefined && roll < (rule.fail?.share ?? 0) + rule.hang) {
        hung++;
        req.resume();
        return; // never answered; closed when the client gives up or the proxy stops
      }
    }
    forwarded++;
    const headers = { ...req.headers, host: upstream.host };
    delete headers.authorization;
    const out = https.request(
      { host: upstream.hostname, port: upstream.port, method, path: url, headers, agent },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    out.on("error", () => res.destroy());
    res.on("close", () => out.destroy());
    req.pipe(out);
  };

  const server = http.createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-fault-proxy-"));
  const kubeconfig = path.join(dir, "kubeconfig");
  writeFileSync(
    kubeconfig,
    [
      "apiVersion: v1",
      "kind: Config",
      "clusters:",
      "- name: proxy",
      "  cluster:",
      `    server: ${url}`,
      // client-node refuses plain HTTP unless told to; there is no TLS to verify on this hop.
      "    insecure-skip-tls-verify: true",
      "users:",
      "- name: devicelet",
      "  user: {}",
      "contexts:",
      "- name: devicelet@proxy",
      "  context:",
      "    cluster: proxy",
      "    user: devicelet",
      "current-context: devicelet@proxy",
      "",
    ].join("\n"),
  );
  return {
    kubeconfig,
    url,
    stats: () => ({ forwarded, failed: { ...failed }, hung }),
    setRules: (next) => {
      rules = next;
    },
    stop: async () => {
      for (const res of open) res.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}
