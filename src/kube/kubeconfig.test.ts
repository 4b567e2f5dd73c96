/**
 * The kubeconfig loader against real files in a temp dir: every field devicelet reads itself,
 * relative paths, `$KUBECONFIG` merging, the order of sources, in-cluster, what is routed to
 * client-node, and errors that name the file and every problem.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { KubeconfigError, kubeconfigClusterCA, loadKubeconfig } from "./kubeconfig.ts";

const dir = mkdtempSync(path.join(tmpdir(), "devicelet-kubeconfig-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

// Not real certificates: the loader only checks for a PEM block.
const CA = "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n";
const CERT = "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n";
const KEY = "-----BEGIN EC PRIVATE KEY-----\na2V5\n-----END EC PRIVATE KEY-----\n";
const b64 = (s: string) => Buffer.from(s).toString("base64");

let seq = 0;
/** Writes `content` (YAML unless a string) to a fresh file under `dir/sub`; returns its path. */
function write(sub: string, content: unknown, name = `f${++seq}`): string {
  mkdirSync(path.join(dir, sub), { recursive: true });
  const file = path.join(dir, sub, name);
  writeFileSync(file, typeof content === "string" ? content : stringify(content));
  return file;
}

/** A one-context kubeconfig. */
function config(cluster: object, user?: object, extra: object = {}) {
  return {
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "c", cluster }],
    users: user ? [{ name: "u", user }] : [],
    contexts: [{ name: "ctx", context: { cluster: "c", ...(user ? { user: "u" } : {}) } }],
    "current-context": "ctx",
    ...extra,
  };
}

/** Only what the test gives: no KUBECONFIG, a HOME without .kube, no service account. */
const isolated = (env: Record<string, string> = {}) => ({
  env: { HOME: path.join(dir, "empty-home"), ...env },
  serviceAccountDir: path.join(dir, "no-sa"),
});

const errorOf = (fn: () => unknown): KubeconfigError => {
  try {
    fn();
  } catch (err) {
    if (err instanceof KubeconfigError) return err;
    throw err;
  }
  throw new Error("did not throw");
};

