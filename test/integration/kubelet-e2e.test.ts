/**
 * The kubelet API end to end, with the real tools through the real API server: `kubectl logs`,
 * `exec` (WebSocket and SPDY), `top` (metrics-server through the aggregation layer), the node proxy
 * and devicelet's own authentication, against devicelet running the mock provider. Everything runs
 * in the lab's network namespace (test/support/lab.ts), since the API server refuses to proxy to a
 * loopback node address.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { isDeepStrictEqual } from "node:util";
import { eventually } from "../support/eventually.ts";
import { startLab, type Lab, type LabDevicelet } from "../support/lab.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("kapi");
const ns = id;
let lab: Lab;
let devicelet: LabDevicelet;
let gateways: string[] = [];
let mcu = "";
let failed = false;

/** A pod on `node` whose app logs a line every 200 ms (the mock's appLogIntervalMs). */
const appPod = (name: string, node: string) =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node,
    spec: `  containers:
    - name: app
      image: example/sensor:1.0
      resources: { requests: { cpu: 50m, memory: 32Mi } }`,
  });

async function podJson(name: string): Promise<PodJson> {
  return JSON.parse(await lab.kubectlOk(["get", "pod", "-n", ns, name, "-o", "json"])) as PodJson;
}

const nodePort = async (node: string) => {
  const n = JSON.parse(await lab.kubectlOk(["get", "node", node, "-o", "json"])) as {
    status: { daemonEndpoints: { kubeletEndpoint: { Port: number } } };
  };
  return n.status.daemonEndpoints.kubeletEndpoint.Port;
};

beforeAll(async () => {
  lab = await startLab({ id: "kubelet-e2e" });
  try {
    devicelet = await lab.startDevicelet({
      id,
      provider: {
        devices: [
          { count: 2, idPrefix: `${id}-gw-` },
          { count: 1, idPrefix: `${id}-mcu-`, deviceClass: "mcu" },
        ],
        appLogIntervalMs: 200,
      },
      expectNodes: 3,
    });
    const names = (await lab.kubectlOk(["get", "nodes", "-l", devicelet.nodeSelector, "-o", "name"]))
      .split("\n")
      .filter(Boolean)
      .map((n) => n.replace("node/", ""))
      .sort();
    gateways = names.filter((n) => n.includes("-gw-"));
    mcu = names.find((n) => n.includes("-mcu-")) ?? "";
    expect(gateways).toHaveLength(2);
    await lab.kubectlOk(["create", "namespace", ns]);
    const [gw0, gw1] = gateways as [string, string];
    await lab.kubectlOk(["apply", "-f", "-"], {
      input: [appPod("app", gw0), appPod("other", gw1), appPod("tiny", mcu)].join("\n---\n"),
    });
    await eventually(
      async () => {
        for (const name of ["app", "other", "tiny"])
          if (!isReady(await podJson(name))) throw new Error(`${name} not ready`);
      },
      { timeoutMs: 60_000 },
    );
  } catch (err) {
    console.error(lab.describe());
    await lab.stop({ keepDir: true });
    throw err;
  }
}, 420_000);

beforeEach(({ onTestFailed }) => {
  onTestFailed(() => {
    failed = true;
  });
});

afterAll(async () => {
  // Unset when startLab failed: it has stopped what it started and reported its logs.
  if (!(lab as Lab | undefined)) return;
  if (failed) console.error(lab.describe());
  await lab.stop({ keepDir: failed });
}, 60_000);

