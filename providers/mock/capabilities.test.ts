/**
 * The mock's logs, exec, attach, port-forward and stats capabilities, on an injected clock: what
 * the kubelet API's tests rely on (docs/configuration.md, the mock's `exec`, `stats` and
 * `appLogIntervalMs` keys).
 */
import { describe, expect, it } from "vitest";
import { FakeClock } from "../../src/base/fake-clock.ts";
import { isInvalidInput, isNotFound, isTransient, isUnsupported } from "../../src/provider/errors.ts";
import type { LogOptions, PodRef, Workload } from "../../src/provider/types.ts";
import { createMockProvider, type MockConfigInput } from "./index.ts";
import { bytes, collect, execIO, Pipe, refOf, silentLogger, workload } from "./testing.ts";

const T0 = Date.UTC(2026, 0, 1);

/** A started provider on a FakeClock at T0, with pod `p` running on mock-0 (started at T0+200 ms). */
const running = async (config: MockConfigInput = {}, w: Workload = workload("p", "mock-0")) => {
  const clock = new FakeClock(T0);
  const provider = createMockProvider(config, { logger: silentLogger, clock });
  await provider.start(new AbortController().signal);
  await provider.createPod(w);
  await clock.advanceAsync(200);
  return { provider, clock, ref: refOf(w), w };
};

const logs = (
  provider: Awaited<ReturnType<typeof running>>["provider"],
  ref: PodRef,
  options: Partial<LogOptions> = {},
  container = "app0",
) => provider.getContainerLogs(ref, container, { signal: new AbortController().signal, ...options });

describe("mock logs", () => {
  it("honours since, limitBytes and tailLines, with nanosecond timestamps", async () => {
    const { provider, clock, ref } = await running({ appLogIntervalMs: 1000 });
    await clock.advanceAsync(3000); // heartbeats at T0+1.2 s, 2.2 s, 3.2 s
    const all = await collect((await logs(provider, ref)).chunks);
    expect(all).toEqual([
      "[mock] pulling example.com/app:1\n",
      "[mock] started example.com/app:1\n",
      "[mock] example.com/app:1 heartbeat 1\n",
      "[mock] example.com/app:1 heartbeat 2\n",
      "[mock] example.com/app:1 heartbeat 3\n",
    ]);
    const since = await collect(
      (await logs(provider, ref, { since: new Date(T0 + 2200), timestamps: true })).chunks,
    );
    expect(since).toEqual([
      "2026-01-01T00:00:02.200000000Z [mock] example.com/app:1 heartbeat 2\n",
      "2026-01-01T00:00:03.200000000Z [mock] example.com/app:1 heartbeat 3\n",
    ]);
    // Whole lines until the limit is reached; the kubelet API cuts the last one.
    const limited = await collect((await logs(provider, ref, { limitBytes: 40 })).chunks);
    expect(limited).toEqual(["[mock] pulling example.com/app:1\n", "[mock] started example.com/app:1\n"]);
    expect(await collect((await logs(provider, ref, { tailLines: 0 })).chunks)).toEqual([]);
    await provider.stop();
  });

  it("follows new lines until the client goes", async () => {
    const { provider, clock, ref } = await running({ appLogIntervalMs: 1000 });
    const abort = new AbortController();
    const stream = await logs(provider, ref, { follow: true, tailLines: 0, signal: abort.signal });
    const seen: string[] = [];
    const done = (async () => {
      for await (const chunk of stream.chunks) seen.push(chunk);
    })();
    await clock.advanceAsync(2000);
    expect(seen).toEqual([
      "[mock] example.com/app:1 heartbeat 1\n",
      "[mock] example.com/app:1 heartbeat 2\n",
    ]);
    abort.abort();
    await done; // ends: it would hang here otherwise
    await clock.advanceAsync(2000);
    expect(seen).toHaveLength(2);
    await provider.stop();
  });

  it("keeps the previous instance of a restarted app; follow ends with the instance", async () => {
    const { provider, clock, ref } = await running(
      {
        failImages: ["*/crash:*"],
        failAfterMs: 500,
        crashBackoffMs: 1000,
      },
      workload("c", "mock-0", { images: ["example.com/crash:1"] }),
    );
    await expect(logs(provider, ref, { previous: true })).rejects.toSatisfy(isUnsupported);
    const follow = await logs(provider, ref, { follow: true });
    const followed = collect(follow.chunks);
    await clock.advanceAsync(500); // crashes
    expect(await followed).toEqual([
      "[mock] pulling example.com/crash:1\n",
      "[mock] started example.com/crash:1\n",
      "[mock] example.com/crash:1 exited with code 1 (failImages)\n",
    ]);
    await clock.advanceAsync(1000); // restarted
    expect(await collect((await logs(provider, ref)).chunks)).toEqual([
      "[mock] started example.com/crash:1\n",
    ]);
    expect(await collect((await logs(provider, ref, { previous: true })).chunks)).toEqual(await followed);
    await provider.stop();
  });

  it("serves what was cached while the device is offline, saying so", async () => {
    const { provider, clock, ref } = await running({ appLogIntervalMs: 1000 });
    await clock.advanceAsync(1000); // heartbeat 1 at T0+1.2 s
    provider.setConnected("mock-0", false);
    await clock.advanceAsync(2000); // the app goes on, but devicelet hears nothing
    const stream = await logs(provider, ref, { follow: true });
    expect(stream.notice).toBe("device mock-0 is offline; log as cached at 2026-01-01T00:00:01.200Z");
    expect(await collect(stream.chunks)).toHaveLength(3); // no hang: a cached log is not followed
    await provider.stop();
  });

  it("refuses unknown pods and containers, and apps that have not run yet", async () => {
    const { provider, ref } = await running({ devices: { count: 2 } });
    await expect(logs(provider, { ...ref, uid: "nope" })).rejects.toSatisfy(isNotFound);
    await expect(logs(provider, ref, {}, "nope")).rejects.toSatisfy(isNotFound);
    provider.setConnected("mock-1", false);
    const queued = workload("q", "mock-1");
    await provider.createPod(queued);
    await expect(logs(provider, refOf(queued))).rejects.toSatisfy(isTransient);
    await provider.stop();
  });
});

