/**
 * Small process and network helpers for the harness: free loopback ports, daemons started
 * detached with their output in a log file, and stopping exactly the processes we started
 * (checked by their command line, so a recycled pid is never signalled).
 */
import { spawn } from "node:child_process";
import { openSync, readFileSync } from "node:fs";
import https from "node:https";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === "object") resolve(address.port);
        else reject(new Error("no port"));
      });
    });
  });
}

export interface Daemon {
  readonly name: string;
  readonly pid: number;
  readonly binary: string;
}

/** Starts `binary args` in its own process group, detached from us, output appended to `logFile`. */
export function startDaemon(name: string, binary: string, args: readonly string[], logFile: string): Daemon {
  const out = openSync(logFile, "a");
  const child = spawn(binary, args, { detached: true, stdio: ["ignore", out, out] });
  if (child.pid === undefined) throw new Error(`${name}: failed to start ${binary}`);
  child.unref();
  return { name, pid: child.pid, binary };
}

/** True when `pid` is alive and still runs `binary` (its argv[0] names it). */
export function isOurs(daemon: Daemon): boolean {
  try {
    const argv0 = readFileSync(`/proc/${daemon.pid}/cmdline`, "utf8").split("\0")[0] ?? "";
    return argv0 === daemon.binary;
  } catch {
    return false;
  }
}

/**
 * `signal` (SIGTERM by default), then SIGKILL after `graceMs`; resolves once the process is gone.
 * Only for our daemons. SIGKILL first is a crash: no shutdown handler runs.
 */
export async function stopDaemon(
  daemon: Daemon,
  graceMs = 10_000,
  signal: "SIGTERM" | "SIGKILL" = "SIGTERM",
): Promise<void> {
  if (!isOurs(daemon)) return;
  process.kill(daemon.pid, signal);
  const deadline = Date.now() + graceMs;
  while (isOurs(daemon) && !isZombie(daemon.pid)) {
    if (Date.now() > deadline) {
      process.kill(daemon.pid, "SIGKILL");
      break;
    }
    await sleep(100);
  }
  while (isOurs(daemon) && !isZombie(daemon.pid)) await sleep(50);
}

function isZombie(pid: number): boolean {
  try {
    return /\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return true;
  }
}

export interface TlsFiles {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

/** GET over HTTPS; resolves with status and body, never throws for a refused connection (status 0). */
export async function httpsGet(url: string, tls: TlsFiles): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = https.get(
      url,
      {
        ca: tls.ca ? readFileSync(tls.ca) : undefined,
        cert: tls.cert ? readFileSync(tls.cert) : undefined,
        key: tls.key ? readFileSync(tls.key) : undefined,
        // The controller-manager and scheduler serve self-signed certificates; health checks on
        // loopback only, so those are read without verification when no CA is given.
        rejectUnauthorized: tls.ca !== undefined,
        timeout: 5_000,
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", () => resolve({ status: 0, body: "" }));
  });
}

/** Polls `check` every 250 ms until it returns true, or fails with `what` after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs: number,
  logFile?: string,
) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(250);
  }
  const tail = logFile
    ? `\n--- last lines of ${logFile} ---\n${readFileSync(logFile, "utf8").split("\n").slice(-30).join("\n")}`
    : "";
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${tail}`);
}
