/**
 * Contract scenarios for the optional capabilities the kubelet API calls (types.ts: logs, exec,
 * stats): a finished log ends, a followed one ends when the client goes, exec reports exit codes,
 * stats come with times and sane numbers, unknown pods and devices are NotFound, and nothing
 * waits on a device that is away. Each runs only when the provider has the capability (the `has*`
 * guards); a provider without it passes without being checked. Exec needs commands only the
 * target can name: without `target.capabilities.exec` only the unknown-pod refusal is checked.
 *
 * Every call is bounded: an answer must come within the target's patience (a device round trip),
 * or within {@link AWAY_BOUND_MS} (or the patience, if shorter) while the device is away, since
 * then the provider must answer from what it holds.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { ProviderErrorCode, isNotFound, isUnsupported } from "../provider/errors.ts";
import {
  hasExec,
  hasLogs,
  hasStats,
  type ExecIO,
  type LogOptions,
  type LogStream,
  type PodRef,
  type ResourceSample,
} from "../provider/types.ts";
import { check, ContractViolation, key } from "./checks.ts";
import { runScenario, type Rig } from "./harness.ts";
import type { ProviderTarget } from "./target.ts";
import { refOf } from "./workload.ts";

type Target = ProviderTarget;

/** How long a call may take while its device is away: it must not wait for the device. */
export const AWAY_BOUND_MS = 5_000;

/** `promise`'s outcome, or a ContractViolation naming `what` once `ms` passed without one. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new ContractViolation(`${what}: no answer within ${ms} ms (a call must never hang)`));
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The error `promise` rejects with within `ms`; a violation if it resolves or hangs. */
async function rejection(ms: number, what: string, promise: Promise<unknown>): Promise<unknown> {
  const outcome = await within(
    ms,
    what,
    promise.then(
      () => ({ resolved: true as const }),
      (err: unknown) => ({ resolved: false as const, err }),
    ),
  );
  if (outcome.resolved) throw new ContractViolation(`${what}: resolved, but it must reject`);
  return outcome.err;
}

const describeError = (err: unknown): string => {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: unknown }).code;
  return `${err.name}${typeof code === "string" ? ` ${code}` : ""}: ${err.message}`;
};

const isProviderError = (err: unknown): boolean =>
  typeof err === "object" &&
  err !== null &&
  (Object.values(ProviderErrorCode) as unknown[]).includes((err as { code?: unknown }).code);

/** Every chunk of a log stream, which must end within `ms`. */
async function drain(ms: number, what: string, stream: LogStream): Promise<string[]> {
  const chunks: string[] = [];
  await within(
    ms,
    what,
    (async () => {
      for await (const chunk of stream.chunks) chunks.push(chunk);
    })(),
  );
  return chunks;
}

/** Log options with a signal that never aborts (the scenario drains the log to its end). */
const logOptions = (options: Omit<LogOptions, "signal"> = {}): LogOptions => ({
  signal: new AbortController().signal,
  ...options,
});

/** A running pod of the scenario, and the name of its first app. */
async function runningPod(rig: Rig, name: string): Promise<{ ref: PodRef; app: string }> {
  const w = rig.workload(name);
  await rig.create(w);
  await rig.waitRunning(w);
  const app = w.apps[0]?.name;
  if (app === undefined) throw new Error("kit workload without apps");
  return { ref: refOf(w), app };
}

/** The kubelet's `--timestamps` prefix: RFC 3339 with nine fraction digits, then a space. */
const TIMESTAMPED = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}(Z|[+-]\d{2}:\d{2}) /;

/**
 * Logs of a running container: the stream ends, in whole lines; `tailLines`, `timestamps` and
 * `limitBytes` are honoured; an unknown pod or container is NotFound.
 */
