/** Test helpers for the mock provider's own tests: workloads, a recorder of callbacks, exec streams. */
import pino from "pino";
import type {
  AppSpec,
  DeviceInfo,
  ExecIO,
  PodRef,
  TerminalSize,
  Workload,
  WorkloadStatus,
} from "../../src/provider/types.ts";
import type { Clock } from "../../src/base/clock.ts";
import type { MockProvider } from "./provider.ts";

export const silentLogger = pino({ level: "silent" });

export const app = (name: string, image: string): AppSpec => ({
  name,
  image,
  command: [],
  args: [],
  env: {},
  secretEnv: [],
  files: [],
  ports: [],
  resources: { requests: {}, limits: {} },
});

/** A workload for pod `name` (uid `uid-<name>`) on `deviceId`, hashed from its image list. */
export const workload = (
  name: string,
  deviceId: string,
  opts: { images?: readonly string[]; restartPolicy?: Workload["restartPolicy"]; uid?: string } = {},
): Workload => {
  const images = opts.images ?? ["example.com/app:1"];
  return {
    pod: { namespace: "default", name, uid: opts.uid ?? `uid-${name}`, labels: {}, annotations: {} },
    nodeName: deviceId,
    deviceId,
    restartPolicy: opts.restartPolicy ?? "Always",
    terminationGracePeriodSeconds: 30,
    apps: images.map((image, i) => app(`app${i}`, image)),
    hash: `${name}|${opts.restartPolicy ?? "Always"}|${images.join(",")}`,
  };
};

/** The PodRef of a workload (without its labels and annotations). */
export const refOf = (w: Workload): PodRef => ({
  namespace: w.pod.namespace,
  name: w.pod.name,
  uid: w.pod.uid,
});

/** Subscribes to every callback of `provider` and keeps what arrived. */
export const record = (provider: MockProvider) => {
  const statuses: WorkloadStatus[] = [];
  const deleted: PodRef[] = [];
  const devices: DeviceInfo[] = [];
  const gone: string[] = [];
  provider.notifyStatus((s) => statuses.push(s));
  provider.notifyDeleted((p) => deleted.push(p));
  provider.watchDevices({ changed: (d) => devices.push(d), gone: (id) => gone.push(id) });
  return {
    statuses,
    deleted,
    devices,
    gone,
    /** Latest status pushed for pod `name`. */
    last: (name: string) => statuses.filter((s) => s.pod.name === name).at(-1),
  };
};

/** A clock that moves only when told to; runs due timers in time order. */
export class ManualClock implements Clock {
  #now: number;
  #timers = new Map<number, { at: number; fn: () => void }>();
  #next = 0;
  constructor(now = 0) {
    this.#now = now;
  }
  now(): number {
    return this.#now;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    this.#timers.set(++this.#next, { at: this.#now + ms, fn });
    return this.#next;
  }
  clearTimeout(handle: unknown): void {
    this.#timers.delete(handle as number);
  }
  advance(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      const due = [...this.#timers].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.#timers.delete(due[0]);
      this.#now = due[1].at;
      due[1].fn();
    }
    this.#now = end;
  }
}

/** An async iterable fed by hand: what a client's stdin or a forwarded connection looks like. */
export class Pipe<T> implements AsyncIterable<T> {
  #queue: T[] = [];
  #ended = false;
  #wake: (() => void) | undefined;
  push(value: T): void {
    this.#queue.push(value);
    this.#wake?.();
  }
  end(): void {
    this.#ended = true;
    this.#wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    for (;;) {
      for (let v = this.#queue.shift(); v !== undefined; v = this.#queue.shift()) yield v;
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }
}

/** An ExecIO for tests, with the client's output kept as text. */
export const execIO = (
  options: { stdin?: Pipe<Uint8Array>; tty?: boolean; resize?: Pipe<TerminalSize> } = {},
) => {
  const abort = new AbortController();
  const decoder = new TextDecoder();
  let stdout = "";
  let stderr = "";
  const io: ExecIO = {
    tty: options.tty ?? false,
    signal: abort.signal,
    stdout: (chunk) => (stdout += decoder.decode(chunk)),
    ...(options.tty ? {} : { stderr: (chunk: Uint8Array) => (stderr += decoder.decode(chunk)) }),
    ...(options.stdin ? { stdin: options.stdin } : {}),
    ...(options.resize ? { resize: options.resize } : {}),
  };
  return { io, abort, stdout: () => stdout, stderr: () => stderr };
};

/** Text as the bytes a client sends. */
export const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

/** Everything an async iterable yields, in order. */
export const collect = async <T>(source: AsyncIterable<T>): Promise<T[]> => {
  const out: T[] = [];
  for await (const v of source) out.push(v);
  return out;
};
