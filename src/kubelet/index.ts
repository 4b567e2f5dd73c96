/**
 * `src/kubelet`: the kubelet HTTPS API devicelet serves for all its device nodes
 * (docs/kubelet-api.md): `kubectl logs`, `exec`, `attach`, `port-forward` through the API
 * server's node proxy, and `/stats/summary` and `/metrics/resource` for metrics-server (`kubectl
 * top`). One HTTPS server per node port (ports.ts, server.ts); routes in routes*.ts; stats in
 * summary.ts and metrics-resource.ts; the serving certificate in tls.ts; authentication and
 * authorization in auth.ts; the stream protocols in streams/.
 *
 *   const kubelet = createKubeletApi({ config: config.kubelet, kube, provider, backend, ... });
 *   const nodes = new NodeController({ ..., kubeletPorts: kubelet.ports });
 *   kubelet.start(signal);        // the certificate is obtained in the background
 *   await kubelet.close();        // at shutdown: servers closed, streams ended
 */
import { isIP } from "node:net";
import type { Logger } from "pino";
import type { Clock } from "../base/clock.ts";
import type { KubeletConfig } from "../config/index.ts";
import type { EventRecorder, KubeClient } from "../kube/index.ts";
import { kubeletAuthenticator } from "./auth.ts";
import type { KubeletBackend } from "./routes.ts";
import { KubeletServer } from "./server.ts";
import { loadClientCA, servingCertificates, type ServingCertificateOptions } from "./tls.ts";

export { KubeletPorts } from "./ports.ts";
export { KubeletServer } from "./server.ts";
export type { KubeletBackend } from "./routes.ts";

/** The environment variable the manifests set from the downward API (`status.podIP`). */
export const POD_IP_ENV = "DEVICELET_POD_IP";

/**
 * The address every node advertises (InternalIP): `kubelet.address`, else $DEVICELET_POD_IP,
 * else 127.0.0.1, which the API server's node proxy refuses (it dials only global unicast
 * addresses): a warning says so when the API is served.
 */
export function resolveKubeletAddress(
  config: Pick<KubeletConfig, "address" | "serve">,
  env: Readonly<Record<string, string | undefined>>,
  logger: Logger,
): string {
  if (config.address !== "") return config.address;
  const podIP = env[POD_IP_ENV] ?? "";
  if (podIP !== "" && isIP(podIP) !== 0) return podIP;
  if (podIP !== "") logger.warn({ [POD_IP_ENV]: podIP }, `${POD_IP_ENV} is not an IP address; ignored`);
  if (config.serve) {
    logger.warn(
      { address: "127.0.0.1" },
      `kubelet.address is not set and ${POD_IP_ENV} is empty: nodes advertise 127.0.0.1, which the API ` +
        "server will not proxy to (kubectl logs, exec and top fail); set kubelet.address or " +
        `${POD_IP_ENV} (docs/kubelet-api.md)`,
    );
  }
  return "127.0.0.1";
}

export interface KubeletApiOptions {
  readonly config: KubeletConfig;
  /** The resolved advertised address ({@link resolveKubeletAddress}). */
  readonly address: string;
  readonly kube: KubeClient;
  readonly backend: KubeletBackend;
  /** Where `KubeletPortsExhausted` is recorded on a node. */
  readonly events: Pick<EventRecorder, "record">;
  /** devicelet's state namespace: the default home of the certificate Secrets. */
  readonly stateNamespace: string;
  readonly kubeconfigPath?: string | undefined;
  readonly logger: Logger;
  readonly clock?: Clock;
}

export interface KubeletApi {
  /** The per-node port allocator, handed to the node controller. */
  readonly ports: KubeletServer["ports"];
  /** Starts obtaining the serving certificate (in the background) and logs what it waits for. */
  start(signal: AbortSignal): void;
  close(): Promise<void>;
}

/** Builds the kubelet API from the `kubelet` config section; nothing listens until nodes get ports. */
export function createKubeletApi(o: KubeletApiOptions): KubeletApi {
  const { config, kube } = o;
  const logger = o.logger.child({ component: "kubelet" });
  const clock = o.clock ? { clock: o.clock } : {};
  const clientCA = loadClientCA({
    ...(config.clientCAFile === "" ? {} : { file: config.clientCAFile }),
    ...(o.kubeconfigPath === undefined ? {} : { kubeconfigPath: o.kubeconfigPath }),
  });
  const certificates = servingCertificates({
    ...certificateOptions(config, o.address, o.stateNamespace),
    kube,
    logger,
    ...clock,
  });
  const server = new KubeletServer({
    ports: {
      bindAddress: config.bindAddress === "" ? o.address : config.bindAddress,
      port: config.port,
      portCount: config.portCount,
      onExhausted: (nodeName, message) =>
        o.events.record({
          object: { apiVersion: "v1", kind: "Node", name: nodeName },
          type: "Warning",
          reason: "KubeletPortsExhausted",
          message,
        }),
    },
    certificates,
    clientCA,
    authenticator: kubeletAuthenticator({
      kube,
      logger,
      ...clock,
      cache: {
        authenticationTTLSeconds: config.auth.authenticationCacheTTLSeconds,
        authorizedTTLSeconds: config.auth.authorizedCacheTTLSeconds,
        unauthorizedTTLSeconds: config.auth.unauthorizedCacheTTLSeconds,
        size: config.auth.cacheSize,
      },
    }),
    backend: o.backend,
    logger,
    ...clock,
  });
  return {
    ports: server.ports,
    start: (signal) => {
      if (!certificates.current()) {
        logger.info(
          { source: config.tls.source },
          config.tls.source === "csr"
            ? "kubelet API waiting for its serving certificate: approve the CSR named in the log " +
                "(kubectl certificate approve <name>), or set kubelet.tls.csrApprove (docs/kubelet-api.md)"
            : "kubelet API waiting for its serving certificate",
        );
      }
      server.start(signal);
    },
    close: () => server.close(),
  };
}

/** The certificate source the `kubelet.tls` section names. */
export function certificateOptions(
  config: KubeletConfig,
  address: string,
  stateNamespace: string,
): ServingCertificateOptions {
  const { tls } = config;
  switch (tls.source) {
    case "files":
      return { source: "files", certFile: tls.certFile, keyFile: tls.keyFile };
    case "secret":
      return { source: "secret", namespace: tls.secretNamespace || stateNamespace, name: tls.secretName };
    case "csr":
      return {
        source: "csr",
        ipAddresses: [address],
        dnsNames: [],
        approve: tls.csrApprove,
        ...(tls.csrExpirationSeconds > 0 ? { expirationSeconds: tls.csrExpirationSeconds } : {}),
        store: { namespace: stateNamespace, name: tls.csrSecretName },
      };
  }
}