export const logs = (target: Target) =>
  runScenario(target, "logs", async (rig) => {
    const provider = rig.provider;
    if (!hasLogs(provider)) return;
    const bound = rig.patienceMs;
    const { ref, app } = await runningPod(rig, "logs");
    const what = `logs of ${key(ref)} container ${app}`;
    if (rig.target.capabilities?.logs === false) {
      const refused = await rejection(bound, what, provider.getContainerLogs(ref, app, logOptions()));
      check(
        isUnsupported(refused),
        `${what}: the target's devices serve no logs, but it was rejected with ${describeError(refused)}, not Unsupported`,
      );
      const unknown = await rejection(
        bound,
        "logs of an unknown pod",
        provider.getContainerLogs(rig.unknownRef("no-such-pod"), app, logOptions()),
      );
      check(
        isNotFound(unknown),
        `logs of an unknown pod: rejected with ${describeError(unknown)}, not NotFound`,
      );
      return;
    }
    const all = await drain(
      bound,
      what,
      await within(bound, what, provider.getContainerLogs(ref, app, logOptions())),
    );
    for (const chunk of all)
      check(
        chunk.endsWith("\n"),
        `${what}: a chunk is not whole lines ending in a newline: ${JSON.stringify(chunk)}`,
      );

    const tailed = await within(
      bound,
      `${what} (tailLines 1, timestamps)`,
      provider.getContainerLogs(ref, app, logOptions({ tailLines: 1, timestamps: true })),
    );
    const lines = (await drain(bound, `${what} (tailLines 1)`, tailed)).join("").split("\n").slice(0, -1);
    check(lines.length <= 1, `${what}: tailLines 1 gave ${lines.length} lines`);
    for (const line of lines)
      check(
        TIMESTAMPED.test(line),
        `${what}: with timestamps, a line does not start with one: ${JSON.stringify(line)}`,
      );

    const limited = await within(
      bound,
      what,
      provider.getContainerLogs(ref, app, logOptions({ limitBytes: 1 })),
    );
    const cut = await drain(bound, `${what} (limitBytes 1)`, limited);
    check(cut.length <= 1, `${what}: limitBytes 1 went on sending after the limit (${cut.length} chunks)`);

    const unknownPod = await rejection(
      bound,
      "logs of an unknown pod",
      provider.getContainerLogs(rig.unknownRef("no-such-pod"), app, logOptions()),
    );
    check(
      isNotFound(unknownPod),
      `logs of an unknown pod: rejected with ${describeError(unknownPod)}, not NotFound`,
    );
    const unknownContainer = await rejection(
      bound,
      "logs of an unknown container",
      provider.getContainerLogs(ref, "no-such-container", logOptions()),
    );
    check(
      isNotFound(unknownContainer),
      `logs of an unknown container: rejected with ${describeError(unknownContainer)}, not NotFound`,
    );
  });

/** A followed log ends soon after the client goes (its signal aborts), whether it was reading or not. */
export const logsFollow = (target: Target) =>
  runScenario(target, "logs follow", async (rig) => {
    const provider = rig.provider;
    if (!hasLogs(provider) || rig.target.capabilities?.logs === false) return;
    const bound = rig.patienceMs;
    const { ref, app } = await runningPod(rig, "follow");
    const what = `following the log of ${key(ref)} container ${app}`;
    for (const when of ["while it waits for lines", "before it is read"] as const) {
      const client = new AbortController();
      const stream = await within(
        bound,
        what,
        provider.getContainerLogs(ref, app, { follow: true, signal: client.signal }),
      );
      if (when === "before it is read") {
        client.abort();
        await drain(bound, `${what}, the client gone ${when}`, stream);
        continue;
      }
      const reading = drain(bound * 2, what, stream);
      // Time for the provider to send what the log holds and settle into waiting for more.
      await sleep(100);
      client.abort();
      await within(bound, `${what}, the client gone ${when}: the stream must end`, reading);
    }
  });

/** An ExecIO without stdin or terminal that keeps what the command writes. */
const execIO = (): { io: ExecIO; output: () => string } => {
  const decoder = new TextDecoder();
  let output = "";
  const keep = (chunk: Uint8Array) => {
    output += decoder.decode(chunk, { stream: true });
  };
  return {
    io: { tty: false, stdout: keep, stderr: keep, signal: new AbortController().signal },
    output: () => output,
  };
};

/**
 * Exec: the target's succeeding command exits 0 and its failing one with its exit code; exec in
 * an unknown pod is NotFound.
 */
export const exec = (target: Target) =>
  runScenario(target, "exec", async (rig) => {
    const provider = rig.provider;
    if (!hasExec(provider)) return;
    const bound = rig.patienceMs;
    const unknown = await rejection(
      bound,
      "exec in an unknown pod",
      provider.execInContainer(rig.unknownRef("no-such-pod"), "app", ["true"], execIO().io),
    );
    check(
      isNotFound(unknown),
      `exec in an unknown pod: rejected with ${describeError(unknown)}, not NotFound`,
    );
    const commands = rig.target.capabilities?.exec;
    if (!commands) return;
    const { ref, app } = await runningPod(rig, "exec");
    const run = async (command: readonly string[]) => {
      const client = execIO();
      const what = `exec ${JSON.stringify(command)} in ${key(ref)} container ${app}`;
      const { exitCode } = await within(bound, what, provider.execInContainer(ref, app, command, client.io));
      return { exitCode, what, output: client.output() };
    };
    const ok = await run(commands.ok);
    check(ok.exitCode === 0, `${ok.what}: exit code ${ok.exitCode}, not 0; output: ${ok.output}`);
    const failing = await run(commands.failing.command);
    check(
      failing.exitCode === commands.failing.exitCode,
      `${failing.what}: exit code ${failing.exitCode}, not ${commands.failing.exitCode}; output: ${failing.output}`,
    );
  });

