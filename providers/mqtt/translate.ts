/**
 * Workload (what the engine asks for) → DesiredPod (what the desired document carries), and the
 * checks that keep one bad pod from poisoning its device's whole document: a pod that does not
 * validate on its own, or that carries Secret material where the {@link SecretGate} refuses it (a
 * plain or unverified broker connection, a device not trusted with Secrets;
 * docs/architecture.md, decision 8), is held back with a reason instead of being sent.
 *
 * The pod's `hash` in the document is the hash of what the device gets (everything of the
 * DesiredPod but `uid` and `hash`), not the engine's workload hash, which also covers the pod's
 * labels and annotations: those never reach the device, so changing them (a restart request, a
 * label edit) must not make the device re-create the pod's apps.
 *
 * A file goes by reference (`ref: { url, sha256, size }`) when `refOf` gives one (blobs.ts decides
 * which, and uploads them first); it keeps its `mode`. The reference is part of the hash, and the
 * same content always gets the same reference, so an unchanged pod keeps its hash.
 */
import { desiredContentHash, encodeMessage } from "../../src/protocol/codec.ts";
import type { DesiredApp, DesiredFile, DesiredPod } from "../../src/protocol/types.ts";
import type { AppFile, Workload } from "../../src/provider/types.ts";
import { canonicalJson, sha256Hex } from "../../src/base/canonical.ts";
import type { ReferenceOf } from "./blobs.ts";
import type { SecretGate } from "./secret-gate.ts";

/** The device-facing hash of a desired pod: equal hashes mean nothing to apply on the device. */
export const deviceHash = (pod: Omit<DesiredPod, "hash">): string => {
  const { uid: _uid, ...content } = pod;
  return sha256Hex(canonicalJson(content));
};

/** The pod as its device's document carries it; files `refOf` gives a reference go by reference. */
export const toDesiredPod = (w: Workload, refOf?: ReferenceOf): DesiredPod => {
  const pod = withoutHash(w, refOf ?? (() => undefined));
  return { ...pod, hash: deviceHash(pod) };
};

const toDesiredFile = (f: AppFile, refOf: ReferenceOf): DesiredFile => {
  const ref = refOf(f);
  const mode = f.mode === undefined ? {} : { mode: f.mode };
  return ref
    ? { path: f.path, ref: { url: ref.url, sha256: ref.sha256, size: ref.size }, ...mode }
    : { path: f.path, encoding: f.encoding, content: f.content, ...mode };
};

const withoutHash = (w: Workload, refOf: ReferenceOf): Omit<DesiredPod, "hash"> => ({
  uid: w.pod.uid,
  namespace: w.pod.namespace,
  name: w.pod.name,
  restartPolicy: w.restartPolicy,
  terminationGracePeriodSeconds: w.terminationGracePeriodSeconds,
  apps: w.apps.map((a): DesiredApp => ({
    name: a.name,
    image: a.image,
    command: [...a.command],
    args: [...a.args],
    env: { ...a.env },
    files: a.files.map((f) => toDesiredFile(f, refOf)),
    ...(a.ports.length === 0
      ? {}
      : {
          ports: a.ports.map((p) => ({
            ...(p.name === undefined ? {} : { name: p.name }),
            containerPort: p.containerPort,
            protocol: p.protocol,
          })),
        }),
    ...(Object.keys(a.resources.requests).length + Object.keys(a.resources.limits).length === 0
      ? {}
      : { resources: { requests: { ...a.resources.requests }, limits: { ...a.resources.limits } } }),
    // Only when the pod sets one: documents (and hashes) of other pods stay as version 1 had them.
    ...(a.securityContext === undefined ? {} : { securityContext: structuredClone(a.securityContext) }),
  })),
});

/** Whether the workload carries anything that came from a Secret. */
export const carriesSecrets = (w: Workload): boolean =>
  w.apps.some((a) => a.secretEnv.length > 0 || a.files.some((f) => f.secret));

/**
 * Why a pod cannot go into its device's document, or undefined when it can. Evaluated on every
 * change of the workload, including the first one after a restart for pods adopted from retained
 * documents: what an earlier run sent is judged again under today's config.
 */
export function holdBack(
  w: Workload,
  pod: DesiredPod,
  options: { secrets: Pick<SecretGate, "check"> },
): { reason: string; message: string } | undefined {
  if (carriesSecrets(w)) {
    const refused = options.secrets.check(w.deviceId);
    if (refused) return refused;
  }
  try {
    encodeMessage({
      protocol: 1,
      kind: "desired",
      deviceId: w.deviceId,
      epoch: "check",
      generation: 1,
      issuedAt: new Date(0).toISOString(),
      pods: [pod],
      tombstones: [],
      contentHash: desiredContentHash([pod], []),
    });
  } catch (err) {
    return {
      reason: "InvalidWorkload",
      message: `the device protocol cannot carry this pod: ${(err as Error).message}`,
    };
  }
  return undefined;
}
