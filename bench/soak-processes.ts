/**
 * Processes the soak starts itself: `devicelet run` as a child process it can SIGKILL and start
 * again with the same configuration, and kubectl calls that give up instead of hanging while the
 * API server is down. Only the child processes started here are ever signalled.
 *
 *   const devicelet = new DeviceletChild({ configFile, logFile });
 *   devicelet.start(); await devicelet.stop("SIGKILL"); devicelet.start();
 *   const kubectl = kubectlFor({ binDir, kubeconfig }); await kubectl(["get", "nodes"]);
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { openSync, closeSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Kubectl } from "./soak-load.ts";
import { deviceletBin } from "./support.ts";

export class DeviceletChild {
  readonly configFile: string;
  readonly logFile: string;
  /** Times started. */
  starts = 0;
  #child: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();

  constructor(o: { configFile: string; logFile: string }) {
    this.configFile = o.configFile;
    this.logFile = o.logFile;
  }

  get running(): boolean {
    return this.#child !== undefined && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** Starts `devicelet run --config <configFile>`, output appended to the log; no-op if running. */
  start(): void {
    if (this.running) return;
    const out = openSync(this.logFile, "a");
    const child = spawn(process.execPath, [deviceletBin(), "run", "--config", this.configFile], {
      stdio: ["ignore", out, out],
    });
    closeSync(out);
    this.starts++;
    this.#child = child;
    this.#exited = new Promise((resolve) => child.once("exit", () => resolve()));
  }

  /** Signals the child (SIGKILL after 15 s when SIGTERM does not end it) and waits for its exit. */
  async stop(signal: "SIGTERM" | "SIGKILL"): Promise<void> {
    const child = this.#child;
    if (!child || !this.running) return;
    child.kill(signal);
    const ended = await Promise.race([this.#exited.then(() => true), sleep(15_000).then(() => false)]);
    if (!ended) {
      child.kill("SIGKILL");
      await this.#exited;
    }
  }
}

/** kubectl as cluster-admin; rejects (never hangs) when the API server does not answer in time. */
export function kubectlFor(o: { binDir: string; kubeconfig: string; timeoutMs?: number }): Kubectl {
  const binary = path.join(o.binDir, "kubectl");
  const timeoutMs = o.timeoutMs ?? 30_000;
  return (args, input) =>
    new Promise((resolve, reject) => {
      const child = execFile(
        binary,
        [`--kubeconfig=${o.kubeconfig}`, "--request-timeout=10s", ...args],
        { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, encoding: "utf8" },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`kubectl ${args.join(" ")}: ${stderr.trim() || err.message}`));
          else resolve(stdout);
        },
      );
      child.stdin?.end(input ?? "");
    });
}
