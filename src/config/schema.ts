/**
 * The JSON Schema of devicelet's core configuration and the typed object it validates into.
 *
 * The schema is the single source of truth for defaults: ajv fills them in (`useDefaults`), every
 * section object defaults to `{}` so its own defaults apply even when the section is left out, and
 * every object refuses keys it does not know (`additionalProperties: false`). `provider.config` is
 * a free object here; {@link parseConfig} swaps in the provider's own schema before validating.
 */

/** Regular expressions shared with provider schemas (Kubernetes naming and quantity rules). */
export const patterns = {
  /** A label or taint key: optional DNS-subdomain prefix and `/`, then a name of at most 63 chars. */
  qualifiedName:
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$",
  /** A label value: empty, or up to 63 alphanumerics, `-`, `_`, `.` starting and ending alphanumeric. */
  labelValue: "^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$",
  /** A resource quantity such as `4`, `500m`, `4Gi`, `1e3`. */
  quantity: "^[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$",
  /** A label key prefix: a DNS subdomain and `/`. */
  labelPrefix: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/$",
  /** A label key, or `<DNS subdomain>/*` for every key under a domain. */
  allowedLabelKey:
    "^(([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/\\*)$",
  /** A prefix of a node name (lower-case DNS subdomain characters). */
  namePrefix: "^([a-z0-9][-a-z0-9.]*)?$",
} as const;

/** pino's level names; `silent` turns logging off. */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Labels as a map: keys and values checked against the Kubernetes rules. */
export const labelMapSchema = {
  type: "object",
  default: {},
  propertyNames: { pattern: patterns.qualifiedName, maxLength: 317 },
  additionalProperties: { type: "string", pattern: patterns.labelValue },
} as const;

const integer = (def: number, minimum: number, maximum?: number) =>
  ({ type: "integer", default: def, minimum, ...(maximum === undefined ? {} : { maximum }) }) as const;

const section = <P extends Record<string, unknown>>(description: string, properties: P) =>
  ({ type: "object", description, default: {}, additionalProperties: false, properties }) as const;

/** An IP address, or "" for "choose for me" (the field's doc says what is chosen). */
const ipOrEmpty = { type: "string", default: "", if: { minLength: 1 }, then: { format: "ip" } } as const;
const dnsSubdomainOrEmpty = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$";
const dnsLabelOrEmpty = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$";

/**
 * JSON Schema (draft-07, as ajv 8 compiles by default) of the core configuration file. Uses the
 * custom formats `ip` and `cidr`, which {@link parseConfig} registers.
 */
