/**
 * Counts API requests per user from the harness API server's audit log while it grows, so long
 * benchmarks neither re-read a log of gigabytes nor lose the part the API server rotated away
 * (`--audit-log-maxsize`, one backup kept). It follows `audit.log` from where it ends at start,
 * reads on to the end of a rotated file before moving to the new one, and keeps only counts per
 * user, verb and tenth of a second of `requestReceivedTimestamp` (completed requests only, as
 * `auditRequests` in support.ts counts them), and when each node Lease was written successfully,
 * which tells how long a node went without a heartbeat as the API server saw it.
 *
 *   const audit = await AuditTail.start(["devicelet", "kwok"]);
 *   // ... load ...
 *   await audit.settle(endMs);                // the audit batch covering endMs is read
 *   audit.count("devicelet", startMs, endMs); // { total, byVerb, byRequest, throttled }
 *   await audit.stop();
 */
import { open, stat, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { StringDecoder } from "node:string_decoder";
import { testenvDir } from "./support.ts";

/** The API server writes audit batches at least this often (`--audit-log-batch-max-wait=1s`) plus slack. */
const BATCH_SETTLE_MS = 2_500;
const CHUNK = 1 << 20;
/** Counts are kept per this much of `requestReceivedTimestamp`. */
const BUCKET_MS = 100;

const completeRe = /"stage":"ResponseComplete"/;
const verbRe = /"verb":"([a-z]+)"/;
const userRe = /"user":\{"username":"([^"]*)"/;
const receivedRe = /"requestReceivedTimestamp":"([^"]+)"/;
const codeRe = /"responseStatus":\{.*?"code":(\d{3})/;
const resourceRe = /"objectRef":\{"resource":"([^"]+)"/;
const subresourceRe = /"objectRef":\{[^}]*?"subresource":"([^"]+)"/;
const nameRe = /"objectRef":\{[^}]*?"name":"([^"]+)"/;
const completedRe = /"stageTimestamp":"([^"]+)"/;

export interface AuditCount {
  total: number;
  byVerb: Record<string, number>;
  /** By verb and resource (with subresource): `patch pods/status`, `update leases`. */
  byRequest: Record<string, number>;
  /** Answered 429 Too Many Requests. */
  throttled: number;
}

/** The longest time one node's Lease went without a successful write. */
export interface LeaseGap {
  seconds: number;
  lease: string;
  /** When the gap began (epoch ms): the last write before it, or the window's start. */
  fromMs: number;
}

export class AuditTail {
  readonly #file: string;
  readonly #users: ReadonlySet<string>;
  /** `user verb resource` (or `user 429`) → tenth of a second → requests. */
  readonly #counts = new Map<string, Map<number, number>>();
  /** `user` → Lease name → when its successful writes completed (epoch ms, in log order). */
  readonly #leaseWrites = new Map<string, Map<string, number[]>>();
  readonly #decoder = new StringDecoder("utf8");
  readonly #buffer = Buffer.alloc(CHUNK);
  #handle: FileHandle;
  #inode: number;
  #position: number;
  #partial = "";
  #bytes = 0;
  #rotations = 0;
  #timer: NodeJS.Timeout | undefined;
  #reading: Promise<void> = Promise.resolve();

  private constructor(
    file: string,
    users: readonly string[],
    handle: FileHandle,
    inode: number,
    size: number,
  ) {
    this.#file = file;
    this.#users = new Set(users);
    this.#handle = handle;
    this.#inode = inode;
    this.#position = size;
  }

  /** Follows `file` (default `testenvDir/audit.log`) from its current end, reading every second. */
  static async start(
    users: readonly string[],
    file = path.join(testenvDir, "audit.log"),
  ): Promise<AuditTail> {
    const handle = await open(file, "r");
    const s = await handle.stat();
    const tail = new AuditTail(file, users, handle, s.ino, s.size);
    tail.#timer = setInterval(() => void tail.#read(), 1_000);
    return tail;
  }

