/**
 * The pod's security context end to end: a real control plane, the real `devicelet run` with
 * provider mqtt, a real Mosquitto and the reference agent (`devicelet agent`) as its own process,
 * running as root here. Every field is applied or the pod is refused naming the field, and the
 * refusal is what `kubectl get pod` shows. What is applied is read back from the app itself: its
 * /proc/self/status, fetched with the protocol's `logs` and `exec` commands (§ 3.5).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, mkdtempSync, openSync, readFileSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import mqtt from "mqtt";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { command } from "../../src/device/fixtures.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { AckMessage } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson } from "../support/kubectl.ts";
import { expectNodeCount } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("agsec");
const ns = id;
const device = `${id}-gw`;
const scene = mqttScene({ id, devices: [] });
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-agent-sec-"));
const workDir = path.join(dir, "pods");
const agentCli = path.resolve(import.meta.dirname, "../../src/cli/agent.ts");
let agent: ChildProcess | undefined;

beforeAll(async () => {
  await scene.start();
  // mkdtemp makes 0700: apps switched to another uid must reach their folders below it.
  chmodSync(dir, 0o755);
  const configFile = path.join(dir, "agent.yaml");
  writeFileSync(
    configFile,
    stringify({
      broker: { url: scene.broker.url },
      device: { id: device, capacity: { pods: "10" } },
      workDir: "pods",
      stateFile: "state/agent-state.json",
      restartBackoff: { initialMs: 200, maxMs: 1000 },
      willDelaySeconds: 0,
      log: { level: "debug" },
    }),
  );
  const launcher = `const { agentCommand } = await import(${JSON.stringify(pathToFileURL(agentCli).href)});
process.exitCode = await agentCommand(process.argv.slice(1));`;
  const log = openSync(path.join(dir, "agent.log"), "a");
  agent = spawn(process.execPath, ["--input-type=module", "-e", launcher, "--", "--config", configFile], {
    stdio: ["ignore", log, log],
  });
  await expectNodeCount(scene.nodeSelector, 1);
});

afterAll(async () => {
  const child = agent;
  if (child && child.exitCode === null) {
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    await exited;
  }
  await scene.stop();
});

const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);

/** Sends the agent a `logs` or `exec` command for the pod's app, as devicelet does, and returns its output. */
async function commandOutput(podUid: string, name: "logs" | "exec", args?: readonly string[]) {
  const client = await mqtt.connectAsync(scene.broker.url, { clientId: `${id}-probe-${name}` });
  try {
    const commandId = `${name}-${Date.now().toString(36)}`;
    const done = new Promise<AckMessage & { kind: "command-ack" }>((resolve) => {
      client.on("message", (_topic, payload) => {
        const ack = JSON.parse(payload.toString()) as AckMessage;
        if (ack.kind === "command-ack" && ack.commandId === commandId && ack.stage !== "received")
          resolve(ack);
      });
    });
    await client.subscribeAsync(topics.ack(device), { qos: 1 });
    const message = command({
      deviceId: device,
      commandId,
      command: name,
      podUid,
      app: "app",
      ...(args ? { args } : {}),
    });
    await client.publishAsync(topics.command(device, commandId), encodeMessage(message), { qos: 1 });
    const ack = await done;
    expect(ack).toMatchObject({ stage: "done" });
    return ack.output ?? "";
  } finally {
    await client.endAsync();
  }
}

/** The credential lines of a /proc/<pid>/status text, by field. */
function credentials(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^(Uid|Gid|Groups|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):\s*(.*?)\s*$/.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined) out[m[1]] = m[2];
  }
  return out;
}
const withContext = (name: string, container: string, podLevel = "") =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node: device,
    spec: `${podLevel ? `  securityContext: ${podLevel}\n` : ""}  containers:
    - name: app
      image: example/app:1
      command: ["/bin/sh", "-c", 'id -u > "$DEVICELET_APP_DIR/ids"; id -g >> "$DEVICELET_APP_DIR/ids"; exec sleep 3600']
      securityContext: ${container}`,
  });

