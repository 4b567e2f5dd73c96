/**
 * Just enough ASN.1 DER (ITU-T X.690) to write a PKCS#10 certificate request (`csr.ts`): each
 * function returns the complete encoding of one value, tag and length included, so structures are
 * built by nesting calls. Only definite lengths, as DER requires (X.690 §10.1).
 *
 *   const name = sequence(set(sequence(oid("2.5.4.3"), utf8String("system:node:a"))));
 */

/** Tag, length (short form below 128 bytes, long form above: X.690 §8.1.3) and contents. */
export function tlv(tag: number, contents: Uint8Array): Buffer {
  const n = contents.length;
  let length: number[];
  if (n < 0x80) {
    length = [n];
  } else {
    const bytes: number[] = [];
    for (let rest = n; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest & 0xff);
    length = [0x80 | bytes.length, ...bytes];
  }
  return Buffer.concat([Buffer.from([tag, ...length]), contents]);
}

export const sequence = (...items: Uint8Array[]): Buffer => tlv(0x30, Buffer.concat(items));
export const set = (...items: Uint8Array[]): Buffer => tlv(0x31, Buffer.concat(items));
export const octetString = (bytes: Uint8Array): Buffer => tlv(0x04, bytes);
export const utf8String = (text: string): Buffer => tlv(0x0c, Buffer.from(text, "utf8"));
/** A BIT STRING of whole bytes: the leading 0 says no bits of the last byte are unused (§8.6.2). */
export const bitString = (bytes: Uint8Array): Buffer => tlv(0x03, Buffer.concat([Buffer.from([0]), bytes]));

/** A context-specific tag: `[n]` constructed (wrapping other values) or primitive (IMPLICIT bytes). */
export const contextTag = (n: number, contents: Uint8Array, constructed: boolean): Buffer =>
  tlv((constructed ? 0xa0 : 0x80) | n, contents);

/** A non-negative INTEGER small enough for a JavaScript number (versions, counters). */
export function integer(value: number): Buffer {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`integer ${value} not supported`);
  const bytes: number[] = [];
  for (let rest = value; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest & 0xff);
  // Two's complement: a leading byte with the high bit set needs a 0 in front (§8.3.2).
  if (bytes.length === 0 || (bytes[0] ?? 0) & 0x80) bytes.unshift(0);
  return tlv(0x02, Buffer.from(bytes));
}

/** An OBJECT IDENTIFIER from its dotted form: first two arcs as 40·a + b, each arc base 128 (§8.19). */
export function oid(dotted: string): Buffer {
  const arcs = dotted.split(".").map((a) => {
    if (!/^\d+$/.test(a)) throw new SyntaxError(`bad object identifier ${dotted}`);
    return Number(a);
  });
  const [first = 0, second = 0, ...rest] = arcs;
  if (arcs.length < 2 || first > 2) throw new SyntaxError(`bad object identifier ${dotted}`);
  const out: number[] = [];
  for (const arc of [first * 40 + second, ...rest]) {
    const group: number[] = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) group.unshift((v & 0x7f) | 0x80);
    out.push(...group);
  }
  return tlv(0x06, Buffer.from(out));
}
