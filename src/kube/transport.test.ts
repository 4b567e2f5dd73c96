import { describe, expect, it } from "vitest";
import { seededRandom } from "../../test/support/seeded-random.ts";
import { LineSplitter } from "./transport.ts";

/** What the splitter must give for a whole stream: its lines that are not blank. */
const linesOf = (text: string) => text.split("\n").filter((line) => line.trim() !== "");

/** Everything `chunks` complete, through one splitter. */
function split(chunks: readonly Uint8Array[]): string[] {
  const splitter = new LineSplitter();
  return chunks.flatMap((chunk) => splitter.push(chunk));
}

const utf8 = (text: string) => new TextEncoder().encode(text);

describe("LineSplitter", () => {
  it("gives each line of a watch stream once, whatever the chunks, characters cut in two included", () => {
    // Two-, three- and four-byte characters, which a chunk may end in the middle of.
    const pieces = ['{"type":"ADDED","object":{"n":"é"}}', "\n", "\r\n", "  ", "{}", '"x"', "ü€", "𝄞"];
    for (let seed = 1; seed <= 2_000; seed++) {
      const random = seededRandom(seed);
      let text = "";
      for (let i = Math.floor(random() * 12); i > 0; i--)
        text += pieces[Math.floor(random() * pieces.length)] ?? "";
      const bytes = utf8(text);
      // Cut the bytes into chunks at random places, empty chunks included, each a view into a
      // larger buffer as a stream's chunks may be.
      const chunks: Uint8Array[] = [];
      let at = 0;
      while (at < bytes.length) {
        const size = Math.floor(random() * 8);
        const backing = new Uint8Array(size + 4);
        backing.set(bytes.subarray(at, at + size), 2);
        chunks.push(backing.subarray(2, 2 + Math.min(size, bytes.length - at)));
        at += size;
      }
      // A line not ended by a newline is not complete yet: only what the last newline ends counts.
      const complete = text.slice(0, text.lastIndexOf("\n") + 1);
      expect(split(chunks), `seed ${seed}`).toEqual(linesOf(complete));
    }
  });

  it("keeps a line that spans chunks until its newline comes", () => {
    const splitter = new LineSplitter();
    expect(splitter.push(utf8('{"type":'))).toEqual([]);
    expect(splitter.push(utf8('"ADDED"'))).toEqual([]);
    expect(splitter.push(utf8('}\n{"a"'))).toEqual(['{"type":"ADDED"}']);
    expect(splitter.push(utf8(":1}\n \r\n\n"))).toEqual(['{"a":1}']);
    expect(splitter.push(utf8(""))).toEqual([]);
  });
});
