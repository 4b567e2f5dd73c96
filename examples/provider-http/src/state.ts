/**
 * What the provider must not forget across a restart of devicelet, kept in `context.store` (the
 * API server): the pods it holds, tombstones included, what their devices last reported of them
 * (so a restart does not show a running pod as pending), and the devices it has met. It is one
 * store key holding one JSON document, written whole.
 *
 * Each store write is an API write, so writes are grouped: {@link GroupCommit.commit} resolves once
 * a write that started after the call has finished, and every call made while a write is in flight
 * (or in the same tick) shares the single next one: a burst of creates is one or two writes, not
 * one per pod.
 *
 *   const commit = new GroupCommit(() => store.set(STATE_KEY, JSON.stringify(snapshot())));
 *   held.set(uid, pod);
 *   await commit.commit();   // now createPod may resolve: the pod survives a restart
 */
import type { Workload } from "devicelet/provider";
import type { DeviceDescription, ReportedPod } from "./protocol.ts";

/** The store key. Prefixed with the provider's name: the store is shared with devicelet's own keys. */
export const STATE_KEY = "http-example.state";

/** A pod the provider holds, from createPod until the device confirmed it stopped it. */
export interface HeldPod {
  /** The latest workload; an offline device gets only this one when it is back. */
  workload: Workload;
  /** Set once the device got the pod in a sync response: from then on, only it can say it stopped. */
  delivered: boolean;
  /** Set by deletePod: kept until the device reports it no longer runs the pod. */
  tombstone?: { gracePeriodSeconds: number };
  /** What the device last said of the pod; absent before its first report and once it stopped. */
  report?: ReportedPod;
}

export interface KnownDevice {
  readonly id: string;
  readonly description: DeviceDescription;
}

export interface PersistedState {
  readonly version: 1;
  readonly pods: readonly HeldPod[];
  readonly devices: readonly KnownDevice[];
}

export const parseState = (text: string | undefined): PersistedState => {
  if (text === undefined) return { version: 1, pods: [], devices: [] };
  const state = JSON.parse(text) as { version?: unknown };
  if (state.version !== 1) throw new Error(`${STATE_KEY}: unknown state version ${String(state.version)}`);
  return state as PersistedState;
};

export class GroupCommit {
  readonly #write: () => Promise<void>;
  #inFlight: Promise<void> = Promise.resolve();
  #next?: Promise<void>;

  /** `write` stores a snapshot taken when it is called, so it includes every change made before. */
  constructor(write: () => Promise<void>) {
    this.#write = write;
  }

  /** Resolves once everything changed before this call is stored; rejects if that write failed. */
  commit(): Promise<void> {
    this.#next ??= this.#inFlight
      .catch(() => undefined)
      .then(() => {
        this.#next = undefined;
        this.#inFlight = this.#write();
        return this.#inFlight;
      });
    return this.#next;
  }
}