export const coreConfigSchema = {
  $id: "https://devicelet.dev/schemas/config.json",
  title: "devicelet configuration",
  type: "object",
  additionalProperties: false,
  required: ["provider"],
  properties: {
    kubeconfig: {
      type: "string",
      minLength: 1,
      description:
        "Path to a kubeconfig; when absent, KUBECONFIG, then ~/.kube/config, then the in-cluster service account.",
    },
    nodes: section("How device nodes are named and marked.", {
      namePrefix: { type: "string", default: "", maxLength: 200, pattern: patterns.namePrefix },
      taintKey: { type: "string", default: "virtual-kubelet.io/provider", pattern: patterns.qualifiedName },
      extraLabels: labelMapSchema,
      deviceLabels: {
        type: "object",
        description: "Which of a device's own labels go on its node, and under which keys.",
        default: {},
        additionalProperties: false,
        properties: {
          prefix: {
            type: "string",
            default: "device.devicelet.dev/",
            maxLength: 254,
            pattern: patterns.labelPrefix,
          },
          allow: {
            type: "array",
            default: [],
            maxItems: 256,
            uniqueItems: true,
            items: { type: "string", maxLength: 317, pattern: patterns.allowedLabelKey },
          },
        },
      },
      addressRanges: {
        type: "array",
        description: "CIDRs every device IP (node addresses, pod IPs) must be in; empty allows any.",
        default: [],
        maxItems: 256,
        items: { type: "string", format: "cidr" },
      },
    }),
    api: section("Budgets and timeouts of requests to the API server.", {
      qps: { type: "number", default: 100, minimum: 1 },
      burst: integer(200, 1),
      heartbeatQps: { type: "number", default: 200, minimum: 1 },
      heartbeatBurst: integer(400, 1),
      eventQps: { type: "number", default: 50, minimum: 0.01 },
      eventBurst: integer(100, 1),
      requestTimeoutSeconds: integer(30, 1),
    }),
    lease: section("Node heartbeat Leases in kube-node-lease.", {
      durationSeconds: integer(40, 1),
      renewIntervalSeconds: integer(10, 1),
    }),
    nodeStatus: section("Node status writes.", {
      maxIntervalSeconds: integer(300, 1),
    }),
    pods: section("Pod reconcile and status.", {
      ipRange: { type: "string", default: "10.250.0.0/16", format: "cidr" },
      baseRetryDelayMs: integer(250, 1),
      maxRetryDelayMs: integer(30_000, 1),
      statusDebounceMs: integer(100, 0),
      firstStatusWaitMs: integer(1_000, 0),
      resyncIntervalMs: integer(300_000, 1_000),
      secretRefreshSeconds: integer(60, 1),
    }),
    kubelet: section("The kubelet API devicelet serves for its nodes (docs/kubelet-api.md).", {
      serve: { type: "boolean", default: true },
      address: ipOrEmpty,
      bindAddress: ipOrEmpty,
      port: integer(10250, 0, 65535),
      portCount: integer(1000, 1, 65535),
      clientCAFile: { type: "string", default: "" },
      tls: section("Where the serving certificate comes from.", {
        source: { type: "string", default: "csr", enum: ["csr", "secret", "files"] },
        certFile: { type: "string", default: "" },
        keyFile: { type: "string", default: "" },
        secretName: { type: "string", default: "", pattern: dnsSubdomainOrEmpty, maxLength: 253 },
        secretNamespace: { type: "string", default: "", pattern: dnsLabelOrEmpty, maxLength: 63 },
        csrApprove: { type: "boolean", default: false },
        csrExpirationSeconds: { type: "integer", default: 0, anyOf: [{ const: 0 }, { minimum: 600 }] },
        csrSecretName: {
          type: "string",
          default: "devicelet-kubelet-serving",
          pattern: dnsSubdomainOrEmpty,
          minLength: 1,
          maxLength: 253,
        },
      }),
      auth: section("Caches of authentication and authorization reviews.", {
        authenticationCacheTTLSeconds: integer(120, 0),
        authorizedCacheTTLSeconds: integer(300, 0),
        unauthorizedCacheTTLSeconds: integer(30, 0),
        cacheSize: integer(4096, 1),
      }),
    }),
    health: section("devicelet's own /healthz and /readyz, plain HTTP (docs/configuration.md).", {
      serve: { type: "boolean", default: true },
      bindAddress: { type: "string", default: "0.0.0.0", format: "ip" },
      port: integer(8081, 0, 65535),
    }),
    metrics: section("Prometheus metrics of devicelet itself, plain HTTP (docs/operations.md).", {
      serve: { type: "boolean", default: true },
      bindAddress: { type: "string", default: "0.0.0.0", format: "ip" },
      port: integer(8080, 0, 65535),
    }),
    leaderElection: section("One leader among replicas, on a Lease in the state namespace.", {
      enabled: { type: "boolean", default: false },
      leaseName: {
        type: "string",
        default: "devicelet",
        pattern: dnsSubdomainOrEmpty,
        minLength: 1,
        maxLength: 253,
      },
      identity: { type: "string", default: "", maxLength: 253 },
      leaseDurationSeconds: integer(15, 1),
      renewDeadlineSeconds: integer(10, 1),
      retryPeriodSeconds: integer(2, 1),
      releaseOnCancel: { type: "boolean", default: true },
    }),
    sharding: section("Split the devices between replicas: one engine per owned shard (src/shard).", {
      enabled: { type: "boolean", default: false },
      shards: integer(64, 1, 4096),
      leasePrefix: {
        type: "string",
        default: "devicelet",
        pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        minLength: 1,
        maxLength: 40,
      },
    }),
    log: section("Logging.", {
      level: { type: "string", default: "info", enum: LOG_LEVELS },
    }),
    provider: {
      type: "object",
      description: "Which provider bridges to the devices, and its own configuration.",
      additionalProperties: false,
      required: ["type"],
      properties: {
        type: { type: "string", minLength: 1 },
        config: { type: "object", default: {} },
      },
    },
    state: section("Where devicelet keeps the state it must never lose (generation high-water marks).", {
      namespace: {
        type: ["string", "null"],
        default: null,
        pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description: "Namespace of devicelet's state ConfigMaps; null means $POD_NAMESPACE, else default.",
      },
    }),
  },
} as const;

