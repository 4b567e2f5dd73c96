/**
 * SPDY/3.1 framing (draft-mbelshe-httpbis-spdy-00 as amended by SPDY/3.1): the frames a kubelet
 * exchanges with client-go's spdystream, encoded and decoded by hand.
 *
 * The `spdy-transport` package was the first choice but cannot serve this peer: its parser rejects
 * a SYN_STREAM without `:method` and `:path`, and client-go's streams carry only `streamtype`,
 * `port` and `requestid`. Only its copy of the SPDY/3 header dictionary (§ 2.6.10.1) is used here.
 *
 * Header blocks (§ 2.6.10) are zlib streams with that dictionary, one compression context per
 * direction for the whole connection. Received blocks go through one long-lived inflate stream.
 * Sent blocks are written as zlib "stored" (uncompressed) blocks, each followed by the empty block a
 * sync flush writes: valid for any inflater sharing a context, deterministic and synchronous; the
 * server only ever sends SYN_REPLY with no headers, so compressing would gain nothing.
 */

import zlib from "node:zlib";

export const SPDY_VERSION = 3;

export const FrameType = {
  SynStream: 1,
  SynReply: 2,
  RstStream: 3,
  Settings: 4,
  Ping: 6,
  GoAway: 7,
  Headers: 8,
  WindowUpdate: 9,
} as const;

export const Flag = { Fin: 0x01, Unidirectional: 0x02 } as const;

/** RST_STREAM status codes (§ 2.6.3). */
export const RstStatus = {
  ProtocolError: 1,
  InvalidStream: 2,
  RefusedStream: 3,
  Cancel: 5,
  InternalError: 6,
  FlowControlError: 7,
  StreamInUse: 8,
  StreamAlreadyClosed: 9,
} as const;

/** SETTINGS id for the initial per-stream window (§ 2.6.4). */
export const SETTINGS_INITIAL_WINDOW_SIZE = 7;
/** The window each stream and the session start with (SPDY/3.1 § 2.6.8). */
export const DEFAULT_WINDOW = 64 * 1024;
/** Largest frame payload accepted; client-go writes DATA frames of at most 32 KiB. */
export const MAX_FRAME_PAYLOAD = 1 << 20;
/** Largest inflated header block accepted. */
const MAX_HEADER_BLOCK = 64 * 1024;

/**
 * SPDY/3 header names and values the compression dictionary holds, each written with a 4-byte
 * big-endian length (draft-mbelshe-httpbis-spdy-00, "Compression"), followed by a run of raw text.
 */
const DICTIONARY_WORDS = [
  "options",
  "head",
  "post",
  "put",
  "delete",
  "trace",
  "accept",
  "accept-charset",
  "accept-encoding",
  "accept-language",
  "accept-ranges",
  "age",
  "allow",
  "authorization",
  "cache-control",
  "connection",
  "content-base",
  "content-encoding",
  "content-language",
  "content-length",
  "content-location",
  "content-md5",
  "content-range",
  "content-type",
  "date",
  "etag",
  "expect",
  "expires",
  "from",
  "host",
  "if-match",
  "if-modified-since",
  "if-none-match",
  "if-range",
  "if-unmodified-since",
  "last-modified",
  "location",
  "max-forwards",
  "pragma",
  "proxy-authenticate",
  "proxy-authorization",
  "range",
  "referer",
  "retry-after",
  "server",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "user-agent",
  "vary",
  "via",
  "warning",
  "www-authenticate",
  "method",
  "get",
  "status",
  "200 OK",
  "version",
  "HTTP/1.1",
  "url",
  "public",
  "set-cookie",
  "keep-alive",
  "origin",
];
const DICTIONARY_TAIL =
  "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505" +
  "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request" +
  "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented" +
  "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 " +
  "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif," +
  "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=" +
  "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/** The SPDY/3 header compression dictionary (1,423 bytes). */
