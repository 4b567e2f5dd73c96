/**
 * The benchmarks' pod-timing watcher (`watchPodTimes` in support.ts) on a thread of its own: the
 * bench process also runs the simulated devices, and a watcher on their event loop saw a status
 * the API server had written 0.9 s late whenever a hundred gateways were busy applying their
 * first documents. Posts `"ready"` once the first list is in, then `{ pod, bound }` and
 * `{ pod, running }` the first time it sees each (epoch milliseconds with sub-millisecond
 * precision, comparable across threads); stops on `"stop"`.
 */
import { parentPort, workerData } from "node:worker_threads";
import pino from "pino";
import { createKubeClient, Informer, type Pod } from "../src/kube/index.ts";

export interface PodTimesWorkerData {
  readonly kubeconfigPath: string;
  readonly namespace: string;
}

export type PodTimesMessage = "ready" | { pod: string; bound?: number; running?: number };

const port = parentPort;
if (!port) throw new Error("pod-times.worker.ts runs as a worker thread");
const { kubeconfigPath, namespace } = workerData as PodTimesWorkerData;
const logger = pino({ level: "silent" });
const kube = createKubeClient({ kubeconfigPath, qps: 1000, burst: 2000, logger });
const informer = new Informer<Pod>({ client: kube, logger, path: `/api/v1/namespaces/${namespace}/pods` });
const bound = new Set<string>();
const running = new Set<string>();
const post = (message: PodTimesMessage) => port.postMessage(message);
const see = (pod: Pod) => {
  const at = performance.timeOrigin + performance.now();
  const name = pod.metadata?.name ?? "";
  if (!bound.has(name) && pod.spec?.nodeName) {
    bound.add(name);
    post({ pod: name, bound: at });
  }
  const ready = pod.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True");
  if (!running.has(name) && pod.status?.phase === "Running" && ready) {
    running.add(name);
    post({ pod: name, running: at });
  }
};
informer.onAdd(see);
informer.onUpdate(see);
const stop = new AbortController();
port.on("message", (message) => {
  if (message !== "stop") return;
  stop.abort();
  void kube.close().finally(() => port.close());
});
void informer.start(stop.signal);
await informer.ready;
post("ready");
