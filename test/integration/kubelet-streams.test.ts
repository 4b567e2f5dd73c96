/**
 * The streaming protocols against the real kubectl (client-go's spdystream and its WebSocket v5
 * client), with no API server in between: a stand-in answers kubectl's discovery and pod read and
 * hands the exec and port-forward upgrades to serveExecStream and servePortForward, as a kubelet
 * would receive them from the API server (which proxies SPDY unchanged). The full path through
 * the API server is the kubelet API end-to-end test's concern.
 */

import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import type { Duplex } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ExecIO } from "../../src/provider/types.ts";
import {
  portForwardPorts,
  servePortForward,
  serveExecStream,
  streamOptions,
} from "../../src/kubelet/streams/index.ts";
import { kubectlPath } from "../support/kubectl.ts";

const logger = pino({ level: "silent" });
const pod = {
  apiVersion: "v1",
  kind: "Pod",
  metadata: { name: "app", namespace: "default", uid: "7c1e" },
  spec: { containers: [{ name: "main", image: "app" }] },
  status: { phase: "Running" },
};
const discovery: Record<string, unknown> = {
  "/api": { kind: "APIVersions", versions: ["v1"], serverAddressByClientCIDRs: [] },
  "/apis": { kind: "APIGroupList", apiVersion: "v1", groups: [] },
  "/api/v1": {
    kind: "APIResourceList",
    groupVersion: "v1",
    resources: [{ name: "pods", singularName: "pod", namespaced: true, kind: "Pod", verbs: ["get"] }],
  },
};

/** A device's commands, as a provider would run them. */
async function device(command: readonly string[], io: ExecIO): Promise<{ exitCode: number }> {
  switch (command[0]) {
    case "cat":
      for await (const chunk of io.stdin ?? []) io.stdout?.(chunk);
      return { exitCode: 0 };
    case "echo":
      io.stdout?.(Buffer.from(`${command.slice(1).join(" ")}\n`));
      io.stderr?.(Buffer.from("to stderr\n"));
      return { exitCode: 0 };
    case "exit":
      return { exitCode: Number(command[1]) };
    case "size":
      for await (const size of io.resize ?? []) {
        io.stdout?.(Buffer.from(`${size.width}x${size.height}\r\n`));
        break;
      }
      return { exitCode: 0 };
    default:
      throw new Error(`device gw-1 cannot run ${command.join(" ")}`);
  }
}

let server: http.Server;
let dir: string;
let kubeconfig: string;

beforeAll(async () => {
  server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://api");
    const body = url.pathname === "/api/v1/namespaces/default/pods/app" ? pod : discovery[url.pathname];
    if (body === undefined) res.writeHead(404).end();
    else res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(body));
  });
  server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(req.url ?? "/", "http://api");
    if (url.pathname.endsWith("/portforward")) {
      servePortForward(
        req,
        socket,
        head,
        portForwardPorts(url.searchParams),
        async (port, connection) => {
          for await (const chunk of connection.data)
            connection.write(Buffer.from(`${port}:${Buffer.from(chunk).toString()}`));
        },
        logger,
      );
      return;
    }
    const options = streamOptions(url.searchParams);
    serveExecStream(req, socket, head, options, (io) => device(options.command, io), logger);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  dir = mkdtempSync(path.join(os.tmpdir(), "kubelet-streams-"));
  kubeconfig = path.join(dir, "kubeconfig");
  const { port } = server.address() as AddressInfo;
  writeFileSync(
    kubeconfig,
    JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "c", cluster: { server: `http://127.0.0.1:${port}` } }],
      users: [{ name: "u", user: { token: "t" } }],
      contexts: [{ name: "c", context: { cluster: "c", user: "u", namespace: "default" } }],
      "current-context": "c",
    }),
  );
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

interface Result {
  readonly code: number | null;
  readonly stdout: Buffer;
  readonly stderr: string;
}

function run(
  args: readonly string[],
  o: { env?: Record<string, string>; input?: Buffer } = {},
): Promise<Result> {
  return new Promise((resolve) => {
    const child = execFile(
      kubectlPath(),
      [`--kubeconfig=${kubeconfig}`, ...args],
      { env: { ...process.env, ...o.env }, encoding: "buffer", maxBuffer: 64 << 20, timeout: 60_000 },
      (_err, stdout, stderr) => resolve({ code: child.exitCode, stdout, stderr: stderr.toString() }),
    );
    child.stdin?.end(o.input);
  });
}

describe.each([
  ["SPDY/3.1", "false"],
  ["WebSocket v5", "true"],
])("kubectl exec over %s", (_name, websockets) => {
  const env = { KUBECTL_REMOTE_COMMAND_WEBSOCKETS: websockets };

  it("runs a command and prints its stdout and stderr", async () => {
    const r = await run(["exec", "app", "--", "echo", "hello", "device"], { env });
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe("hello device\n");
    expect(r.stderr).toContain("to stderr");
  });

  it("pipes stdin through, several MiB of it", async () => {
    const input = Buffer.alloc(3 << 20);
    for (let i = 0; i < input.length; i++) input[i] = (i * 7919) % 251;
    const r = await run(["exec", "-i", "app", "--", "cat"], { env, input });
    expect(r.code).toBe(0);
    expect(r.stdout.equals(input)).toBe(true);
  });

  it("exits with the command's exit code", async () => {
    const r = await run(["exec", "app", "--", "exit", "1"], { env });
    expect(r.code).toBe(1);
    expect((await run(["exec", "app", "--", "exit", "42"], { env })).code).toBe(42);
  });

  it("shows the device's refusal as kubectl's error", async () => {
    const r = await run(["exec", "app", "--", "reboot"], { env });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("device gw-1 cannot run reboot");
  });

  it("gives a terminal its size", async () => {
    // kubectl allocates a terminal only on a terminal: run it under script(1).
    const r = await new Promise<string>((resolve) => {
      const child = spawn(
        "script",
        [
          "-qec",
          `stty cols 101 rows 31; ${kubectlPath()} --kubeconfig=${kubeconfig} exec -it app -- size`,
          "/dev/null",
        ],
        { env: { ...process.env, ...env } },
      );
      let out = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.on("close", () => resolve(out));
    });
    expect(r).toContain("101x31");
  });
});

describe("kubectl port-forward over SPDY/3.1", () => {
  it("carries a local connection to the pod's port", async () => {
    const local = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, "127.0.0.1", () => {
        const { port } = probe.address() as AddressInfo;
        probe.close(() => resolve(port));
      });
    });
    const child = spawn(
      kubectlPath(),
      [`--kubeconfig=${kubeconfig}`, "port-forward", "app", `${local}:8080`],
      {
        env: { ...process.env, KUBECTL_PORT_FORWARD_WEBSOCKETS: "false" },
      },
    );
    try {
      await new Promise<void>((resolve) =>
        child.stdout.on("data", (d: Buffer) => d.toString().includes("Forwarding") && resolve()),
      );
      const reply = await new Promise<string>((resolve, reject) => {
        const socket = net.connect(local, "127.0.0.1", () => socket.write("hello"));
        socket.on("data", (d: Buffer) => {
          resolve(d.toString());
          socket.end();
        });
        socket.on("error", reject);
      });
      expect(reply).toBe("8080:hello");
    } finally {
      child.kill();
    }
  });
});
