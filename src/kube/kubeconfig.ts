/**
 * The kubeconfig, read without `@kubernetes/client-node` (whose KubeConfig pulls in every generated
 * model and API class: about 86 MiB of memory). {@link loadKubeconfig} finds the configuration
 * where client-node's `loadFromDefault` does, checks it once and returns the current context's
 * cluster and user as plain data: the server URL, the TLS material as PEM, the credentials.
 *
 * Guarantees:
 * - sources, first that applies: an explicit path; `$KUBECONFIG` (files joined by the OS path
 *   separator, merged as kubectl merges them: the first file to define a cluster, user or context
 *   name wins, and the first `current-context` set wins); `~/.kube/config`; the in-cluster service
 *   account (its `token` file present, `KUBERNETES_SERVICE_HOST`/`_PORT` set);
 * - `*-data` fields are base64; file fields are relative to the kubeconfig's directory, and the
 *   certificate files are read here, once; a `token-file` is only checked here (the transport
 *   re-reads it, see `access.ts`);
 * - a bad configuration throws one {@link KubeconfigError} naming the file and every problem;
 * - a user with `exec` or `auth-provider`, or a cluster with `proxy-url`, is returned with
 *   `clientNodeReason` set: the transport then lets client-node authenticate (imported only then).
 *
 *   const kc = loadKubeconfig({ path: config.kubeconfig });
 *   kc.cluster.server;   // "https://10.0.0.1:6443"
 *   kc.cluster.caPem;    // "-----BEGIN CERTIFICATE-----…", or undefined: the system roots
 */
import { existsSync, readFileSync } from "node:fs";
import { isIPv6 } from "node:net";
import { homedir } from "node:os";
import path from "node:path";
import { parse } from "yaml";

export interface KubeconfigCluster {
  readonly name: string;
  /** The API server's base URL, without trailing slashes (it may carry a path prefix). */
  readonly server: string;
  /** PEM of the CAs to trust; undefined: the system roots. */
  readonly caPem?: string;
  /** `insecure-skip-tls-verify`: the server's certificate is not checked. */
  readonly insecureSkipTLSVerify: boolean;
  /** `tls-server-name`: the name to verify the server's certificate against (and SNI). */
  readonly tlsServerName?: string;
  /** `proxy-url`: connections go through this HTTP(S) or SOCKS proxy (client-node's agents). */
  readonly proxyUrl?: string;
}

export interface KubeconfigUser {
  readonly name: string;
  /** A static bearer token. */
  readonly token?: string;
  /** Absolute path of a file holding the bearer token; re-read, as it may rotate. Wins over `token`. */
  readonly tokenFile?: string;
  /** Basic authentication, used when there is no token. */
  readonly username?: string;
  readonly password?: string;
  /** Client certificate and key, PEM. */
  readonly certPem?: string;
  readonly keyPem?: string;
  /** `as`: sent as `Impersonate-User`. */
  readonly impersonate?: string;
  /** The `exec` credential plugin, as written (client-node runs it). */
  readonly exec?: unknown;
  /** The `auth-provider`, as written (client-node runs it). */
  readonly authProvider?: unknown;
}

/** One usable API server identity: the current context of a checked kubeconfig. */
export interface Kubeconfig {
  /** Where it came from, for messages: the file(s), or the in-cluster service account. */
  readonly source: string;
  readonly context: string;
  readonly cluster: KubeconfigCluster;
  /** No user: requests go without credentials. */
  readonly user?: KubeconfigUser;
  /** Set when only client-node can connect this identity (`exec`, `auth-provider`, `proxy-url`). */
  readonly clientNodeReason?: string;
}

export interface LoadKubeconfigOptions {
  /** A kubeconfig file; wins over everything else. */
  readonly path?: string | undefined;
  /** Environment (`KUBECONFIG`, `HOME`, `KUBERNETES_SERVICE_*`); default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** The service account's mount; default {@link SERVICE_ACCOUNT_DIR}. */
  readonly serviceAccountDir?: string;
}