  /** Audit bytes read since start (the log's growth), and how often the API server rotated it. */
  get growth(): { mib: number; rotations: number } {
    return { mib: Math.round((this.#bytes / 2 ** 20) * 10) / 10, rotations: this.#rotations };
  }

  /** Waits until the audit batch that holds requests received at `untilMs` must be written, and reads it. */
  async settle(untilMs: number): Promise<void> {
    const wait = untilMs + BATCH_SETTLE_MS - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await this.#read();
  }

  /** Requests by `user` received between `fromMs` and `toMs` (wall clock, to a tenth of a second). */
  count(user: string, fromMs: number, toMs: number): AuditCount {
    const from = Math.floor(fromMs / BUCKET_MS);
    const to = Math.floor(toMs / BUCKET_MS);
    const sum = (buckets: Map<number, number>) => {
      let n = 0;
      for (const [bucket, count] of buckets) if (bucket >= from && bucket <= to) n += count;
      return n;
    };
    const byVerb: Record<string, number> = {};
    const byRequest: Record<string, number> = {};
    let total = 0;
    let throttled = 0;
    for (const [key, buckets] of this.#counts) {
      const [keyUser, verb = "", resource = ""] = key.split(" ");
      if (keyUser !== user) continue;
      const n = sum(buckets);
      if (n === 0) continue;
      if (verb === "429") throttled += n;
      else {
        byVerb[verb] = (byVerb[verb] ?? 0) + n;
        byRequest[`${verb} ${resource}`] = n;
        total += n;
      }
    }
    return { total, byVerb, byRequest, throttled };
  }

  /**
   * The longest time between `fromMs` and `toMs` that a Lease `user` writes went without a
   * successful write (create, update or patch answered 2xx, by when the API server completed it),
   * counting from the last write before `fromMs` and up to `toMs`, of the Leases whose names start
   * with `prefix` (one fleet's nodes: the same user's Leases of an earlier fleet stopped on
   * purpose); undefined if `user` wrote none. Past the node-monitor grace period the
   * node-lifecycle controller marks the node Unknown.
   */
  longestLeaseGap(user: string, prefix: string, fromMs: number, toMs: number): LeaseGap | undefined {
    let longest: LeaseGap | undefined;
    const consider = (lease: string, from: number, to: number) => {
      const seconds = (to - from) / 1000;
      if (!longest || seconds > longest.seconds) longest = { seconds, lease, fromMs: from };
    };
    for (const [lease, times] of this.#leaseWrites.get(user) ?? []) {
      if (!lease.startsWith(prefix)) continue;
      let previous = times.findLast((t) => t <= fromMs) ?? fromMs;
      for (const t of times) {
        if (t <= fromMs) continue;
        if (t >= toMs) break;
        consider(lease, previous, t);
        previous = t;
      }
      consider(lease, previous, toMs);
    }
    return longest;
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#reading;
    await this.#handle.close();
  }

  /** Reads whatever was appended; one read at a time. */
  #read(): Promise<void> {
    this.#reading = this.#reading.then(() => this.#readToEnd()).catch(() => {});
    return this.#reading;
  }

  async #readToEnd(): Promise<void> {
    for (;;) {
      await this.#drain();
      // Rotated: the old file gets no more writes once renamed, so drain it once more, then switch.
      const current = await stat(this.#file).catch(() => undefined);
      if (current === undefined || current.ino === this.#inode) return;
      await this.#drain();
      this.#consume(this.#decoder.end());
      if (this.#partial !== "") this.#line(this.#partial);
      this.#partial = "";
      await this.#handle.close();
      this.#handle = await open(this.#file, "r");
      this.#inode = (await this.#handle.stat()).ino;
      this.#position = 0;
      this.#rotations++;
    }
  }

  async #drain(): Promise<void> {
    for (;;) {
      const { bytesRead } = await this.#handle.read(this.#buffer, 0, CHUNK, this.#position);
      if (bytesRead === 0) return;
      this.#position += bytesRead;
      this.#bytes += bytesRead;
      this.#consume(this.#decoder.write(this.#buffer.subarray(0, bytesRead)));
    }
  }

  #consume(text: string): void {
    const lines = (this.#partial + text).split("\n");
    this.#partial = lines.pop() ?? "";
    for (const line of lines) this.#line(line);
  }

  #line(line: string): void {
    const user = userRe.exec(line)?.[1];
    if (user === undefined || !this.#users.has(user) || !completeRe.test(line)) return;
    const received = receivedRe.exec(line)?.[1];
    const verb = verbRe.exec(line)?.[1];
    if (received === undefined || verb === undefined) return;
    const bucket = Math.floor(Date.parse(received) / BUCKET_MS);
    const resource = resourceRe.exec(line)?.[1] ?? "-";
    const subresource = subresourceRe.exec(line)?.[1];
    this.#add(`${user} ${verb} ${subresource ? `${resource}/${subresource}` : resource}`, bucket);
    const code = codeRe.exec(line)?.[1];
    if (code === "429") this.#add(`${user} 429`, bucket);
    if (resource === "leases" && code?.startsWith("2") && verb !== "get" && verb !== "list") {
      const name = nameRe.exec(line)?.[1];
      const completed = completedRe.exec(line)?.[1];
      if (name !== undefined && completed !== undefined) this.#leaseWrite(user, name, Date.parse(completed));
    }
  }

  #leaseWrite(user: string, lease: string, atMs: number): void {
    let leases = this.#leaseWrites.get(user);
    if (!leases) this.#leaseWrites.set(user, (leases = new Map<string, number[]>()));
    const times = leases.get(lease);
    if (times) times.push(atMs);
    else leases.set(lease, [atMs]);
  }

  #add(key: string, bucket: number): void {
    let buckets = this.#counts.get(key);
    if (!buckets) this.#counts.set(key, (buckets = new Map<number, number>()));
    buckets.set(bucket, (buckets.get(bucket) ?? 0) + 1);
  }
}
