/**
 * Pod IPs for devices that report none. Tools written for kubelets treat a pod as ready only with
 * `status.podIP` set, so every pod gets one: the device's own address when it reports one,
 * otherwise the next free address of a configured IPv4 range, kept for the pod's lifetime and
 * taken back from existing pods' status after a restart.
 */

const toInt = (ip: string) => ip.split(".").reduce((acc, part) => acc * 256 + Number(part), 0);
const toIp = (n: number) => [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join(".");

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

export class PodIpAllocator {
  readonly #first: number;
  readonly #size: number;
  readonly #byOwner = new Map<string, string>();
  readonly #owners = new Map<string, string>();
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
    this.#byOwner.set(owner, ip);
    this.#owners.set(ip, owner);
  }

  /** The owner's address, allocating the next free one on first call. */
  allocate(owner: string): string {
    const existing = this.#byOwner.get(owner);
    if (existing) return existing;
    for (let i = 0; i < this.#size; i++) {
      const ip = toIp(this.#first + ((this.#next + i) % this.#size));
      if (!this.#owners.has(ip)) {
        this.#next = (this.#next + i + 1) % this.#size;
        this.reserve(owner, ip);
        return ip;
      }
    }
    throw new Error("pod IP range exhausted");
  }

  release(owner: string): void {
    const ip = this.#byOwner.get(owner);
    if (ip === undefined) return;
    this.#byOwner.delete(owner);
    this.#owners.delete(ip);
  }
}
