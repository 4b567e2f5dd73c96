/**
 * Small process and network helpers for the harness: free loopback ports, daemons started
 * detached with their output in a log file, and stopping exactly the processes we started
 * (checked by their command line, so a recycled pid is never signalled).
 */
import { execFile, spawn } from "node:child_process";
import { openSync, readFileSync } from "node:fs";
import https from "node:https";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

/**
 * A loopback port that is free now, for a server started a moment later. It is taken below the
 * kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port from that range, as listening
 * on port 0 gives, can be taken meanwhile as the source port of any outgoing connection on the
 * machine, or of a client connecting to it before its server is up (a TCP self-connect). Both made
 * a test's broker fail with EADDRINUSE. A port is never handed out twice by one process.
 */
export async function freePort(): Promise<number> {
  const below = ephemeralLow();
  for (let attempt = 0; attempt < 100 && below > MIN_PORT + 1_000; attempt++) {
    const port = MIN_PORT + Math.floor(Math.random() * (below - MIN_PORT));
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    if (await canListen(port)) return port;
  }
  return anyPort();
}

/** The lowest port below which {@link freePort} never goes (well-known and registered services). */
const MIN_PORT = 10_000;
const handedOut = new Set<number>();

/** The first port of the kernel's ephemeral range; 32768 (Linux's default) when it cannot be read. */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 0 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** A free port as the kernel picks one (from its ephemeral range). */
function anyPort(): Promise<number> {
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

/**
 * Starts `binary args` in its own process group, detached from us, output appended to `logFile`;
 * inside network namespace `netns` when given. `ip netns exec` enters the namespace and then execs
 * the binary in the same process, so the recorded pid is the daemon's own.
 */
export function startDaemon(
  name: string,
  binary: string,
  args: readonly string[],
  logFile: string,
  netns?: string,
): Daemon {
  const out = openSync(logFile, "a");
  const [command, argv] = netns ? ["ip", ["netns", "exec", netns, binary, ...args]] : [binary, args];
  const child = spawn(command, argv, { detached: true, stdio: ["ignore", out, out] });
  if (child.pid === undefined) throw new Error(`${name}: failed to start ${binary}`);
  child.unref();
  return { name, pid: child.pid, binary };
}

/**
 * True when `pid` is alive and still runs `binary` (its argv[0] names it). Right after a start
 * in a network namespace the process may still be `ip` itself, about to become the daemon.
 */
export function isOurs(daemon: Daemon): boolean {
  try {
    const argv = readFileSync(`/proc/${daemon.pid}/cmdline`, "utf8").split("\0");
    // `ip netns exec <ns> <binary> …` not yet replaced by the binary is ours too.
    return (
      argv[0] === daemon.binary || (argv[0] === "ip" && argv[1] === "netns" && argv[4] === daemon.binary)
    );
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

/** A GET over HTTPS (or HTTP) from where the control plane's processes run. */
export type Probe = (url: string, tls: TlsFiles) => Promise<{ status: number; body: string }>;

/**
 * {@link httpsGet} from inside network namespace `netns`, where this process cannot connect: curl
 * run there with `ip netns exec`. Status 0 when it could not connect.
 */
export function netnsProbe(netns: string): Probe {
  return (url, tls) =>
    new Promise((resolve) => {
      const args = [
        "netns",
        "exec",
        netns,
        "curl",
        "--silent",
        "--max-time",
        "5",
        "--write-out",
        "\n%{http_code}",
      ];
      if (tls.ca) args.push("--cacert", tls.ca);
      else args.push("--insecure");
      if (tls.cert) args.push("--cert", tls.cert);
      if (tls.key) args.push("--key", tls.key);
      execFile("ip", [...args, url], { encoding: "utf8" }, (_err, stdout) => {
        const end = stdout.lastIndexOf("\n");
        resolve({ status: Number(stdout.slice(end + 1)) || 0, body: stdout.slice(0, Math.max(end, 0)) });
      });
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
