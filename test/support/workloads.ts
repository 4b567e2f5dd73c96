/** Manifests the integration tests apply: pods and Deployments that target one test's device nodes. */

const tolerations = `
      tolerations:
        - { key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }`;

export function deployment(options: {
  namespace: string;
  name: string;
  replicas: number;
  testId: string;
  image?: string;
}) {
  return `apiVersion: apps/v1
kind: Deployment
metadata: { name: ${options.name}, namespace: ${options.namespace} }
spec:
  replicas: ${options.replicas}
  selector: { matchLabels: { app: ${options.name} } }
  template:
    metadata: { labels: { app: ${options.name} } }
    spec:
      nodeSelector: { devicelet.dev/test: ${options.testId} }${tolerations}
      terminationGracePeriodSeconds: 5
      containers:
        - name: app
          image: ${options.image ?? "example/sensor:1.0"}
          command: [/bin/sensor]
          args: [--interval, "5"]
`;
}

/** A bare pod on the test's nodes; `spec` is extra YAML indented 2 under spec (containers must be given). */
export function pod(options: {
  namespace: string;
  name: string;
  testId: string;
  spec: string;
  node?: string;
}) {
  const selector = options.node
    ? `{ kubernetes.io/hostname: ${options.node} }`
    : `{ devicelet.dev/test: ${options.testId} }`;
  return `apiVersion: v1
kind: Pod
metadata: { name: ${options.name}, namespace: ${options.namespace} }
spec:
  nodeSelector: ${selector}
  tolerations:
    - { key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }
  terminationGracePeriodSeconds: 30
${options.spec}`;
}

export interface PodJson {
  metadata: { name: string; uid: string; deletionTimestamp?: string };
  spec: { nodeName?: string };
  status: {
    phase?: string;
    reason?: string;
    message?: string;
    podIP?: string;
    conditions?: { type: string; status: string; reason?: string; lastTransitionTime?: string }[];
    containerStatuses?: {
      name: string;
      ready: boolean;
      restartCount: number;
      state: {
        waiting?: { reason: string; message?: string };
        running?: { startedAt: string };
        terminated?: { exitCode: number };
      };
    }[];
  };
}

export const condition = (pod: PodJson, type: string) => pod.status.conditions?.find((c) => c.type === type);

/** Running, Ready=True and a pod IP: what tools written for kubelets call ready. */
export const isReady = (pod: PodJson) =>
  pod.status.phase === "Running" && condition(pod, "Ready")?.status === "True" && Boolean(pod.status.podIP);