describe("kubectl logs", () => {
  it("prints the app's log, all of it, the last lines, and with timestamps", async () => {
    const all = await eventually(async () => {
      const out = await lab.kubectlOk(["logs", "-n", ns, "app"]);
      const lines = out.split("\n").filter(Boolean);
      if (lines.length < 4) throw new Error(`only ${lines.length} lines so far`);
      return lines;
    });
    expect(all.length).toBeGreaterThanOrEqual(4);

    const tail = (await lab.kubectlOk(["logs", "-n", ns, "app", "--tail=2"])).split("\n").filter(Boolean);
    expect(tail).toHaveLength(2);

    const stamped = (await lab.kubectlOk(["logs", "-n", ns, "app", "--timestamps", "--tail=3"]))
      .split("\n")
      .filter(Boolean);
    expect(stamped).toHaveLength(3);
    for (const line of stamped) expect(line).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z /);
  });

  it("follows with -f until kubectl goes, and serves the next request", async () => {
    const follow = lab.spawnKubectl(["logs", "-n", ns, "app", "-f", "--tail=1"]);
    let received = "";
    follow.stdout?.setEncoding("utf8");
    follow.stdout?.on("data", (c: string) => (received += c));
    const exited = new Promise<void>((resolve) => follow.once("exit", () => resolve()));
    // A line every 200 ms: three more than the --tail=1 line prove it streams.
    await eventually(
      () => {
        if (received.split("\n").filter(Boolean).length < 4)
          throw new Error(`got ${JSON.stringify(received)}`);
      },
      { timeoutMs: 20_000 },
    );
    follow.kill("SIGKILL");
    await exited;
    // The follow ended on devicelet's side: the API server drops its connection to the kubelet
    // port once kubectl is gone, and devicelet closes its end too (no socket left half-closed in
    // CLOSE-WAIT), logs no error, and answers the same log again at once.
    const port = await nodePort(gateways[0] ?? "");
    await eventually(async () => {
      const r = await lab.run("ss", ["-Htn", "state", "close-wait", `( sport = :${port} )`]);
      if (r.stdout.trim() !== "") throw new Error(`half-closed kubelet connections:\n${r.stdout}`);
    });
    const next = await lab.kubectl(["logs", "-n", ns, "app", "--tail=1"], { timeoutMs: 10_000 });
    expect(next.code).toBe(0);
    expect(next.stdout.split("\n").filter(Boolean)).toHaveLength(1);
    const errors = devicelet.logLines().filter((l) => typeof l.level === "number" && l.level >= 50);
    expect(errors).toEqual([]);
    // The followed stream itself ended because its client went, not because the log ended.
    const ended = devicelet
      .logLines()
      .filter((l) => l.msg === "container log stream ended" && l.follow === true);
    expect(ended.map((l) => l.endedBy)).toContain("client gone");
  });
});

describe.each<{ protocol: string; env: Record<string, string> }>([
  { protocol: "WebSocket", env: {} },
  { protocol: "SPDY", env: { KUBECTL_REMOTE_COMMAND_WEBSOCKETS: "false" } },
])("kubectl exec over $protocol", ({ env }) => {
  it("runs a command and prints its output", async () => {
    const r = await lab.kubectl(["exec", "-n", ns, "app", "--", "echo", "hi"], { env });
    expect(r).toEqual({ code: 0, stdout: "hi\n", stderr: "", timedOut: false });
  });

  it("pipes stdin in", async () => {
    const r = await lab.kubectl(["exec", "-i", "-n", ns, "app", "--", "cat"], { env, input: "data" });
    expect(r).toEqual({ code: 0, stdout: "data", stderr: "", timedOut: false });
  });

  it("exits with the command's exit code", async () => {
    expect(await lab.kubectl(["exec", "-n", ns, "app", "--", "false"], { env })).toMatchObject({
      code: 1,
      timedOut: false,
    });
    expect(await lab.kubectl(["exec", "-n", ns, "app", "--", "sh", "-c", "exit 3"], { env })).toMatchObject({
      code: 3,
      timedOut: false,
    });
  });

  it("refuses a device without exec, clearly and at once", async () => {
    const r = await lab.kubectl(["exec", "-n", ns, "tiny", "--", "echo", "hi"], { env, timeoutMs: 20_000 });
    expect(r.timedOut).toBe(false);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe("");
    // The device says why: the mock names the class that has no exec.
    expect(r.stderr).toMatch(/no exec/);
  });
});