describe("mock exec", () => {
  const withEnv: Workload = (() => {
    const w = workload("x", "mock-0");
    const [first] = w.apps;
    if (!first) throw new Error("no app");
    return {
      ...w,
      apps: [
        {
          ...first,
          env: { GREETING: "hello", MODE: "test" },
          files: [{ path: "/etc/app/conf", content: "a=1\n", encoding: "utf8", secret: false }],
        },
      ],
    };
  })();

  it("runs the simulated commands with their output and exit codes", async () => {
    const { provider, ref } = await running({}, withEnv);
    const run = async (command: string[], stdin?: string) => {
      const pipe = stdin === undefined ? undefined : new Pipe<Uint8Array>();
      const client = execIO(pipe ? { stdin: pipe } : {});
      if (pipe && stdin !== undefined) {
        pipe.push(bytes(stdin));
        pipe.end();
      }
      const { exitCode } = await provider.execInContainer(ref, "app0", command, client.io);
      return { exitCode, out: client.stdout(), err: client.stderr() };
    };
    expect(await run(["echo", "hi", "there"])).toEqual({ exitCode: 0, out: "hi there\n", err: "" });
    expect(await run(["/bin/echo", "-n", "x"])).toEqual({ exitCode: 0, out: "x", err: "" });
    expect(await run(["env"])).toEqual({ exitCode: 0, out: "GREETING=hello\nMODE=test\n", err: "" });
    expect(await run(["hostname"])).toMatchObject({ out: "x\n" });
    expect(await run(["true"])).toMatchObject({ exitCode: 0 });
    expect(await run(["false"])).toMatchObject({ exitCode: 1 });
    expect(await run(["sh", "-c", "exit 3"])).toMatchObject({ exitCode: 3 });
    expect(await run(["sh", "-c", "echo 'a  b' c"])).toMatchObject({ exitCode: 0, out: "a  b c\n" });
    expect(await run(["sh", "-c", 'echo a; false && echo b || echo "c;d"; exit 4; echo e'])).toMatchObject({
      exitCode: 4,
      out: "a\nc;d\n",
    });
    expect(await run(["printf", "%s=%d%%\\n", "n", "42"])).toMatchObject({ out: "n=42%\n" });
    expect(await run(["cat"], "line 1\nline 2\n")).toMatchObject({ exitCode: 0, out: "line 1\nline 2\n" });
    expect(await run(["cat", "/etc/app/conf"])).toMatchObject({ exitCode: 0, out: "a=1\n" });
    expect(await run(["cat", "/nope"])).toMatchObject({
      exitCode: 1,
      err: "cat: /nope: No such file or directory\n",
    });
    expect(await run(["sh"], "echo one\nfalse\n")).toMatchObject({ exitCode: 1, out: "one\n" });
    expect(await run(["frobnicate", "-x"])).toEqual({
      exitCode: 127,
      out: "",
      err: "frobnicate: command not found\n",
    });
    await provider.stop();
  });

  it("sleeps on the provider's clock and stops when the client goes", async () => {
    const { provider, clock, ref } = await running();
    const client = execIO();
    let exitCode: number | undefined;
    void provider
      .execInContainer(ref, "app0", ["sleep", "5"], client.io)
      .then((r) => (exitCode = r.exitCode));
    await clock.advanceAsync(4999);
    expect(exitCode).toBeUndefined();
    await clock.advanceAsync(1);
    expect(exitCode).toBe(0);

    const gone = execIO();
    const cut = provider.execInContainer(ref, "app0", ["sleep", "3600"], gone.io);
    gone.abort.abort();
    await expect(cut).resolves.toEqual({ exitCode: 130 });
    const stdin = new Pipe<Uint8Array>();
    const reading = execIO({ stdin });
    const cat = provider.execInContainer(ref, "app0", ["cat"], reading.io);
    reading.abort.abort(); // stdin never ends: only the abort ends it
    await expect(cat).resolves.toEqual({ exitCode: 130 });
    await provider.stop();
  });

  it("refuses a terminal, devices without exec, offline devices and apps not running", async () => {
    const { provider, clock, ref } = await running({
      devices: [{ id: "mock-0" }, { id: "mcu-0", deviceClass: "mcu" }],
    });
    await expect(provider.execInContainer(ref, "app0", ["true"], execIO({ tty: true }).io)).rejects.toSatisfy(
      (err) => isUnsupported(err) && /no terminal/.test((err as Error).message),
    );
    const mcu = workload("m", "mcu-0");
    await provider.createPod(mcu);
    await clock.advanceAsync(200);
    await expect(provider.execInContainer(refOf(mcu), "app0", ["true"], execIO().io)).rejects.toSatisfy(
      (err) => isUnsupported(err) && /mcu/.test((err as Error).message),
    );
    await expect(provider.attachToContainer(refOf(mcu), "app0", execIO().io)).rejects.toSatisfy(
      isUnsupported,
    );
    await expect(
      provider.execInContainer({ ...ref, uid: "nope" }, "app0", ["true"], execIO().io),
    ).rejects.toSatisfy(isNotFound);
    await provider.deletePod(ref, { gracePeriodSeconds: 30 });
    await expect(provider.execInContainer(ref, "app0", ["true"], execIO().io)).resolves.toEqual({
      exitCode: 0,
    });
    await clock.advanceAsync(100); // stopped
    await expect(provider.execInContainer(ref, "app0", ["true"], execIO().io)).rejects.toSatisfy(
      (err) => isNotFound(err) || isInvalidInput(err),
    );
    const other = workload("o", "mock-0");
    await provider.createPod(other);
    await expect(provider.execInContainer(refOf(other), "app0", ["true"], execIO().io)).rejects.toSatisfy(
      isInvalidInput, // ContainerCreating
    );
    await clock.advanceAsync(200);
    provider.setConnected("mock-0", false);
    await expect(provider.execInContainer(refOf(other), "app0", ["true"], execIO().io)).rejects.toSatisfy(
      isTransient,
    );
    await provider.stop();
  });

  it("with exec.tty, gives a shell that echoes, prompts and knows the terminal's size", async () => {
    const { provider, ref } = await running({ exec: { tty: true } });
    const stdin = new Pipe<Uint8Array>();
    const resize = new Pipe<{ width: number; height: number }>();
    const client = execIO({ stdin, resize, tty: true });
    const shell = provider.execInContainer(ref, "app0", ["sh"], client.io);
    resize.push({ width: 120, height: 40 });
    await new Promise((resolve) => setImmediate(resolve));
    stdin.push(bytes("stty size\r"));
    stdin.push(bytes("exit 4\r"));
    await expect(shell).resolves.toEqual({ exitCode: 4 });
    expect(client.stdout()).toBe("$ stty size\r\n40 120\r\n$ exit 4\r\n");
    await provider.stop();
  });
});