/** The validated, defaulted and deep-frozen configuration. */
export interface DeviceletConfig {
  /** Path to a kubeconfig file; undefined means KUBECONFIG, ~/.kube/config or in-cluster. */
  readonly kubeconfig?: string;
  readonly nodes: {
    /** Prepended to each device id to make its node name. */
    readonly namePrefix: string;
    /** Key of the NoSchedule taint put on every device node (value: the provider name). */
    readonly taintKey: string;
    /** Labels added to every device node. */
    readonly extraLabels: Readonly<Record<string, string>>;
    /**
     * A device's own labels reach its node only under `prefix` or when `allow` lists their key
     * (`<domain>/*` for a whole domain); bare keys are re-keyed under `prefix`, others dropped.
     * Kubernetes' and devicelet's own namespaces are never allowed (checked at load).
     */
    readonly deviceLabels: { readonly prefix: string; readonly allow: readonly string[] };
    /** CIDRs device IPs must be in (node addresses, pod IPs); empty: any valid IP. */
    readonly addressRanges: readonly string[];
  };
  /**
   * Client-side rate limits (token buckets): `qps`/`burst` for pod status, reads and Events;
   * `heartbeatQps`/`heartbeatBurst` for the heartbeat lane (Leases and node status) apart, so a
   * flood of pod work never delays a heartbeat. Events have a budget of their own inside the first
   * (`eventQps`/`eventBurst`, the kubelet's `eventRecordQPS`/`eventBurst`). Every request but a watch gives up after
   * `requestTimeoutSeconds` (heartbeat requests after `lease.renewIntervalSeconds`) and is retried.
   */
  readonly api: {
    readonly qps: number;
    readonly burst: number;
    readonly heartbeatQps: number;
    readonly heartbeatBurst: number;
    readonly eventQps: number;
    readonly eventBurst: number;
    readonly requestTimeoutSeconds: number;
  };
  readonly lease: { readonly durationSeconds: number; readonly renewIntervalSeconds: number };
  readonly nodeStatus: { readonly maxIntervalSeconds: number };
  readonly pods: {
    /** CIDR pod IPs come from when the device reports none. */
    readonly ipRange: string;
    readonly baseRetryDelayMs: number;
    readonly maxRetryDelayMs: number;
    readonly statusDebounceMs: number;
    /**
     * With a provider that pushes statuses: how long after a pod was handed to it its first
     * status may wait for the device's report (PodControllerConfig.firstStatusWaitMs).
     */
    readonly firstStatusWaitMs: number;
    /** Every managed pod is reconciled again about this often (jittered); cheap when nothing changed. */
    readonly resyncIntervalMs: number;
    /** A Secret a pod refers to is read again (GET) at most this long after its last read. */
    readonly secretRefreshSeconds: number;
  };
  /** The kubelet API (docs/kubelet-api.md); `address`/`bindAddress` "" as resolved by `src/kubelet`. */
  readonly kubelet: KubeletConfig;
  /**
   * `/healthz` and `/readyz` for the probes of devicelet's own pod, plain HTTP apart from the
   * kubelet API; on every address by default so the kubelet's probes reach it at the pod IP.
   * `port` 0: a port the operating system picks (tests).
   */
  readonly health: { readonly serve: boolean; readonly bindAddress: string; readonly port: number };
  /** `/metrics` (Prometheus text) on a plain port of its own; `port` 0 as for `health`. */
  readonly metrics: { readonly serve: boolean; readonly bindAddress: string; readonly port: number };
  /**
   * With `enabled`, replicas elect one leader on the Lease `leaseName` in the state namespace
   * (client-go's semantics and defaults); only the leader writes or talks to devices. `identity`
   * "" = $POD_NAME, else the host name and process id.
   */
  readonly leaderElection: {
    readonly enabled: boolean;
    readonly leaseName: string;
    readonly identity: string;
    readonly leaseDurationSeconds: number;
    readonly renewDeadlineSeconds: number;
    readonly retryPeriodSeconds: number;
    readonly releaseOnCancel: boolean;
  };
  /**
   * With `enabled`, replicas split the devices into `shards` shards (the same count on every
   * replica) on Leases named `<leasePrefix>-…` in the state namespace, and run one engine per shard
   * they own. Identity and Lease timings are `leaderElection`'s keys; the two are exclusive.
   */
  readonly sharding: { readonly enabled: boolean; readonly shards: number; readonly leasePrefix: string };
  readonly log: { readonly level: LogLevel };
  readonly provider: ProviderSection;
  readonly state: { readonly namespace: string | null };
}

/** The `kubelet` section; docs/configuration.md describes each key. */
export interface KubeletConfig {
  /** Run the kubelet API; when false, nodes still advertise `address` and `port`. */
  readonly serve: boolean;
  /** Advertised InternalIP of every node; "" = $DEVICELET_POD_IP, else 127.0.0.1. */
  readonly address: string;
  /** Where the servers listen; "" = the advertised address. */
  readonly bindAddress: string;
  /** First port of the range `port` .. `port + portCount - 1`, one per node; 0 = any free port. */
  readonly port: number;
  readonly portCount: number;
  /** CA that client certificates must chain to; "" = in-cluster service-account CA, else the kubeconfig's. */
  readonly clientCAFile: string;
  readonly tls: {
    readonly source: "csr" | "secret" | "files";
    readonly certFile: string;
    readonly keyFile: string;
    readonly secretName: string;
    /** "" = devicelet's state namespace. */
    readonly secretNamespace: string;
    readonly csrApprove: boolean;
    /** 0 = the signer's default. */
    readonly csrExpirationSeconds: number;
    readonly csrSecretName: string;
  };
  readonly auth: {
    readonly authenticationCacheTTLSeconds: number;
    readonly authorizedCacheTTLSeconds: number;
    readonly unauthorizedCacheTTLSeconds: number;
    readonly cacheSize: number;
  };
}

/** `provider`: `type` names a built-in (`mock`, `mqtt`, `iothub`) or a package to import. */
export interface ProviderSection<C = Readonly<Record<string, unknown>>> {
  readonly type: string;
  /** Validated against the provider's schema when one is known, defaults filled. */
  readonly config: C;
}
