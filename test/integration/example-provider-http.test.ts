/**
 * The example third-party provider (examples/provider-http) with a real control plane: the engine
 * layer of the conformance kit, and `devicelet run` loading it by package name from a
 * configuration file, with its simulated devices (src/simulate.ts) polling it from another
 * process. The contract layer runs in test/unit/example-provider-http.test.ts.
 *
 * The example imports `devicelet/provider` as any provider package does, so Node needs
 * examples/provider-http/node_modules/devicelet: the link npm makes for its devDependency
 * `"devicelet": "file:../.."`. A fresh checkout has none; `beforeAll` makes it as npm would.
 */
import { spawn, type ChildProcess } from "node:child_process";
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { describeEngineConformance } from "devicelet/provider/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { httpTarget } from "../../examples/provider-http/test/target.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { deviceletKubeconfig, testenvDir, uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const repoRoot = path.resolve(import.meta.dirname, "../..");
const exampleDir = path.join(repoRoot, "examples/provider-http");

describeEngineConformance(httpTarget({ name: "http example", devices: ["http-e-0", "http-e-1"] }), {
  controlPlaneDir: testenvDir,
});

describe("devicelet run with provider.type: devicelet-provider-http-example", () => {
  const id = uniqueName("httpex");
  const children: ChildProcess[] = [];
  let dir = "";
  let logFile = "";
  let port = 0;
  let stopping = false;
  /** Rejects when devicelet or the devices exit before afterAll stops them. */
  let exitedEarly: Promise<never> = new Promise(() => undefined);

  beforeAll(async () => {
    linkAsNpmWould(path.join(exampleDir, "node_modules/devicelet"), repoRoot);
    // A deployment folder: its configuration, and the package installed next to it.
    dir = mkdtempSync(path.join(os.tmpdir(), `devicelet-${id}-`));
    linkAsNpmWould(path.join(dir, "node_modules/devicelet-provider-http-example"), exampleDir);
    port = await freePort();
    // The shipped configuration, with this test's cluster, port, device ids and node label.
    const config = parse(readFileSync(path.join(exampleDir, "devicelet.yaml"), "utf8")) as {
      provider: { type: string; config: Record<string, unknown> };
    };
    expect(config.provider.type).toBe("devicelet-provider-http-example");
    writeFileSync(
      path.join(dir, "devicelet.yaml"),
      stringify({
        ...config,
        kubeconfig: deviceletKubeconfig(),
        nodes: { extraLabels: { "devicelet.dev/test": id } },
        log: { level: "debug" },
        health: { port: 0, bindAddress: "127.0.0.1" },
        metrics: { port: 0, bindAddress: "127.0.0.1" },
        state: { namespace: id },
        provider: {
          ...config.provider,
          config: {
            ...config.provider.config,
            listen: { host: "127.0.0.1", port },
            pollSeconds: 0.5,
            offlineAfterSeconds: 3,
            devices: { allow: [`${id}-*`] },
          },
        },
      }),
    );
    await kubectl(["create", "namespace", id]);
    logFile = path.join(dir, "devicelet.log");
    const out = openSync(logFile, "a");
    children.push(
      spawn(
        process.execPath,
        [
          "--conditions=devicelet-source",
          path.join(repoRoot, "bin/devicelet.js"),
          "run",
          "--config",
          path.join(dir, "devicelet.yaml"),
        ],
        { stdio: ["ignore", out, out] },
      ),
      spawn(
        process.execPath,
        [
          path.join(exampleDir, "src/simulate.ts"),
          ...["--url", `http://127.0.0.1:${port}`, "--count", "2", "--prefix", `${id}-`],
        ],
        { stdio: ["ignore", out, out] },
      ),
    );
    exitedEarly = Promise.race(
      children.map(
        (child) =>
          new Promise<never>((_, reject) =>
            child.once("exit", (code) => {
              if (stopping) return;
              const log = readFileSync(logFile, "utf8").slice(-2000);
              reject(new Error(`${child.spawnargs.slice(1).join(" ")} exited (${code}); it logged:\n${log}`));
            }),
          ),
      ),
    );
    exitedEarly.catch(() => undefined); // seen by the test that races it
  });

  afterAll(async () => {
    stopping = true;
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        await exited;
      }
    }
    await kubectl(["delete", "nodes", "-l", `devicelet.dev/test=${id}`, "--wait=false"]);
    await kubectl(["delete", "namespace", id, "--wait=false"]);
  });

  it("registers a node per polling device and runs a pod on one", async () => {
    const nodes = await Promise.race([
      exitedEarly,
      eventually(
        async () => {
          const list = await getJson<{ items: { metadata: { name: string } }[] }>([
            "nodes",
            "-l",
            `devicelet.dev/test=${id}`,
          ]);
          const names = list.items.map((n) => n.metadata.name).sort();
          expect(names).toEqual([`${id}-0`, `${id}-1`]);
          return names;
        },
        { timeoutMs: 90_000 },
      ),
    ]);
    // The provider devicelet runs is the package's: its name is in the "running" log line.
    // The line comes once the engine has started, which may be after the nodes are registered.
    await eventually(() => {
      const running = readFileSync(logFile, "utf8")
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as { msg?: string; provider?: string })
        .find((l) => l.msg === "devicelet is running");
      expect(running?.provider).toBe("http-example");
    });

    await apply(
      pod({
        namespace: id,
        name: "hello",
        testId: id,
        node: nodes[0],
        spec: "  containers:\n    - { name: app, image: example/hello:1 }",
      }),
    );
    const hello = await eventually(
      async () => {
        const p = await getJson<PodJson>(["pod", "hello", "-n", id]);
        expect(isReady(p), JSON.stringify(p.status)).toBe(true);
        return p;
      },
      { timeoutMs: 60_000 },
    );
    expect(hello.spec.nodeName).toBe(`${id}-0`);
    expect(hello.status.containerStatuses?.[0]?.state.running).toBeDefined();

    // Deleting it goes through the device too: the pod is gone once the device stopped it.
    await kubectl(["delete", "pod", "hello", "-n", id, "--wait=false"]);
    await eventually(
      async () => {
        const left = await getJson<{ items: unknown[] }>(["pods", "-n", id]);
        expect(left.items).toHaveLength(0);
      },
      { timeoutMs: 60_000 },
    );
  });
});

/**
 * Makes `link` point at `target` with a relative symlink, as npm links a `file:` dependency
 * (examples/provider-http/node_modules is git-ignored). Leaves an existing one alone.
 */
function linkAsNpmWould(link: string, target: string): void {
  if (lstatSync(link, { throwIfNoEntry: false })) return;
  mkdirSync(path.dirname(link), { recursive: true });
  symlinkSync(path.relative(path.dirname(link), target), link, "dir");
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