describe("mock attach and port-forward", () => {
  it("attach streams the app's new output and echoes stdin until the client goes", async () => {
    const { provider, clock, ref } = await running({ appLogIntervalMs: 1000 });
    const stdin = new Pipe<Uint8Array>();
    const client = execIO({ stdin });
    const attached = provider.attachToContainer(ref, "app0", client.io);
    await clock.advanceAsync(1000);
    stdin.push(bytes("ping\n"));
    await clock.advanceAsync(1);
    expect(client.stdout()).toBe("[mock] example.com/app:1 heartbeat 1\nping\n");
    client.abort.abort();
    await expect(attached).resolves.toEqual({});
    await provider.stop();
  });

  it("attach ends with the app's exit code when it exits", async () => {
    const { provider, clock, ref } = await running(
      { failImages: ["*/crash:*"], failAfterMs: 500 },
      workload("c", "mock-0", { images: ["example.com/crash:1"], restartPolicy: "Never" }),
    );
    const client = execIO();
    const attached = provider.attachToContainer(ref, "app0", client.io);
    await clock.advanceAsync(500);
    await expect(attached).resolves.toEqual({ exitCode: 1 });
    expect(client.stdout()).toBe("[mock] example.com/crash:1 exited with code 1 (failImages)\n");
    await provider.stop();
  });

  it("port-forward echoes on any port until the client closes", async () => {
    const { provider, ref } = await running();
    const data = new Pipe<Uint8Array>();
    const back: string[] = [];
    const forwarded = provider.portForward(ref, 8080, {
      data,
      write: (chunk) => back.push(new TextDecoder().decode(chunk)),
      signal: new AbortController().signal,
    });
    data.push(bytes("GET / HTTP/1.0\r\n"));
    data.push(bytes("\r\n"));
    data.end();
    await forwarded;
    expect(back.join("")).toBe("GET / HTTP/1.0\r\n\r\n");
    const noSuch = { data, write: () => undefined, signal: new AbortController().signal };
    await expect(provider.portForward({ ...ref, uid: "nope" }, 80, noSuch)).rejects.toSatisfy(isNotFound);
    await provider.stop();
  });
});

