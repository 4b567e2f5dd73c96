/**
 * `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log from the provider's
 * {@link LogsCapability}, with the kubelet's query parameters and checks (pkg/kubelet/server
 * `getContainerLogs`, validation `ValidatePodLogOptions`): a value that does not parse is 400, one
 * that parses but is out of range is 422, an unknown pod or container 404.
 *
 * The body is streamed as the provider yields it, waiting for the client to take each chunk
 * (back-pressure), cut at `limitBytes`, and ended when the log ends or the client goes (the
 * provider's `signal` then aborts, so a follow never outlives its client). A `notice` (the device
 * is offline, the log is as cached) comes first, as a line of its own. What the provider or device
 * cannot do is a clear 4xx naming them, a device offline with nothing cached a 503: never a hang.
 */
import type { Request, Response } from "express";
import type { Pod } from "../kube/index.ts";
import { hasLogs, type LogOptions } from "../provider/types.ts";
import { nodeOf, providerErrorCode, sendStatus, within, type RouteContext } from "./routes.ts";

export type LogQuery = Omit<LogOptions, "signal">;

export type LogQueryResult =
  | { readonly ok: true; readonly query: LogQuery }
  | { readonly ok: false; readonly code: 400 | 422; readonly message: string };

const INTEGER = /^[+-]?\d+$/;

/** Go's RFC 3339 as metav1.Time reads it: a date, a time, optional fraction, `Z` or an offset. */
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/**
 * The kubelet's reading of the log query (PodLogOptions through the parameter codec): booleans
 * are false only when absent, `0` or `false`; integers are base 10; `tail` is the old name of
 * `tailLines` (`all` = no limit). `now` turns `sinceSeconds` into a time.
 */
export function parseLogQuery(params: URLSearchParams, now: Date): LogQueryResult {
  const bad = (message: string): LogQueryResult => ({ ok: false, code: 400, message });
  const invalid = (message: string): LogQueryResult => ({ ok: false, code: 422, message });
  const flag = (name: string) => {
    const v = params.get(name);
    return v !== null && v !== "0" && v.toLowerCase() !== "false";
  };
  const int = (name: string, value = params.get(name)): number | undefined | Error => {
    if (value === null || value === "") return undefined;
    if (!INTEGER.test(value)) return new Error(`${name}: ${JSON.stringify(value)} is not an integer`);
    const n = Number(value);
    return Number.isSafeInteger(n) ? n : new Error(`${name}: ${value} is out of range`);
  };
  const tail = params.get("tail");
  const tailLines = int(
    "tailLines",
    tail !== null && tail !== "" ? (tail === "all" ? null : tail) : undefined,
  );
  const sinceSeconds = int("sinceSeconds");
  const limitBytes = int("limitBytes");
  for (const v of [tailLines, sinceSeconds, limitBytes]) if (v instanceof Error) return bad(v.message);
  const sinceTimeText = params.get("sinceTime");
  let sinceTime: Date | undefined;
  if (sinceTimeText !== null && sinceTimeText !== "") {
    const d = new Date(sinceTimeText);
    if (!RFC3339.test(sinceTimeText) || Number.isNaN(d.getTime())) {
      return bad(`sinceTime: ${JSON.stringify(sinceTimeText)} is not an RFC 3339 time`);
    }
    sinceTime = d;
  }
  const n = (v: number | undefined | Error) => (typeof v === "number" ? v : undefined);
  const [tailN, sinceN, limitN] = [n(tailLines), n(sinceSeconds), n(limitBytes)];
  if (tailN !== undefined && tailN < 0) return invalid("tailLines: must be greater than or equal to 0");
  if (sinceN !== undefined && sinceN < 1) return invalid("sinceSeconds: must be greater than 0");
  if (limitN !== undefined && limitN < 1) return invalid("limitBytes: must be greater than 0");
  if (sinceN !== undefined && sinceTime) {
    return invalid("at most one of `sinceTime` or `sinceSeconds` may be specified");
  }
  const since = sinceN !== undefined ? new Date(now.getTime() - sinceN * 1000) : sinceTime;
  const query: LogQuery = {
    ...(tailN === undefined ? {} : { tailLines: tailN }),
    ...(since === undefined ? {} : { since }),
    ...(limitN === undefined ? {} : { limitBytes: limitN }),
    ...(flag("timestamps") ? { timestamps: true } : {}),
    ...(flag("follow") ? { follow: true } : {}),
    ...(flag("previous") ? { previous: true } : {}),
  };
  return { ok: true, query };
}

/** Whether the pod declares a container of that name (regular, init or ephemeral). */
export const hasContainer = (pod: Pod, name: string): boolean =>
  [
    ...(pod.spec?.containers ?? []),
    ...(pod.spec?.initContainers ?? []),
    ...(pod.spec?.ephemeralContainers ?? []),
  ].some((c) => c.name === name);

