/**
 * The start-up check that devicelet's state namespace exists. Without it, a typo in
 * `state.namespace` shows only later, as every state write failing with 404 while nodes look
 * healthy; with it, `devicelet run` refuses to start, naming the namespace and the key.
 *
 * Only a definite answer refuses: a 404 for that namespace. When the API server cannot
 * be asked (unreachable, slow, or the namespace read is forbidden to this identity), the check
 * logs a warning and lets the engine start: its own retries take over from there.
 *
 *   const namespace = stateNamespace(config);
 *   await checkStateNamespace({ kube, namespace, logger, signal }); // throws ConfigError
 */
import type { Logger } from "pino";
import { ConfigError, type DeviceletConfig } from "../config/index.ts";
import type { KubeClient } from "../kube/index.ts";

/** Where the state lives and which setting chose it (for messages). */
export interface StateNamespace {
  readonly name: string;
  /** `state.namespace`, `$POD_NAMESPACE` (state.namespace null) or the default. */
  readonly from: "state.namespace" | "POD_NAMESPACE" | "default";
}

/** The namespace of devicelet's state ConfigMaps: `state.namespace`, else $POD_NAMESPACE, else default. */
export const stateNamespace = (
  config: Pick<DeviceletConfig, "state">,
  env: NodeJS.ProcessEnv = process.env,
): StateNamespace => {
  if (config.state.namespace !== null) return { name: config.state.namespace, from: "state.namespace" };
  const fromEnv = env.POD_NAMESPACE;
  return fromEnv ? { name: fromEnv, from: "POD_NAMESPACE" } : { name: "default", from: "default" };
};

/** How long the check waits for the API server before letting the engine start anyway. */
const CHECK_TIMEOUT_MS = 10_000;

/**
 * Resolves when `namespace` exists or cannot be checked now (logged at warn).
 * @throws ConfigError (path `/state/namespace`) when the API server says it does not exist.
 */
export async function checkStateNamespace(o: {
  readonly kube: Pick<KubeClient, "getNamespace">;
  readonly namespace: StateNamespace;
  readonly logger: Logger;
  readonly signal: AbortSignal;
}): Promise<void> {
  const { name, from } = o.namespace;
  let found: boolean;
  try {
    // A GET of that one namespace: RBAC can grant it inside the state namespace alone (a Role
    // there), where a list would need every namespace's name.
    const namespace = await o.kube.getNamespace(name, {
      signal: AbortSignal.any([o.signal, AbortSignal.timeout(CHECK_TIMEOUT_MS)]),
    });
    found = namespace !== undefined;
  } catch (err) {
    if (o.signal.aborted) throw err;
    o.logger.warn(
      { err, namespace: name },
      "could not check that the state namespace exists; starting anyway",
    );
    return;
  }
  if (found) return;
  const chosenBy =
    from === "state.namespace"
      ? ""
      : from === "POD_NAMESPACE"
        ? ` (state.namespace is null, so $POD_NAMESPACE chose it)`
        : " (state.namespace is null and $POD_NAMESPACE is unset, so the default was used)";
  throw new ConfigError("(checked against the API server)", [
    {
      path: "/state/namespace",
      message: `namespace "${name}"${chosenBy} does not exist: devicelet keeps its state there; create it or set state.namespace to an existing one`,
    },
  ]);
}
