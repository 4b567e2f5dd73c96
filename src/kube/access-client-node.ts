/**
 * {@link KubeAccess} through client-node's KubeConfig, for what devicelet does not do itself: exec
 * credential plugins, auth providers (OIDC, cloud), proxies. The transport imports it only when a
 * kubeconfig needs it, on the first request: it loads client-node's whole package (about 86 MiB).
 *
 * The KubeConfig is built from devicelet's already checked {@link Kubeconfig} (so file merging and
 * relative paths are resolved once, one way), with the `exec`/`auth-provider` sections as written.
 * The dispatcher is built once (client-node builds one per request it authenticates); headers are
 * computed per request when a plugin supplies the credentials, once otherwise.
 *
 *   const access = await openClientNodeAccess(kubeconfig);
 */
import { KubeConfig, RequestContext, HttpMethod, type Cluster, type User } from "@kubernetes/client-node";
import { readFileSync } from "node:fs";
import type { RequestOptions } from "node:https";
import type { KubeAccess } from "./access.ts";
import type { Kubeconfig } from "./kubeconfig.ts";

export async function openClientNodeAccess(kubeconfig: Kubeconfig): Promise<KubeAccess> {
  const kc = toKubeConfig(kubeconfig);
  const probe = new RequestContext(kubeconfig.cluster.server, HttpMethod.GET);
  await kc.applySecurityAuthentication(probe);
  const dispatcher = probe.getDispatcher();
  const user = kubeconfig.user;
  const dynamic = user?.exec !== undefined || user?.authProvider !== undefined;
  let cached: Promise<Record<string, string>> | undefined;
  return {
    dispatcher,
    headers() {
      if (cached && !dynamic) return cached;
      const computed = headersOf(kc);
      // A failed computation (exec plugin down) is retried on the next request, not cached.
      computed.catch(() => {
        if (cached === computed) cached = undefined;
      });
      cached = computed;
      return computed;
    },
    async close() {
      await dispatcher?.close();
    },
  };
}

/** A KubeConfig holding exactly the kubeconfig's current context. */
export function toKubeConfig(kubeconfig: Kubeconfig): KubeConfig {
  const { cluster, user } = kubeconfig;
  const kcCluster: Cluster = {
    name: cluster.name,
    server: cluster.server,
    skipTLSVerify: cluster.insecureSkipTLSVerify,
    ...(cluster.caPem ? { caData: Buffer.from(cluster.caPem).toString("base64") } : {}),
    ...(cluster.tlsServerName ? { tlsServerName: cluster.tlsServerName } : {}),
    ...(cluster.proxyUrl ? { proxyUrl: cluster.proxyUrl } : {}),
  };
  // client-node reads a token-file once, at load; so does this fallback.
  const token = user?.tokenFile ? readFileSync(user.tokenFile, "utf8").trim() : user?.token;
  const kcUser: User = {
    name: user?.name ?? "none",
    ...(token ? { token } : {}),
    ...(user?.username !== undefined ? { username: user.username, password: user.password ?? "" } : {}),
    ...(user?.certPem ? { certData: Buffer.from(user.certPem).toString("base64") } : {}),
    ...(user?.keyPem ? { keyData: Buffer.from(user.keyPem).toString("base64") } : {}),
    ...(user?.impersonate ? { impersonateUser: user.impersonate } : {}),
    ...(user?.exec !== undefined ? { exec: user.exec } : {}),
    ...(user?.authProvider !== undefined ? { authProvider: user.authProvider } : {}),
  };
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [kcCluster],
    users: [kcUser],
    contexts: [{ name: kubeconfig.context, cluster: cluster.name, user: kcUser.name }],
    currentContext: kubeconfig.context,
  });
  return kc;
}

async function headersOf(kc: KubeConfig): Promise<Record<string, string>> {
  const opts: RequestOptions = {};
  await kc.applyToHTTPSOptions(opts);
  const headers: Record<string, string> = {};
  for (const [key, value] of Object.entries(opts.headers ?? {})) {
    if (value !== undefined) headers[key] = Array.isArray(value) ? value.join(", ") : String(value);
  }
  if (opts.auth && headers.Authorization === undefined)
    headers.Authorization = `Basic ${Buffer.from(opts.auth).toString("base64")}`;
  return headers;
}