/** The pod of this node named so, or undefined (another node's pod is as unknown as a missing one). */
export function podOnNode(
  ctx: RouteContext,
  nodeName: string,
  namespace: string,
  name: string,
): Pod | undefined {
  const pod = ctx.backend.pod(namespace, name);
  return pod?.spec?.nodeName === nodeName ? pod : undefined;
}

export async function containerLogs(ctx: RouteContext, req: Request, res: Response): Promise<void> {
  const nodeName = nodeOf(res);
  const {
    namespace = "",
    pod: podName = "",
    container = "",
  } = req.params as Record<string, string | undefined>;
  const parsed = parseLogQuery(
    new URL(req.originalUrl, "https://kubelet").searchParams,
    new Date(ctx.clock.now()),
  );
  if (!parsed.ok) {
    sendStatus(res, parsed.code, parsed.message);
    return;
  }
  const pod = podOnNode(ctx, nodeName, namespace, podName);
  if (!pod) {
    sendStatus(res, 404, `pod "${namespace}/${podName}" does not exist on node ${nodeName}`);
    return;
  }
  if (!hasContainer(pod, container)) {
    sendStatus(res, 404, `container "${container}" not found in pod "${namespace}/${podName}"`);
    return;
  }
  const provider = ctx.backend.providerOf(nodeName);
  if (!provider) {
    sendStatus(res, 503, `node ${nodeName} is not served by this devicelet now (its shard moved); try again`);
    return;
  }
  if (!hasLogs(provider)) {
    sendStatus(
      res,
      400,
      `${provider.name} devices keep no container logs (pod ${namespace}/${podName} on node ${nodeName})`,
    );
    return;
  }
  const ref = { namespace, name: podName, uid: pod.metadata?.uid ?? "" };
  const gone = new AbortController();
  // 'close' on the response: the client went away, or the response ended; either way stop reading.
  res.once("close", () => gone.abort());
  let stream;
  try {
    stream = await within(ctx, `the log of ${namespace}/${podName}/${container}`, () =>
      provider.getContainerLogs(ref, container, { ...parsed.query, signal: gone.signal }),
    );
  } catch (err) {
    const code = providerErrorCode(err);
    if (code === 500)
      ctx.logger.error({ err, pod: `${namespace}/${podName}`, container }, "container logs failed");
    sendStatus(res, code, err instanceof Error ? err.message : String(err));
    return;
  }
  const sent = await streamLog(res, stream, {
    limitBytes: parsed.query.limitBytes,
    signal: gone.signal,
    logger: ctx.logger,
  });
  // Tests (and an operator chasing a stuck follow) see why each stream ended.
  ctx.logger.debug(
    { pod: `${namespace}/${podName}`, container, follow: parsed.query.follow === true, ...sent },
    "container log stream ended",
  );
}

/** Writes the notice and chunks, honouring back-pressure and `limitBytes`; ends the response. */
async function streamLog(
  res: Response,
  stream: { readonly chunks: AsyncIterable<string>; readonly notice?: string },
  o: { limitBytes: number | undefined; signal: AbortSignal; logger: RouteContext["logger"] },
): Promise<{ bytes: number; endedBy: "client gone" | "limitBytes" | "end of log" | "error" }> {
  res.status(200).type("text/plain");
  // kubectl -f shows nothing until the headers arrive: send them before the first line.
  res.flushHeaders();
  let left = o.limitBytes ?? Number.POSITIVE_INFINITY;
  /** Writes what fits; false once the limit is reached or the client is gone. */
  const write = async (text: string): Promise<boolean> => {
    let bytes = Buffer.from(text, "utf8");
    if (bytes.length > left) bytes = bytes.subarray(0, left);
    left -= bytes.length;
    if (bytes.length > 0 && !res.write(bytes)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          res.off("drain", done);
          o.signal.removeEventListener("abort", done);
          resolve();
        };
        res.once("drain", done);
        o.signal.addEventListener("abort", done, { once: true });
      });
    }
    return left > 0 && !o.signal.aborted;
  };
  const limit = left;
  let failed = false;
  let clientGone = false;
  try {
    let open = stream.notice === undefined ? true : await write(`${stream.notice}\n`);
    if (open) {
      for await (const chunk of stream.chunks) {
        open = await write(chunk);
        if (!open) break;
      }
    }
  } catch (err) {
    // Headers are out: all that is left is to end the body.
    failed = !o.signal.aborted;
    if (failed) o.logger.warn({ err }, "container log stream failed");
  } finally {
    // Read before end(): the response's own 'close' after it ends aborts the signal too.
    clientGone = o.signal.aborted;
    res.end();
  }
  const bytes = limit - left;
  if (failed) return { bytes, endedBy: "error" };
  if (clientGone) return { bytes, endedBy: "client gone" };
  return { bytes, endedBy: left > 0 ? "end of log" : "limitBytes" };
}
