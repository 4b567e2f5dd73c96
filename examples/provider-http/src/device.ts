/**
 * A simulated device: what real firmware would do, in a few lines. It polls the provider, makes
 * what it runs match the answer, and reports each app `running` once `startDelayMs` has passed
 * since it was (re)started. Taken offline, it stops polling and keeps running what it has, as a
 * device that lost its network does.
 *
 *   const device = new SimulatedDevice({ id: "http-0", url: "http://127.0.0.1:8480" });
 *   await device.setOnline(true);    // polls from now on
 *   ...
 *   await device.setOnline(false);   // resolves once its poll loop has ended
 *
 * It needs nothing of devicelet: it speaks only protocol.ts, over fetch.
 */
import { setTimeout as sleep } from "node:timers/promises";
import {
  syncPath,
  type DeviceDescription,
  type ReportedPod,
  type SyncRequest,
  type SyncResponse,
} from "./protocol.ts";

export interface SimulatedDeviceOptions {
  readonly id: string;
  /** The provider's base URL, e.g. `http://127.0.0.1:8480`. */
  readonly url: string;
  readonly description?: DeviceDescription;
  /** How long an app takes to come up. Default 200 ms. */
  readonly startDelayMs?: number;
  /** Wait after a failed poll (provider down, refused). Default 500 ms. */
  readonly retryMs?: number;
}

interface RunningPod {
  readonly hash: string;
  readonly apps: readonly string[];
  /** When the apps are up (epoch ms). */
  readonly upAt: number;
}

const defaultDescription: DeviceDescription = {
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  capacity: { cpu: "2", memory: "1Gi", pods: "10" },
};

export class SimulatedDevice {
  readonly id: string;
  readonly #url: URL;
  readonly #description: DeviceDescription;
  readonly #startDelayMs: number;
  readonly #retryMs: number;
  readonly #pods = new Map<string, RunningPod>();
  #session?: { readonly abort: AbortController; readonly done: Promise<void> };

  constructor(options: SimulatedDeviceOptions) {
    this.id = options.id;
    this.#url = new URL(syncPath(options.id), options.url);
    this.#description = options.description ?? defaultDescription;
    this.#startDelayMs = options.startDelayMs ?? 200;
    this.#retryMs = options.retryMs ?? 500;
  }

  /** Uids of the pods it runs now. */
  runningPods(): string[] {
    return [...this.#pods.keys()];
  }

  /** Starts or stops polling; going offline resolves once the poll loop has ended. */
  async setOnline(online: boolean): Promise<void> {
    if (online) {
      if (this.#session) return;
      const abort = new AbortController();
      this.#session = { abort, done: this.#pollLoop(abort.signal) };
      return;
    }
    const session = this.#session;
    this.#session = undefined;
    session?.abort.abort();
    await session?.done;
  }

  async #pollLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      let waitMs = this.#retryMs;
      try {
        waitMs = (await this.#sync(signal)).pollSeconds * 1000;
      } catch {
        // Provider away or refusing: try again later, keep running what we have.
      }
      await sleep(waitMs, undefined, { signal }).catch(() => undefined);
    }
  }

  async #sync(signal: AbortSignal): Promise<SyncResponse> {
    const request: SyncRequest = { device: this.#description, pods: this.#report() };
    const response = await fetch(this.#url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(request),
      signal: AbortSignal.any([signal, AbortSignal.timeout(5_000)]),
    });
    if (!response.ok) throw new Error(`sync refused: HTTP ${response.status}`);
    const desired = (await response.json()) as SyncResponse;
    this.#apply(desired);
    return desired;
  }

  /** Runs exactly `desired.run`. Stops happen at once: a grace period is an upper bound. */
  #apply(desired: SyncResponse): void {
    const wanted = new Set(desired.run.map((p) => p.uid));
    for (const uid of this.#pods.keys()) if (!wanted.has(uid)) this.#pods.delete(uid);
    for (const pod of desired.run) {
      if (this.#pods.get(pod.uid)?.hash === pod.hash) continue;
      this.#pods.set(pod.uid, {
        hash: pod.hash,
        apps: pod.apps.map((a) => a.name),
        upAt: Date.now() + this.#startDelayMs,
      });
    }
  }

  #report(): ReportedPod[] {
    const now = Date.now();
    return [...this.#pods].map(([uid, pod]) => ({
      uid,
      hash: pod.hash,
      apps: pod.apps.map((name) =>
        now >= pod.upAt
          ? { name, state: "running", startedAt: new Date(pod.upAt).toISOString() }
          : { name, state: "starting" },
      ),
    }));
  }
}