describe("reference agent: securityContext", () => {
  it("as root, runs the app as runAsUser/runAsGroup and gives it its folder", async () => {
    await apply(withContext("runas", "{ runAsUser: 65534, runAsNonRoot: true }", "{ runAsGroup: 65534 }"));
    const running = await eventually(
      async () => {
        const p = await getPod("runas");
        expect(p.status.phase).toBe("Running");
        return p;
      },
      { timeoutMs: 60_000 },
    );
    const appDir = path.join(workDir, running.metadata.uid, "app");
    await eventually(() => expect(readFileSync(path.join(appDir, "ids"), "utf8")).toBe("65534\n65534\n"));
    expect(statSync(appDir)).toMatchObject({ uid: 65534, gid: 65534 });
    expect(statSync(appDir).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(dir, "state", "agent-state.json")).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(dir, "state")).mode & 0o777).toBe(0o700);
  });

  it("runs a pod of the restricted profile (minus seccomp): the app and an exec into it see it applied", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "restricted",
        testId: id,
        node: device,
        spec: `  securityContext: { runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534 }
  containers:
    - name: app
      image: example/app:1
      command: ["/bin/sh", "-c", "cat /proc/self/status; exec sleep 3600"]
      securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: [ALL] } }`,
      }),
    );
    const running = await eventually(
      async () => {
        const p = await getPod("restricted");
        expect(p.status.phase).toBe("Running");
        return p;
      },
      { timeoutMs: 60_000 },
    );
    const none = "0000000000000000";
    const restricted = {
      Uid: "65534\t65534\t65534\t65534",
      Gid: "65534\t65534\t65534\t65534",
      Groups: "",
      NoNewPrivs: "1",
      CapInh: none,
      CapPrm: none,
      CapEff: none,
      CapBnd: none,
      CapAmb: none,
    };
    const seen = await eventually(async () => {
      const c = credentials(await commandOutput(running.metadata.uid, "logs"));
      expect(c.CapAmb).toBeDefined();
      return c;
    });
    expect(seen).toEqual(restricted);
    const exec = credentials(
      await commandOutput(running.metadata.uid, "exec", ["/bin/cat", "/proc/self/status"]),
    );
    expect(exec).toEqual(restricted);
  });

  it("refuses a pod with a field it cannot honour, and the pod's status names the field", async () => {
    // The full restricted profile: the agent has no seccomp filter to install.
    await apply(
      withContext(
        "seccomp",
        "{ runAsUser: 65534, allowPrivilegeEscalation: false, capabilities: { drop: [ALL] } }",
        "{ runAsNonRoot: true, seccompProfile: { type: RuntimeDefault } }",
      ),
    );
    const refused = await eventually(
      async () => {
        const p = await getPod("seccomp");
        expect(p.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("CreateContainerConfigError");
        return p;
      },
      { timeoutMs: 60_000 },
    );
    expect(refused.status.phase).toBe("Pending");
    expect(refused.status.containerStatuses?.[0]?.state.waiting?.message).toMatch(
      /securityContext\.seccompProfile=\{"type":"RuntimeDefault"\} cannot be applied: the agent installs no seccomp filter/,
    );
    // It never ran: no folder with output.
    expect(() => readFileSync(path.join(workDir, refused.metadata.uid, "app", "ids"))).toThrow();
  });

  it("a field no device can honour is refused by devicelet before it reaches the device", async () => {
    await apply(withContext("selinux", "{ runAsUser: 65534 }", '{ seLinuxOptions: { level: "s0:c1" } }'));
    const failed = await eventually(async () => {
      const p = await getPod("selinux");
      expect(p.status.phase).toBe("Failed");
      return p;
    });
    expect(failed.status.message).toContain(
      "spec.securityContext.seLinuxOptions is not supported by provider mqtt",
    );
  });
});
