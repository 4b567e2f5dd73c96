/**
 * `src/workload`: pod spec → transport-neutral {@link Workload}, as pure functions.
 *
 * ```ts
 * const refused = checkSupported(pod, provider.supports, provider.name);
 * if (refused) return failPod(refused.message);                  // phase Failed, reason Unsupported
 * const result = translatePod(pod, { deviceId, nodeName, lookups: cache, podIP, hostIP });
 * for (const e of result.events) recorder.record(pod, e);
 * if (result.kind === "configError") return pending("CreateContainerConfigError", result.message);
 * if (result.workload.hash !== provided?.hash) await provider.createPod(result.workload);
 * // requeue the pod when any of referencedObjects(pod) appears or changes
 * ```
 */
export { canonicalJson, sha256Hex } from "../base/canonical.ts";
export { checkSupported, requiredFeatures, unsupportedFields } from "./features.ts";
export type { FeatureUse, UnsupportedField } from "./features.ts";
export { EventReason } from "./resolver.ts";
export type { Model, Plain } from "./shape.ts";
export type { ObjectLookups, PodEvent } from "./resolver.ts";
export { referencedObjects, translatePod, workloadHash } from "./translate.ts";
export type { FrozenEnv, TranslateOptions, TranslateResult } from "./translate.ts";