export const DICTIONARY: Buffer = Buffer.concat([
  ...DICTIONARY_WORDS.map((word) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(word.length);
    return Buffer.concat([length, Buffer.from(word, "latin1")]);
  }),
  Buffer.from(DICTIONARY_TAIL, "latin1"),
]);

export type Frame =
  | { readonly kind: "data"; readonly streamId: number; readonly flags: number; readonly data: Buffer }
  | {
      readonly kind: "control";
      readonly type: number;
      readonly flags: number;
      readonly payload: Buffer;
    };

/** Splits a byte stream into frames; `push` returns every frame completed so far. */
export class FrameReader {
  #buffer: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    const frames: Frame[] = [];
    while (this.#buffer.length >= 8) {
      const length = this.#buffer.readUIntBE(5, 3);
      if (length > MAX_FRAME_PAYLOAD) throw new Error(`SPDY frame of ${length} bytes is too large`);
      if (this.#buffer.length < 8 + length) break;
      const first = this.#buffer.readUInt32BE(0);
      const flags = this.#buffer.readUInt8(4);
      const payload = this.#buffer.subarray(8, 8 + length);
      if ((first & 0x80000000) !== 0) {
        const version = (first >>> 16) & 0x7fff;
        if (version !== SPDY_VERSION) throw new Error(`unsupported SPDY version ${version}`);
        frames.push({ kind: "control", type: first & 0xffff, flags, payload });
      } else {
        frames.push({ kind: "data", streamId: first & 0x7fffffff, flags, data: payload });
      }
      this.#buffer = this.#buffer.subarray(8 + length);
    }
    // Do not keep a large buffer alive through a small remainder.
    if (this.#buffer.length > 0 && this.#buffer.byteOffset > 0) this.#buffer = Buffer.from(this.#buffer);
    return frames;
  }
}

function frameHeader(first: number, flags: number, length: number): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt32BE(first >>> 0, 0);
  header.writeUInt8(flags, 4);
  header.writeUIntBE(length, 5, 3);
  return header;
}

export function controlFrame(type: number, flags: number, payload: Buffer): Buffer {
  return Buffer.concat([
    frameHeader((0x8000 | SPDY_VERSION) * 0x10000 + type, flags, payload.length),
    payload,
  ]);
}

export function dataFrame(streamId: number, flags: number, data: Uint8Array): Buffer {
  return Buffer.concat([frameHeader(streamId & 0x7fffffff, flags, data.length), data]);
}

const u32 = (...values: number[]) => {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeUInt32BE(v >>> 0, 4 * i));
  return b;
};

export const rstStreamFrame = (streamId: number, status: number) =>
  controlFrame(FrameType.RstStream, 0, u32(streamId & 0x7fffffff, status));
export const pingFrame = (id: number) => controlFrame(FrameType.Ping, 0, u32(id));
export const goAwayFrame = (lastGoodStreamId: number, status = 0) =>
  controlFrame(FrameType.GoAway, 0, u32(lastGoodStreamId & 0x7fffffff, status));
export const windowUpdateFrame = (streamId: number, delta: number) =>
  controlFrame(FrameType.WindowUpdate, 0, u32(streamId & 0x7fffffff, delta & 0x7fffffff));
export const settingsFrame = (settings: readonly { id: number; value: number }[]) =>
  controlFrame(
    FrameType.Settings,
    0,
    u32(settings.length, ...settings.flatMap((s) => [s.id & 0xffffff, s.value])),
  );

/** Serialises a header block (§ 2.6.10): names lowercase, several values joined by NUL. */
export function encodeHeaderBlock(headers: ReadonlyMap<string, string>): Buffer {
  const parts: Buffer[] = [u32(headers.size)];
  for (const [name, value] of headers) {
    const n = Buffer.from(name.toLowerCase());
    const v = Buffer.from(value);
    parts.push(u32(n.length), n, u32(v.length), v);
  }
  return Buffer.concat(parts);
}

