/** The kubelet's streaming timeouts (KubeletConfiguration streamingConnectionIdleTimeout etc.). */
export interface StreamTimeouts {
  /** A connection with no frame either way for this long is closed. The kubelet's default: 4 h. */
  readonly idleTimeoutMs: number;
  /** The client must open every stream it asked for within this. The kubelet's default: 30 s. */
  readonly streamCreationTimeoutMs: number;
}

export const DEFAULT_STREAM_TIMEOUTS: StreamTimeouts = {
  idleTimeoutMs: 4 * 60 * 60 * 1000,
  streamCreationTimeoutMs: 30 * 1000,
};