/** Where a pod's service account token, CA and namespace are mounted. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** A kubeconfig that cannot be used; `problems` lists every reason, each also in the message. */
export class KubeconfigError extends Error {
  override readonly name = "KubeconfigError";
  readonly problems: readonly string[];
  constructor(source: string, problems: readonly string[]) {
    super(`kubeconfig ${source}: ${problems.join("; ")}`);
    this.problems = problems;
  }
}

/**
 * Finds, reads and checks the kubeconfig (see the module doc for the order); synchronous. Throws a
 * {@link KubeconfigError} when it cannot be used, or when there is none at all.
 */
export function loadKubeconfig(options: LoadKubeconfigOptions = {}): Kubeconfig {
  const env = options.env ?? process.env;
  if (options.path) return fromFiles([options.path]);
  const list = env.KUBECONFIG?.split(path.delimiter).filter(Boolean) ?? [];
  if (list.length > 0) return fromFiles(list);
  const home = env.HOME === undefined || env.HOME === "" ? homedir() : env.HOME;
  const defaultFile = path.join(home, ".kube", "config");
  if (existsSync(defaultFile)) return fromFiles([defaultFile]);
  const saDir = options.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  if (existsSync(path.join(saDir, "token"))) return inCluster(saDir, env);
  throw new KubeconfigError("(none)", [
    `no kubeconfig: give a path, set KUBECONFIG, create ${defaultFile} or run in a pod with a service account`,
  ]);
}

/**
 * The PEM of the CA that the kubeconfig (found as {@link loadKubeconfig} finds it) trusts for its
 * current cluster, or undefined when it names none (then the system roots apply).
 */
export function kubeconfigClusterCA(kubeconfigPath?: string): string | undefined {
  return loadKubeconfig({ path: kubeconfigPath }).cluster.caPem;
}

type Entry = Readonly<Record<string, unknown>>;
/** A named entry of `clusters`/`users`/`contexts` and the directory its relative paths start from. */
interface Named {
  readonly body: Entry;
  readonly dir: string;
  /** ` (in <file>)` when several files were merged, for messages; else empty. */
  readonly origin: string;
}