/** What is wrong with one sample (times, non-negative finite numbers), or undefined. */
function sampleProblem(what: string, s: ResourceSample & { readonly startTime?: Date }): string | undefined {
  const validDate = (d: unknown) => d instanceof Date && Number.isFinite(d.getTime());
  if (!validDate(s.time)) return `${what}: time is not a valid Date`;
  if (s.startTime !== undefined && !validDate(s.startTime)) return `${what}: startTime is not a valid Date`;
  const numbers = { ...s.cpu, ...s.memory } as Record<string, unknown>;
  for (const [name, value] of Object.entries(numbers)) {
    if (value === undefined) continue;
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0)
      return `${what}: ${name} is ${JSON.stringify(value)}, not a non-negative number`;
  }
  return undefined;
}

/**
 * Stats of a device running a pod: times and non-negative numbers for the node, pods and
 * containers; the node's CPU counter does not go back between two calls; an unknown device is
 * NotFound.
 */
export const stats = (target: Target) =>
  runScenario(target, "stats", async (rig) => {
    const provider = rig.provider;
    if (!hasStats(provider)) return;
    const bound = rig.patienceMs;
    const device = rig.devices[0];
    await runningPod(rig, "stats");
    const read = () => within(bound, `getStats(${device})`, provider.getStats(device));
    const first = await read();
    const problems: (string | undefined)[] = [];
    if (first.node) problems.push(sampleProblem(`${device} node`, first.node));
    for (const pod of first.pods) {
      if (pod.total) problems.push(sampleProblem(`${key(pod.pod)} total`, pod.total));
      for (const c of pod.containers) problems.push(sampleProblem(`${key(pod.pod)} container ${c.name}`, c));
    }
    const found = problems.filter((p) => p !== undefined);
    check(found.length === 0, () => `getStats(${device}): ${found.join("; ")}`);
    const second = await read();
    const counter = (s: typeof first) => s.node?.cpu?.usageCoreNanoSeconds;
    const [before, after] = [counter(first), counter(second)];
    if (before !== undefined && after !== undefined)
      check(
        after >= before,
        `getStats(${device}): the node's CPU counter went back from ${before} to ${after}`,
      );
    const unknown = await rejection(
      bound,
      "getStats of an unknown device",
      provider.getStats("no-such-device-kit"),
    );
    check(
      isNotFound(unknown),
      `getStats of an unknown device: rejected with ${describeError(unknown)}, not NotFound`,
    );
  });

/**
 * With the device away, logs, exec and stats answer within {@link AWAY_BOUND_MS} (or the
 * patience, if shorter): stats from
 * what the device last reported, logs from a cache or a classified refusal, exec a classified
 * refusal (or its result). A rejection must be a ProviderError, so the kubelet API can say why.
 */
export const capabilitiesAway = (target: Target) =>
  runScenario(target, "capabilities while the device is away", async (rig) => {
    const provider = rig.provider;
    if (!hasLogs(provider) && !hasExec(provider) && !hasStats(provider)) return;
    const { ref, app } = await runningPod(rig, "away");
    const device = rig.devices[0];
    const bound = Math.min(AWAY_BOUND_MS, rig.patienceMs);
    await rig.setOnline(device, false);
    const settled = async (what: string, call: () => Promise<unknown>) => {
      const outcome = await within(
        bound,
        `${what} while ${device} is away`,
        call().then(
          () => undefined,
          (err: unknown) => err,
        ),
      );
      if (outcome !== undefined)
        check(
          isProviderError(outcome),
          `${what} while ${device} is away: rejected with ${describeError(outcome)}, not a ProviderError`,
        );
    };
    if (hasLogs(provider)) {
      await settled(`logs of ${key(ref)}`, async () => {
        const stream = await provider.getContainerLogs(ref, app, logOptions());
        await drain(bound, `logs of ${key(ref)} while ${device} is away`, stream);
      });
    }
    const commands = rig.target.capabilities?.exec;
    if (hasExec(provider) && commands)
      await settled(`exec in ${key(ref)}`, () =>
        provider.execInContainer(ref, app, commands.ok, execIO().io),
      );
    if (hasStats(provider)) {
      await within(bound, `getStats(${device}) while it is away`, provider.getStats(device)).catch(
        (err: unknown) => {
          if (err instanceof ContractViolation) throw err;
          throw new ContractViolation(
            `getStats(${device}) while it is away rejected with ${describeError(err)}: answer from what it last reported`,
          );
        },
      );
    }
    await rig.setOnline(device, true);
  });
