import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { LogRing } from "./log-ring.ts";
import { resolveUnder, writeAppFiles } from "./pod-files.ts";

describe("resolveUnder", () => {
  it("maps absolute spec paths under the root", () => {
    expect(resolveUnder("/w/p/app", "/etc/app/config.json")).toBe("/w/p/app/etc/app/config.json");
    expect(resolveUnder("/w/p/app", "relative/x")).toBe("/w/p/app/relative/x");
  });

  it("never leaves the root, whatever the path", () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom("..", ".", "a", "/", "b/..", "\\", "//"), { maxLength: 12 }),
        (parts) => {
          const spec = parts.join("/");
          try {
            const resolved = resolveUnder("/w/p/app", spec);
            expect(resolved.startsWith("/w/p/app/")).toBe(true);
          } catch (err) {
            expect((err as Error).message).toMatch(/not a file under/);
          }
        },
      ),
    );
  });
});

describe("writeAppFiles", () => {
  it("writes inline files with their mode and checks referenced ones", async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), "devicelet-files-"));
    const blob = Buffer.from("model-bytes");
    const sha256 = createHash("sha256").update(blob).digest("hex");
    await writeAppFiles(
      root,
      [
        { path: "/etc/a.txt", encoding: "utf8", content: "A", mode: 0o600 },
        { path: "/bin/b", encoding: "base64", content: Buffer.from("B").toString("base64") },
        { path: "/opt/m.bin", ref: { url: "https://blobs.example/m", sha256, size: blob.length } },
      ],
      () => Promise.resolve(blob),
    );
    expect(readFileSync(path.join(root, "etc/a.txt"), "utf8")).toBe("A");
    expect(statSync(path.join(root, "etc/a.txt")).mode & 0o777).toBe(0o600);
    expect(readFileSync(path.join(root, "bin/b"), "utf8")).toBe("B");
    expect(readFileSync(path.join(root, "opt/m.bin"))).toEqual(blob);
    await expect(
      writeAppFiles(
        root,
        [{ path: "/opt/bad", ref: { url: "https://x.example/y", sha256, size: blob.length } }],
        () => Promise.resolve(Buffer.from("tampered!!!")),
      ),
    ).rejects.toThrow(/expected/);
  });
});

describe("LogRing", () => {
  it("keeps at most maxBytes, dropping the oldest and any partial first line", () => {
    const ring = new LogRing(10);
    ring.append(Buffer.from("line-1\nline-2\n"));
    ring.append(Buffer.from("line-3\nline-4\n"));
    expect(ring.bytes).toBe(10);
    expect(ring.text()).toBe("line-4\n");
    const roomy = new LogRing(1024);
    roomy.append(Buffer.from("a\nb\nc\n"));
    expect(roomy.text(2)).toBe("b\nc\n");
  });
});
