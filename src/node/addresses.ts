/**
 * Checks of the addresses a device announces (birth `addresses`, report `address`) before any of
 * them reaches the API server as a node address, a podIP or a hostIP. The API server refuses a pod
 * status whose podIP is not an IP (422), so one bad address would otherwise fail every status write
 * of the device's pods.
 *
 * - `InternalIP` / `ExternalIP` (and pod addresses): `net.isIP`, and inside one of the configured
 *   ranges (`nodes.addressRanges`; empty allows any);
 * - `Hostname` / `InternalDNS`: a DNS-1123 subdomain of at most 253 characters.
 *
 *   const check = addressChecker(["10.0.0.0/8"]);
 *   check.ip("10.1.2.3");        // undefined: fine
 *   check.ip("999.1.1.1");       // "999.1.1.1 is not an IP address"
 */
import { BlockList, isIP } from "node:net";
import type { NodeAddress } from "../provider/types.ts";
import { DNS1123_SUBDOMAIN } from "./names.ts";

const MAX_DNS_NAME = 253;

/** Checks addresses against the syntax rules and the configured ranges; see the module doc. */
export interface AddressChecker {
  /** Why `address` may not be used as an IP (a pod's, or a node's), or undefined when it may. */
  ip(address: string): string | undefined;
  /** Why a node address may not be used, or undefined when it may. */
  nodeAddress(address: NodeAddress): string | undefined;
}

/**
 * An {@link AddressChecker} for `ranges` (CIDRs, IPv4 or IPv6, already validated by the config
 * schema). An empty list allows every syntactically valid IP.
 */
export function addressChecker(ranges: readonly string[]): AddressChecker {
  const list = new BlockList();
  for (const cidr of ranges) {
    const [net = "", bits = "0"] = cidr.split("/");
    const family = isIP(net) === 6 ? "ipv6" : "ipv4";
    list.addSubnet(net, Number(bits), family);
  }
  const ip = (address: string): string | undefined => {
    const family = isIP(address);
    // Kubernetes refuses IPv6 zone ids (`fe80::1%eth0`), which net.isIP accepts.
    if (family === 0 || address.includes("%"))
      return `${JSON.stringify(address.slice(0, 64))} is not an IP address`;
    if (ranges.length > 0 && !list.check(address, family === 6 ? "ipv6" : "ipv4")) {
      return `${address} is outside nodes.addressRanges (${ranges.join(", ")})`;
    }
    return undefined;
  };
  return {
    ip,
    nodeAddress: (a) => {
      if (a.type === "InternalIP" || a.type === "ExternalIP") return ip(a.address);
      if (a.address.length > MAX_DNS_NAME || !DNS1123_SUBDOMAIN.test(a.address)) {
        return `${JSON.stringify(a.address.slice(0, 64))} is not a DNS-1123 name (${a.type})`;
      }
      return undefined;
    },
  };
}