const isEntry = (value: unknown): value is Entry =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** Reads, merges and checks kubeconfig files, collecting every problem before throwing. */
function fromFiles(files: readonly string[]): Kubeconfig {
  const source = files.join(path.delimiter);
  const problems: string[] = [];
  const tables = {
    clusters: new Map<string, Named>(),
    users: new Map<string, Named>(),
    contexts: new Map<string, Named>(),
  };
  const kinds = { clusters: "cluster", users: "user", contexts: "context" } as const;
  let current: string | undefined;
  /** A file that could not be read: what it would have defined is unknown, so no more checks. */
  let unreadable = false;
  for (const file of files) {
    let doc: unknown;
    try {
      const content = readFileSync(file, "utf8");
      try {
        doc = parse(content) ?? {};
      } catch (err) {
        throw new Error(`not YAML: ${(err as Error).message.split("\n")[0] ?? ""}`, { cause: err });
      }
      if (!isEntry(doc)) throw new Error("not a kubeconfig (a YAML mapping)");
    } catch (err) {
      problems.push(`${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      unreadable = true;
      continue;
    }
    const at = files.length > 1 ? `${file}: ` : "";
    const origin = files.length > 1 ? ` (in ${file})` : "";
    for (const list of ["clusters", "users", "contexts"] as const) {
      const items = doc[list] ?? [];
      if (!Array.isArray(items)) {
        problems.push(`${at}${list} is not a list`);
        continue;
      }
      items.forEach((item: unknown, i) => {
        const name = isEntry(item) ? item.name : undefined;
        const body = isEntry(item) ? item[kinds[list]] : undefined;
        if (typeof name !== "string" || name === "") problems.push(`${at}${list}[${i}] has no name`);
        else if (!isEntry(body)) problems.push(`${at}${list}[${i}] (${name}) has no ${kinds[list]}`);
        // The first file to name an entry wins, as kubectl merges.
        else if (!tables[list].has(name)) tables[list].set(name, { body, dir: path.dirname(file), origin });
      });
    }
    const cc = doc["current-context"];
    if (current === undefined && typeof cc === "string" && cc !== "") current = cc;
  }
  if (unreadable) throw new KubeconfigError(source, problems);
  // Every problem at once: the structure above, then the current context's cluster and user.
  const context = current === undefined ? undefined : tables.contexts.get(current);
  if (current === undefined) problems.push("no current-context");
  else if (!context) problems.push(`current-context "${current}" names no context`);
  let cluster: KubeconfigCluster | undefined;
  let user: KubeconfigUser | undefined;
  if (context) {
    const { cluster: clusterName, user: userName } = context.body;
    const clusterEntry = typeof clusterName === "string" ? tables.clusters.get(clusterName) : undefined;
    if (typeof clusterName !== "string" || clusterName === "")
      problems.push(`context "${current ?? ""}" names no cluster`);
    else if (!clusterEntry) problems.push(`context "${current ?? ""}": no cluster named "${clusterName}"`);
    else cluster = readCluster(clusterName, clusterEntry, problems);
    // No user is allowed (requests then go without credentials), as with client-node.
    if (typeof userName === "string" && userName !== "") {
      const userEntry = tables.users.get(userName);
      if (!userEntry) problems.push(`context "${current ?? ""}": no user named "${userName}"`);
      else user = readUser(userName, userEntry, problems);
    } else if (userName !== undefined && userName !== null && userName !== "") {
      problems.push(`context "${current ?? ""}": user is not a string`);
    }
  }
  if (problems.length > 0 || !cluster || current === undefined) throw new KubeconfigError(source, problems);
  const clientNodeReason = user?.exec
    ? `user "${user.name}" uses an exec credential plugin`
    : user?.authProvider
      ? `user "${user.name}" uses an auth-provider`
      : cluster.proxyUrl
        ? `cluster "${cluster.name}" has a proxy-url`
        : undefined;
  return {
    source,
    context: current,
    cluster,
    ...(user ? { user } : {}),
    ...(clientNodeReason ? { clientNodeReason } : {}),
  };
}

/** A string field, or undefined when absent or empty; a field of another type is a problem. */
function text(entry: Named, key: string, label: string, problems: string[]): string | undefined {
  const value = entry.body[key];
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value === "string") return value;
  problems.push(`${label}: ${key} is not a string`);
  return undefined;
}

/** PEM from `<key>` (a file, relative to the kubeconfig) or `<key>-data` (base64); the file wins. */
function pem(entry: Named, key: string, label: string, problems: string[]): string | undefined {
  const file = text(entry, key, label, problems);
  const data = text(entry, `${key}-data`, label, problems);
  let content: string;
  if (file) {
    const absolute = path.resolve(entry.dir, file);
    try {
      content = readFileSync(absolute, "utf8");
    } catch (err) {
      problems.push(`${label}: ${key} ${absolute}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
      return undefined;
    }
  } else if (data) {
    content = Buffer.from(data, "base64").toString("utf8");
  } else {
    return undefined;
  }
  if (!content.includes("-----BEGIN ")) {
    problems.push(`${label}: ${file ? key : `${key}-data`} holds no PEM block`);
    return undefined;
  }
  return content;
}

function readCluster(name: string, entry: Named, problems: string[]): KubeconfigCluster | undefined {
  const label = `cluster "${name}"${entry.origin}`;
  const before = problems.length;
  const server = text(entry, "server", label, problems)?.replace(/\/+$/, "");
  const insecure = entry.body["insecure-skip-tls-verify"] === true;
  if (!server) problems.push(`${label} has no server`);
  else if (!URL.canParse(server)) problems.push(`${label}: server "${server}" is not a URL`);
  else {
    const { protocol } = new URL(server);
    if (protocol !== "https:" && protocol !== "http:")
      problems.push(`${label}: server "${server}" is not http(s)`);
    // client-node refuses plain HTTP unless TLS checks are explicitly off; so does devicelet.
    if (protocol === "http:" && !insecure)
      problems.push(`${label}: server "${server}" is plain HTTP without insecure-skip-tls-verify: true`);
  }
  const caPem = pem(entry, "certificate-authority", label, problems);
  const tlsServerName = text(entry, "tls-server-name", label, problems);
  const proxyUrl = text(entry, "proxy-url", label, problems);
  if (problems.length > before || !server) return undefined;
  return {
    name,
    server,
    insecureSkipTLSVerify: insecure,
    ...(caPem ? { caPem } : {}),
    ...(tlsServerName ? { tlsServerName } : {}),
    ...(proxyUrl ? { proxyUrl } : {}),
  };
}

function readUser(name: string, entry: Named, problems: string[]): KubeconfigUser | undefined {
  const label = `user "${name}"${entry.origin}`;
  const before = problems.length;
  const token = text(entry, "token", label, problems);
  const tokenFileField = text(entry, "token-file", label, problems);
  const tokenFile = tokenFileField && path.resolve(entry.dir, tokenFileField);
  if (tokenFile && !existsSync(tokenFile)) problems.push(`${label}: token-file ${tokenFile} does not exist`);
  const username = text(entry, "username", label, problems);
  const password = text(entry, "password", label, problems);
  const certPem = pem(entry, "client-certificate", label, problems);
  const keyPem = pem(entry, "client-key", label, problems);
  if (certPem && !keyPem && problems.length === before)
    problems.push(`${label}: client-certificate without client-key`);
  if (keyPem && !certPem && problems.length === before)
    problems.push(`${label}: client-key without client-certificate`);
  const impersonate = text(entry, "as", label, problems);
  // client-node ignores these; requests made as someone else than configured would be worse than none.
  for (const key of ["as-groups", "as-uid", "as-user-extra"]) {
    if (entry.body[key] !== undefined) problems.push(`${label}: ${key} is not supported`);
  }
  const { exec } = entry.body;
  const authProvider = entry.body["auth-provider"];
  if (exec !== undefined && !isEntry(exec)) problems.push(`${label}: exec is not a mapping`);
  if (authProvider !== undefined && !isEntry(authProvider))
    problems.push(`${label}: auth-provider is not a mapping`);
  if (problems.length > before) return undefined;
  return {
    name,
    ...(token ? { token } : {}),
    ...(tokenFile ? { tokenFile } : {}),
    ...(username ? { username } : {}),
    ...(password ? { password } : {}),
    ...(certPem ? { certPem } : {}),
    ...(keyPem ? { keyPem } : {}),
    ...(impersonate ? { impersonate } : {}),
    ...(exec ? { exec } : {}),
    ...(authProvider ? { authProvider } : {}),
  };
}

/**
 * The pod's own service account, as client-go's `InClusterConfig`: the API server at
 * `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the mounted `ca.crt`, the mounted
 * `token` (re-read as the kubelet rotates it).
 */
function inCluster(saDir: string, env: Readonly<Record<string, string | undefined>>): Kubeconfig {
  const source = `in-cluster service account (${saDir})`;
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  const problems: string[] = [];
  if (!host || !port) problems.push("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set");
  let caPem: string | undefined;
  try {
    caPem = readFileSync(path.join(saDir, "ca.crt"), "utf8");
  } catch (err) {
    problems.push(`${path.join(saDir, "ca.crt")}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (problems.length > 0 || !host || !port || !caPem) throw new KubeconfigError(source, problems);
  return {
    source,
    context: "inClusterContext",
    cluster: {
      name: "inCluster",
      server: `https://${isIPv6(host) ? `[${host}]` : host}:${port}`,
      caPem,
      insecureSkipTLSVerify: false,
    },
    user: { name: "inClusterUser", tokenFile: path.join(saDir, "token") },
  };
}