describe("mock stats", () => {
  it("reports node, pod and container usage measured on the provider's clock", async () => {
    const base = workload("s", "mock-0", { images: ["a", "b"] });
    const [a, b] = base.apps;
    if (!a || !b) throw new Error("no apps");
    const w: Workload = {
      ...base,
      apps: [{ ...a, resources: { requests: { cpu: "250m", memory: "64Mi" }, limits: {} } }, b],
    };
    const { provider, clock } = await running({ stats: { cpuMillicores: 10, memoryBytes: 1000 } }, w);
    await clock.advanceAsync(2000);
    const stats = await provider.getStats("mock-0");
    const nodeBytes = 134_217_728 + 64 * 1024 * 1024 + 1000; // the device's own, app0's request, app1's default
    expect(stats.node).toMatchObject({
      time: new Date(T0 + 2200),
      startTime: new Date(T0),
      memory: { workingSetBytes: nodeBytes, availableBytes: 4 * 1024 ** 3 - nodeBytes },
    });
    expect(stats.pods.map((p) => p.containers.map((c) => c.name))).toEqual([["app0", "app1"]]);
    const [app0, app1] = stats.pods[0]?.containers ?? [];
    expect(app0).toMatchObject({
      time: new Date(T0 + 2200),
      startTime: new Date(T0 + 200),
      cpu: { usageCoreNanoSeconds: 500_000_000, usageNanoCores: 250_000_000 }, // 0.25 core for 2 s
      memory: { workingSetBytes: 64 * 1024 * 1024 },
    });
    expect(app1).toMatchObject({ cpu: { usageCoreNanoSeconds: 20_000_000, usageNanoCores: 10_000_000 } });
    await provider.stop();
  });

  it("never lets a counter go back, measures an offline device when it went, leaves out no-stats pods", async () => {
    const busy = workload("p", "mock-0");
    const [app0] = busy.apps;
    if (!app0) throw new Error("no app");
    const { provider, clock, ref } = await running(
      { devices: { count: 2 } },
      { ...busy, apps: [{ ...app0, resources: { requests: { cpu: "2" }, limits: {} } }] },
    );
    const quiet = workload("quiet", "mock-0");
    await provider.createPod({
      ...quiet,
      pod: { ...quiet.pod, annotations: { "devicelet.dev/no-stats": "true" } },
    });
    await clock.advanceAsync(1000);
    const before = await provider.getStats("mock-0");
    expect(before.pods.map((p) => p.pod.name)).toEqual(["p"]);
    await provider.deletePod(ref, { gracePeriodSeconds: 0 });
    await clock.advanceAsync(1000);
    const after = await provider.getStats("mock-0");
    expect(after.pods).toEqual([]);
    const cpu = (s: typeof before) => s.node?.cpu?.usageCoreNanoSeconds ?? -1;
    expect(cpu(after)).toBeGreaterThan(cpu(before));

    provider.setConnected("mock-0", false);
    const wentAt = clock.now();
    await clock.advanceAsync(5000);
    const offline = await provider.getStats("mock-0");
    expect(offline.node?.time).toEqual(new Date(wentAt));
    expect(cpu(offline)).toBeGreaterThanOrEqual(cpu(after));
    expect(await provider.getStats("mock-1")).toMatchObject({ pods: [] });
    await expect(provider.getStats("nope")).rejects.toSatisfy(isNotFound);
    await provider.stop();
  });
});