describe.each<{ protocol: string; env: Record<string, string>; localPort: number }>([
  { protocol: "WebSocket", env: {}, localPort: 18080 },
  { protocol: "SPDY", env: { KUBECTL_PORT_FORWARD_WEBSOCKETS: "false" }, localPort: 18081 },
])("kubectl port-forward over $protocol", ({ env, localPort }) => {
  it("carries a connection to the pod both ways (the mock echoes)", async () => {
    const forward = lab.spawnKubectl(["port-forward", "-n", ns, "pod/app", `${localPort}:8080`], { env });
    let out = "";
    forward.stdout?.setEncoding("utf8");
    forward.stdout?.on("data", (c: string) => (out += c));
    const exited = new Promise<void>((resolve) => forward.once("exit", () => resolve()));
    try {
      await eventually(
        () => {
          if (!out.includes(`Forwarding from 127.0.0.1:${localPort}`))
            throw new Error(`not forwarding yet: ${out}`);
        },
        { timeoutMs: 20_000 },
      );
      // A client inside the namespace, where the forwarded port is.
      const client = `const s = require("node:net").connect(${localPort}, "127.0.0.1", () => s.write("ping\\n"));
let got = ""; s.setEncoding("utf8"); s.on("data", (c) => { got += c; if (got.includes("\\n")) { process.stdout.write(got); s.destroy(); } });
setTimeout(() => process.exit(2), 10000).unref();`;
      const r = await lab.run(process.execPath, ["-e", client], { timeoutMs: 15_000 });
      expect(r).toMatchObject({ code: 0, stdout: "ping\n" });
    } finally {
      forward.kill("SIGTERM");
      await exited;
    }
  });
});

describe("kubectl top", () => {
  // metrics-server scrapes every 10 s and needs two scrapes for a CPU rate.
  it("shows CPU and memory of a device node", async () => {
    const [gw0] = gateways as [string];
    const out = await eventually(() => lab.kubectlOk(["top", "node", gw0, "--no-headers"]), {
      timeoutMs: 90_000,
      intervalMs: 2_000,
    });
    expect(out).toMatch(new RegExp(`^${gw0}\\s+\\d+m\\s+\\d+%\\s+\\d+Mi\\s+\\d+%`));
  });

  it("shows CPU and memory of the pods of a namespace", async () => {
    const out = await eventually(
      async () => {
        const o = await lab.kubectlOk(["top", "pod", "-n", ns, "--no-headers"]);
        if (!/^app\s/m.test(o) || !/^other\s/m.test(o)) throw new Error(`not all pods yet: ${o}`);
        return o;
      },
      { timeoutMs: 90_000, intervalMs: 2_000 },
    );
    expect(out).toMatch(/^app\s+\d+m\s+\d+Mi/m);
    expect(out).toMatch(/^other\s+\d+m\s+\d+Mi/m);
  });
});

