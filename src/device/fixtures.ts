/**
 * Valid protocol documents for tests that play devicelet's part against a device (unit tests here,
 * the agent and simulator integration tests, benchmarks): pods with their workload hash, desired
 * documents with their content hash, commands with an expiry.
 *
 *   const pod = desiredPod({ uid: "p1", apps: [{ name: "main", command: ["node", "-e", "..."] }] });
 *   const doc = desiredDocument({ deviceId: "gw-1", generation: 1, pods: [pod] });
 *   client.publish(topics.desired("gw-1"), encodeMessage(doc), { qos: 1, retain: true });
 */
import { desiredContentHash } from "../protocol/codec.ts";
import type {
  CommandMessage,
  DesiredApp,
  DesiredDocument,
  DesiredPod,
  Tombstone,
} from "../protocol/types.ts";
import { canonicalJson, sha256Hex } from "../base/canonical.ts";

export type AppFixture = Partial<DesiredApp> & { readonly name: string };

export function desiredPod(o: {
  uid: string;
  name?: string;
  namespace?: string;
  restartPolicy?: DesiredPod["restartPolicy"];
  terminationGracePeriodSeconds?: number;
  apps?: readonly AppFixture[];
}): DesiredPod {
  const apps: DesiredApp[] = (o.apps ?? [{ name: "main" }]).map((a) => ({
    image: `example.com/${a.name}:1`,
    command: [],
    args: [],
    env: {},
    files: [],
    ...a,
  }));
  const body = {
    uid: o.uid,
    namespace: o.namespace ?? "default",
    name: o.name ?? `pod-${o.uid.toLowerCase()}`,
    restartPolicy: o.restartPolicy ?? "Always",
    terminationGracePeriodSeconds: o.terminationGracePeriodSeconds ?? 30,
    apps,
  };
  return { ...body, hash: sha256Hex(canonicalJson(body)) };
}

export function tombstone(pod: DesiredPod, gracePeriodSeconds = 0): Tombstone {
  return { uid: pod.uid, namespace: pod.namespace, name: pod.name, deleted: true, gracePeriodSeconds };
}

export function desiredDocument(o: {
  deviceId: string;
  generation: number;
  epoch?: string;
  pods?: readonly DesiredPod[];
  tombstones?: readonly Tombstone[];
}): DesiredDocument {
  const pods = o.pods ?? [];
  const tombstones = o.tombstones ?? [];
  return {
    protocol: 1,
    kind: "desired",
    deviceId: o.deviceId,
    epoch: o.epoch ?? "epoch-1",
    generation: o.generation,
    issuedAt: new Date().toISOString(),
    pods,
    tombstones,
    contentHash: desiredContentHash(pods, tombstones),
  };
}

export function command(o: {
  deviceId: string;
  commandId: string;
  command: CommandMessage["command"];
  podUid?: string;
  app?: string;
  args?: readonly string[];
  /** Default 60 s from now; negative for an already expired command. */
  ttlMs?: number;
}): CommandMessage {
  const now = Date.now();
  return {
    protocol: 1,
    kind: "command",
    deviceId: o.deviceId,
    commandId: o.commandId,
    command: o.command,
    ...(o.podUid === undefined ? {} : { podUid: o.podUid }),
    ...(o.app === undefined ? {} : { app: o.app }),
    ...(o.args === undefined ? {} : { args: o.args }),
    issuedAt: new Date(now).toISOString(),
    expiresAt: new Date(now + (o.ttlMs ?? 60_000)).toISOString(),
  };
}