describe("loadKubeconfig", () => {
  it("reads a token user and strips the server's trailing slashes", () => {
    const file = write("token", config({ server: "https://api.example:6443/prefix//" }, { token: "t0k" }));
    const kc = loadKubeconfig({ path: file });
    expect(kc).toEqual({
      source: file,
      context: "ctx",
      cluster: { name: "c", server: "https://api.example:6443/prefix", insecureSkipTLSVerify: false },
      user: { name: "u", token: "t0k" },
    });
  });

  it("reads CA, client certificate and key from files relative to the kubeconfig's directory", () => {
    write("rel/pki", CA, "ca.crt");
    write("rel/pki", CERT, "client.crt");
    write("rel/pki", KEY, "client.key");
    const file = write(
      "rel",
      config(
        { server: "https://a:1", "certificate-authority": "pki/ca.crt" },
        { "client-certificate": "pki/client.crt", "client-key": "./pki/client.key", "token-file": "pki/tok" },
      ),
    );
    write("rel/pki", "tok\n", "tok");
    const kc = loadKubeconfig({ path: file });
    expect(kc.cluster.caPem).toBe(CA);
    expect(kc.user).toEqual({
      name: "u",
      certPem: CERT,
      keyPem: KEY,
      tokenFile: path.join(dir, "rel", "pki", "tok"),
    });
    expect(kubeconfigClusterCA(file)).toBe(CA);
  });

  it("reads the same material from the -data fields", () => {
    const file = write(
      "data",
      config(
        { server: "https://a:1", "certificate-authority-data": b64(CA) },
        { "client-certificate-data": b64(CERT), "client-key-data": b64(KEY) },
      ),
    );
    const kc = loadKubeconfig({ path: file });
    expect(kc.cluster.caPem).toBe(CA);
    expect(kc.user).toEqual({ name: "u", certPem: CERT, keyPem: KEY });
  });

  it("reads insecure-skip-tls-verify, tls-server-name, basic auth and impersonation", () => {
    const file = write(
      "tls",
      config(
        {
          server: "http://127.0.0.1:8080",
          "insecure-skip-tls-verify": true,
          "tls-server-name": "kubernetes",
        },
        { username: "admin", password: "pw", as: "someone" },
      ),
    );
    const kc = loadKubeconfig({ path: file });
    expect(kc.cluster).toEqual({
      name: "c",
      server: "http://127.0.0.1:8080",
      insecureSkipTLSVerify: true,
      tlsServerName: "kubernetes",
    });
    expect(kc.user).toEqual({ name: "u", username: "admin", password: "pw", impersonate: "someone" });
    expect(kc.clientNodeReason).toBeUndefined();
  });

  it("merges $KUBECONFIG files: the first to name an entry wins, and the first current-context set", () => {
    const first = write("merge", {
      clusters: [{ name: "c", cluster: { server: "https://first:1" } }],
      users: [{ name: "u", user: { token: "first" } }],
      contexts: [{ name: "a", context: { cluster: "c", user: "u" } }],
    });
    const second = write("merge", {
      clusters: [
        { name: "c", cluster: { server: "https://second:1" } },
        { name: "d", cluster: { server: "https://d:1" } },
      ],
      users: [{ name: "u", user: { token: "second" } }],
      contexts: [{ name: "b", context: { cluster: "d", user: "u" } }],
      "current-context": "a",
    });
    const third = write("merge", { "current-context": "b" });
    const kc = loadKubeconfig(isolated({ KUBECONFIG: [first, "", second, third].join(path.delimiter) }));
    expect(kc.context).toBe("a");
    expect(kc.cluster.server).toBe("https://first:1");
    expect(kc.user?.token).toBe("first");
    expect(kc.source).toBe([first, second, third].join(path.delimiter));
  });

  it("resolves a merged entry's paths against its own file's directory, and names that file", () => {
    write("merge-a/pki", CA, "ca.crt");
    const first = write("merge-a", {
      clusters: [{ name: "ok", cluster: { server: "https://a:1", "certificate-authority": "pki/ca.crt" } }],
      contexts: [{ name: "x", context: { cluster: "ok" } }],
      "current-context": "x",
    });
    const second = write("merge-b", {
      clusters: [{ name: "bad", cluster: { server: "https://b:1", "certificate-authority": "pki/ca.crt" } }],
      contexts: [{ name: "y", context: { cluster: "bad" } }],
    });
    const both = [first, second].join(path.delimiter);
    expect(loadKubeconfig(isolated({ KUBECONFIG: both })).cluster.caPem).toBe(CA);
    const switched = write("merge-a", { "current-context": "y" });
    const error = errorOf(() =>
      loadKubeconfig(isolated({ KUBECONFIG: [switched, first, second].join(path.delimiter) })),
    );
    expect(error.problems).toEqual([
      `cluster "bad" (in ${second}): certificate-authority ${path.join(dir, "merge-b", "pki", "ca.crt")}: ENOENT`,
    ]);
  });

  it("looks at the path, then $KUBECONFIG, then ~/.kube/config, then the service account", () => {
    const named = write("order", config({ server: "https://named:1" }));
    const env = write("order", config({ server: "https://env:1" }));
    const home = path.join(dir, "home");
    write("home/.kube", config({ server: "https://home:1" }), "config");
    const sa = path.join(dir, "sa");
    write("sa", "sa-token\n", "token");
    write("sa", CA, "ca.crt");
    const inCluster = { KUBERNETES_SERVICE_HOST: "10.0.0.1", KUBERNETES_SERVICE_PORT: "443" };
    const all = { env: { KUBECONFIG: env, HOME: home, ...inCluster }, serviceAccountDir: sa };
    expect(loadKubeconfig({ ...all, path: named }).cluster.server).toBe("https://named:1");
    expect(loadKubeconfig(all).cluster.server).toBe("https://env:1");
    expect(loadKubeconfig({ ...all, env: { HOME: home, ...inCluster } }).cluster.server).toBe(
      "https://home:1",
    );
    const pod = loadKubeconfig({ ...all, env: { HOME: path.join(dir, "empty-home"), ...inCluster } });
    expect(pod).toEqual({
      source: `in-cluster service account (${sa})`,
      context: "inClusterContext",
      cluster: { name: "inCluster", server: "https://10.0.0.1:443", caPem: CA, insecureSkipTLSVerify: false },
      user: { name: "inClusterUser", tokenFile: path.join(sa, "token") },
    });
    const v6 = loadKubeconfig({
      serviceAccountDir: sa,
      env: {
        HOME: path.join(dir, "empty-home"),
        KUBERNETES_SERVICE_HOST: "fd00::1",
        KUBERNETES_SERVICE_PORT: "6443",
      },
    });
    expect(v6.cluster.server).toBe("https://[fd00::1]:6443");
  });

  it("says what is missing in a pod without the service environment, and when there is nothing at all", () => {
    const sa = path.join(dir, "sa-no-env");
    write("sa-no-env", "t", "token");
    const noEnv = errorOf(() =>
      loadKubeconfig({ env: { HOME: path.join(dir, "empty-home") }, serviceAccountDir: sa }),
    );
    expect(noEnv.problems).toEqual([
      "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set",
      `${path.join(sa, "ca.crt")}: ENOENT`,
    ]);
    expect(errorOf(() => loadKubeconfig(isolated())).message).toMatch(/no kubeconfig: .*set KUBECONFIG/);
  });

  it("routes exec users, auth-providers and proxies to client-node", () => {
    const exec = { apiVersion: "client.authentication.k8s.io/v1", command: "get-token", args: ["--x"] };
    const viaExec = loadKubeconfig({ path: write("plugin", config({ server: "https://a:1" }, { exec })) });
    expect(viaExec.clientNodeReason).toBe('user "u" uses an exec credential plugin');
    expect(viaExec.user?.exec).toEqual(exec);
    const authProvider = { name: "oidc", config: { "id-token": "x" } };
    const viaProvider = loadKubeconfig({
      path: write("plugin", config({ server: "https://a:1" }, { "auth-provider": authProvider })),
    });
    expect(viaProvider.clientNodeReason).toBe('user "u" uses an auth-provider');
    expect(viaProvider.user?.authProvider).toEqual(authProvider);
    const viaProxy = loadKubeconfig({
      path: write(
        "plugin",
        config({ server: "https://a:1", "proxy-url": "socks5://p:1080" }, { token: "t" }),
      ),
    });
    expect(viaProxy.clientNodeReason).toBe('cluster "c" has a proxy-url');
    expect(viaProxy.cluster.proxyUrl).toBe("socks5://p:1080");
  });

  it("reports a missing current-context together with the file's other problems", () => {
    const file = write("bad", {
      clusters: [{ name: "c", cluster: { server: "https://a:1" } }, { cluster: {} }],
      users: "nope",
    });
    const error = errorOf(() => loadKubeconfig({ path: file }));
    expect(error.message).toContain(`kubeconfig ${file}: `);
    expect(error.problems).toEqual(["clusters[1] has no name", "users is not a list", "no current-context"]);
  });

  it("reports an unknown user, a missing file and a bad server at once", () => {
    const file = write("bad", {
      clusters: [{ name: "c", cluster: { server: "http://a:1", "certificate-authority": "missing/ca.crt" } }],
      contexts: [{ name: "ctx", context: { cluster: "c", user: "ghost" } }],
      "current-context": "ctx",
    });
    const error = errorOf(() => loadKubeconfig({ path: file }));
    expect(error.problems).toEqual([
      'cluster "c": server "http://a:1" is plain HTTP without insecure-skip-tls-verify: true',
      `cluster "c": certificate-authority ${path.join(dir, "bad", "missing", "ca.crt")}: ENOENT`,
      'context "ctx": no user named "ghost"',
    ]);
  });

  it("reports a context naming no context, half a key pair, a missing token file and unsupported impersonation", () => {
    const unknown = write("bad", { ...config({ server: "https://a:1" }), "current-context": "other" });
    expect(errorOf(() => loadKubeconfig({ path: unknown })).problems).toEqual([
      'current-context "other" names no context',
    ]);
    const user = write(
      "bad",
      config(
        { server: "https://a:1" },
        { "client-certificate-data": b64(CERT), "token-file": "gone", "as-groups": ["g"] },
      ),
    );
    expect(errorOf(() => loadKubeconfig({ path: user })).problems).toEqual([
      `user "u": token-file ${path.join(dir, "bad", "gone")} does not exist`,
      'user "u": as-groups is not supported',
    ]);
    const halfPair = write("bad", config({ server: "https://a:1" }, { "client-key-data": b64(KEY) }));
    expect(errorOf(() => loadKubeconfig({ path: halfPair })).problems).toEqual([
      'user "u": client-key without client-certificate',
    ]);
    const notPem = write("bad", config({ server: "https://a:1", "certificate-authority-data": b64("x") }));
    expect(errorOf(() => loadKubeconfig({ path: notPem })).problems).toEqual([
      'cluster "c": certificate-authority-data holds no PEM block',
    ]);
  });

  it("names a missing or unparsable kubeconfig file", () => {
    const missing = path.join(dir, "nowhere", "config");
    expect(errorOf(() => loadKubeconfig({ path: missing })).problems).toEqual([`${missing}: ENOENT`]);
    const broken = write("bad", "clusters: [unclosed\n");
    const notYaml = errorOf(() => loadKubeconfig({ path: broken })).problems;
    expect(notYaml).toHaveLength(1);
    expect(notYaml[0]).toMatch(new RegExp(`^${broken}: not YAML: `));
    const scalar = write("bad", "just text\n");
    expect(errorOf(() => loadKubeconfig({ path: scalar })).problems).toEqual([
      `${scalar}: not a kubeconfig (a YAML mapping)`,
    ]);
  });
});
