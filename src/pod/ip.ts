/**
 * Pod IPs for devices that report none. Tools written for kubelets treat a pod as ready only with
 * `status.podIP` set, so every pod gets one: the device's own address when it reports one,
 * otherwise the next free address of a configured IPv4 range, kept for the pod's lifetime and
 * taken back from existing pods' status after a restart.
 */

const toInt = (ip: string) => ip.split(".").reduce((acc, part) => acc * 256 + Number(part), 0);
const toIp = (n: number) => `${Math.floor(n / 2 ** 24)}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
const IPV4 = /^\d{1,3}(?:\.\d{1,3}){3}$/;

/** Prefix lengths the allocator serves: /30 leaves two usable addresses, /8 sixteen million. */
const MIN_BITS = 8;
const MAX_BITS = 30;

/**
 * Why `cidr` cannot be a pod IP range, or undefined when it can: it must be an IPv4 CIDR between
 * /8 and /30, so at least two addresses remain besides the network and broadcast addresses.
 * Configuration validation uses it to refuse such a range before start.
 */
export const podIpRangeProblem = (cidr: string): string | undefined => {
  const match = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(cidr);
  if (!match?.[1] || match[1].split(".").some((octet) => Number(octet) > 255)) {
    return `${JSON.stringify(cidr)} is not an IPv4 CIDR: pod IPs are allocated from IPv4 ranges only`;
  }
  const bits = Number(match[2]);
  if (bits > MAX_BITS)
    return `${JSON.stringify(cidr)} leaves no address for a pod besides the network and broadcast addresses (use /${MAX_BITS} or wider)`;
  if (bits < MIN_BITS) return `${JSON.stringify(cidr)} is wider than the /${MIN_BITS} the allocator serves`;
  return undefined;
};

/**
 * What it keeps per pod is one map entry: the owner and its address's offset in the range (a
 * small integer, where a string would cost 32 bytes more), plus one bit in a map of the range's
 * used addresses, grown as the addresses handed out reach further (at most 2 MiB, for a /8).
 * A reserved address outside the range (a device's own) is kept as given.
 */
export class PodIpAllocator {
  readonly #first: number;
  readonly #size: number;
  /** Offset from {@link PodIpAllocator.#first} of the owner's address, or the address outside the range. */
  readonly #byOwner = new Map<string, number | string>();
  /** Bit i: offset i is taken. */
  #used = new Uint8Array(64);
  #next = 0;

  /** `cidr` like `10.250.0.0/16`; the network and broadcast addresses are never handed out. */
  constructor(cidr: string) {
    const problem = podIpRangeProblem(cidr);
    const [address = "", bits = ""] = cidr.split("/");
    if (problem !== undefined)
      throw new Error(`pod IP range: ${problem}; use an IPv4 CIDR between /8 and /30`);
    const base = toInt(address);
    const size = 2 ** (32 - Number(bits));
    this.#first = base - (base % size) + 1;
    this.#size = size - 2;
  }

  /** Records an address a pod already has (from its status), so it is never handed to another. */
  reserve(owner: string, ip: string): void {
    this.release(owner);
    const offset = IPV4.test(ip) ? toInt(ip) - this.#first : -1;
    if (offset < 0 || offset >= this.#size) {
      this.#byOwner.set(owner, ip);
      return;
    }
    this.#byOwner.set(owner, offset);
    this.#mark(offset, true);
  }

  /** The owner's address, allocating the next free one on first call. */
  allocate(owner: string): string {
    const existing = this.#byOwner.get(owner);
    if (typeof existing === "string") return existing;
    if (existing !== undefined) return toIp(this.#first + existing);
    for (let i = 0; i < this.#size; i++) {
      const offset = (this.#next + i) % this.#size;
      if (!this.#taken(offset)) {
        this.#next = (offset + 1) % this.#size;
        this.#byOwner.set(owner, offset);
        this.#mark(offset, true);
        return toIp(this.#first + offset);
      }
    }
    throw new Error("pod IP range exhausted");
  }

  release(owner: string): void {
    const offset = this.#byOwner.get(owner);
    if (offset === undefined) return;
    this.#byOwner.delete(owner);
    if (typeof offset === "number") this.#mark(offset, false);
  }

  #taken(offset: number): boolean {
    const byte = offset >>> 3;
    return byte < this.#used.length && ((this.#used[byte] ?? 0) & (1 << (offset & 7))) !== 0;
  }

  #mark(offset: number, taken: boolean): void {
    const byte = offset >>> 3;
    if (byte >= this.#used.length) {
      if (!taken) return;
      const grown = new Uint8Array(
        Math.min(Math.max(this.#used.length * 2, byte + 1), Math.ceil(this.#size / 8)),
      );
      grown.set(this.#used);
      this.#used = grown;
    }
    const bit = 1 << (offset & 7);
    this.#used[byte] = taken ? (this.#used[byte] ?? 0) | bit : (this.#used[byte] ?? 0) & ~bit;
  }
}