describe("the node proxy", () => {
  it("lists only the node's own pods on /pods", async () => {
    const [gw0, gw1] = gateways as [string, string];
    const list = JSON.parse(await lab.kubectlOk(["get", "--raw", `/api/v1/nodes/${gw0}/proxy/pods`])) as {
      kind: string;
      items: { metadata: { name: string }; spec: { nodeName: string } }[];
    };
    expect(list.kind).toBe("PodList");
    expect(list.items.map((p) => p.metadata.name)).toEqual(["app"]);
    const other = JSON.parse(await lab.kubectlOk(["get", "--raw", `/api/v1/nodes/${gw1}/proxy/pods`])) as {
      items: { metadata: { name: string }; spec: { nodeName: string } }[];
    };
    expect(other.items.map((p) => p.metadata.name)).toEqual(["other"]);
  });

  it("serves a pod's container statuses on /pods as the API server has them, container IDs and all", async () => {
    const [gw0] = gateways as [string];
    type Listed = { status: { containerStatuses?: { name: string; containerID?: string; state: object }[] } };
    const fromApi = (await podJson("app")) as PodJson & Listed;
    const [running] = fromApi.status.containerStatuses ?? [];
    expect(running?.containerID).toBe(`device://${ns}/app/app`);
    // The same pod through the node proxy, once devicelet's watch has what the API server has.
    const served = await eventually(async () => {
      const list = JSON.parse(await lab.kubectlOk(["get", "--raw", `/api/v1/nodes/${gw0}/proxy/pods`])) as {
        items: Listed[];
      };
      const statuses = list.items[0]?.status.containerStatuses;
      // kubectl prints keys sorted, the kubelet API in the API server's order: compare as values.
      if (!isDeepStrictEqual(statuses, fromApi.status.containerStatuses))
        throw new Error(`not the API server's yet: ${JSON.stringify(statuses)}`);
      return statuses;
    });
    expect(served?.map((c) => c.containerID)).toEqual([`device://${ns}/app/app`]);
  });

  it("drops a deleted pod from /runningpods/ by the time its API object is gone", async () => {
    const [, gw1] = gateways as [string, string];
    await lab.kubectlOk(["apply", "-f", "-"], { input: appPod("gone", gw1) });
    await eventually(async () => {
      if (!isReady(await podJson("gone"))) throw new Error("gone not ready");
    });
    const running = async () =>
      (
        JSON.parse(await lab.kubectlOk(["get", "--raw", `/api/v1/nodes/${gw1}/proxy/runningpods/`])) as {
          items: { metadata: { name: string } }[];
        }
      ).items.map((p) => p.metadata.name);
    expect(await running()).toContain("gone");
    // The API object goes only after the provider has deleted the pod, and the list is read live:
    // the first answer after the delete returns must leave it out (a time limit here would measure
    // the node proxy under CI load, not devicelet).
    await lab.kubectlOk(["delete", "pod", "-n", ns, "gone", "--wait=true", "--timeout=60s"]);
    expect(await running()).not.toContain("gone");
  });
});

describe("authentication on the kubelet port itself", () => {
  /** GET https://192.0.2.10:<port><path> from inside the namespace; resolves with the status code. */
  const curl = async (port: number, urlPath: string, auth: readonly string[]) => {
    const r = await lab.run(
      "curl",
      [
        "--silent",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code}",
        "--max-time",
        "10",
        "--cacert",
        lab.caCert,
        ...auth,
        `https://${lab.address}:${port}${urlPath}`,
      ],
      { timeoutMs: 15_000 },
    );
    return Number(r.stdout);
  };

  const token = async (serviceAccount: string) =>
    (await lab.kubectlOk(["create", "token", "-n", ns, serviceAccount])).trim();

  it("answers 401 without credentials, 403 without rights, 200 with them", async () => {
    const [gw0] = gateways as [string];
    const port = await nodePort(gw0);
    await lab.kubectlOk(["create", "serviceaccount", "-n", ns, "nobody"]);
    await lab.kubectlOk(["create", "serviceaccount", "-n", ns, "reader"]);
    await lab.kubectlOk([
      "create",
      "clusterrole",
      `${id}-node-reader`,
      "--verb=get",
      "--resource=nodes/proxy,nodes/stats,nodes/log,nodes/metrics",
    ]);
    await lab.kubectlOk([
      "create",
      "clusterrolebinding",
      `${id}-node-reader`,
      `--clusterrole=${id}-node-reader`,
      `--serviceaccount=${ns}:reader`,
    ]);
    const nobody = ["--header", `Authorization: Bearer ${await token("nobody")}`];
    const reader = ["--header", `Authorization: Bearer ${await token("reader")}`];
    const apiServer = ["--cert", lab.apiServerKubeletClient.cert, "--key", lab.apiServerKubeletClient.key];
    for (const urlPath of [
      "/pods",
      "/runningpods/",
      "/stats/summary",
      "/metrics/resource",
      `/containerLogs/${ns}/app/app`,
    ]) {
      expect({ urlPath, status: await curl(port, urlPath, []) }).toEqual({ urlPath, status: 401 });
      expect({ urlPath, status: await curl(port, urlPath, nobody) }).toEqual({ urlPath, status: 403 });
      expect({ urlPath, status: await curl(port, urlPath, reader) }).toEqual({ urlPath, status: 200 });
      expect({ urlPath, status: await curl(port, urlPath, apiServer) }).toEqual({ urlPath, status: 200 });
    }
  });
});