/** Parses an inflated header block; names are lowercased, repeated values NUL-joined. */
export function decodeHeaderBlock(block: Buffer): Map<string, string> {
  const headers = new Map<string, string>();
  let offset = 0;
  const read = (): Buffer => {
    if (offset + 4 > block.length) throw new Error("truncated SPDY header block");
    const length = block.readUInt32BE(offset);
    offset += 4;
    if (offset + length > block.length) throw new Error("truncated SPDY header block");
    const value = block.subarray(offset, offset + length);
    offset += length;
    return value;
  };
  if (block.length < 4) throw new Error("truncated SPDY header block");
  const count = block.readUInt32BE(0);
  offset = 4;
  for (let i = 0; i < count; i++) {
    const name = read().toString("latin1").toLowerCase();
    const value = read().toString("latin1");
    const previous = headers.get(name);
    headers.set(name, previous === undefined ? value : `${previous}\0${value}`);
  }
  return headers;
}

/**
 * The sending side's zlib context: a zlib header naming the dictionary once, then each block as
 * non-final stored blocks, which end byte-aligned, so every frame's compressed block stands whole.
 */
export class HeaderDeflater {
  #started = false;

  compress(block: Buffer): Buffer {
    const parts: Buffer[] = [];
    if (!this.#started) {
      this.#started = true;
      // CMF 0x78 (deflate, 32 KiB window); FLG with FDICT set, check bits so that CMF*256+FLG is a
      // multiple of 31 (RFC 1950 § 2.2); then the dictionary's Adler-32.
      const flg = 0x20 | (31 - ((0x78 * 256 + 0x20) % 31));
      parts.push(Buffer.from([0x78, flg]), u32(adler32(DICTIONARY)));
    }
    for (let offset = 0; offset < block.length; offset += 0xffff) {
      parts.push(storedBlock(block.subarray(offset, offset + 0xffff)));
    }
    // An empty stored block is what Z_SYNC_FLUSH ends with; Go's inflater hands out a block's
    // bytes only when it reaches it (compress/flate copies stored data into its window and
    // flushes the window at the next block), so without it the peer would wait for the next frame.
    parts.push(storedBlock(Buffer.alloc(0)));
    return Buffer.concat(parts);
  }
}

/** A non-final stored deflate block (RFC 1951 § 3.2.4); starts and ends byte-aligned. */
function storedBlock(data: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(0, 0); // BFINAL 0, BTYPE 00, then padding to the byte boundary
  head.writeUInt16LE(data.length, 1);
  head.writeUInt16LE(~data.length & 0xffff, 3);
  return Buffer.concat([head, data]);
}

export function adler32(data: Uint8Array): number {
  let a = 1;
  let b = 0;
  for (const byte of data) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  return ((b << 16) | a) >>> 0;
}

/**
 * The receiving side's zlib context: one inflate stream for the connection. Blocks are inflated
 * one at a time, in frame order (callers await each before the next).
 */
export class HeaderInflater {
  readonly #inflate = zlib.createInflate({ dictionary: DICTIONARY });
  #collected: Buffer[] = [];
  #collectedSize = 0;
  #error: Error | undefined;

  constructor() {
    this.#inflate.on("data", (chunk: Buffer) => {
      this.#collected.push(chunk);
      this.#collectedSize += chunk.length;
    });
    this.#inflate.on("error", (err: Error) => (this.#error = err));
  }

  #check(): void {
    if (this.#error !== undefined) throw this.#error;
  }

  async inflate(block: Buffer): Promise<Buffer> {
    this.#check();
    this.#inflate.write(block);
    await new Promise<void>((resolve) => this.#inflate.flush(zlib.constants.Z_SYNC_FLUSH, resolve));
    // Output is pushed before the flush callback runs; a turn of the event loop lets any 'data'
    // event that readable-stream deferred to the next tick arrive too.
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.#check();
    const out = Buffer.concat(this.#collected);
    const size = this.#collectedSize;
    this.#collected = [];
    this.#collectedSize = 0;
    if (size > MAX_HEADER_BLOCK) throw new Error("SPDY header block too large");
    return out;
  }

  close(): void {
    this.#inflate.destroy();
  }
}
