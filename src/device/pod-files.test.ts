import { createHash } from "node:crypto";
import { once } from "node:events";
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { LogRing } from "./log-ring.ts";
import { fetchBytes, resolveUnder, writeAppFiles } from "./pod-files.ts";

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
      { fetcher: () => Promise.resolve(blob) },
    );
    expect(readFileSync(path.join(root, "etc/a.txt"), "utf8")).toBe("A");
    expect(statSync(path.join(root, "etc/a.txt")).mode & 0o777).toBe(0o600);
    expect(readFileSync(path.join(root, "bin/b"), "utf8")).toBe("B");
    expect(readFileSync(path.join(root, "opt/m.bin"))).toEqual(blob);
    await expect(
      writeAppFiles(
        root,
        [{ path: "/opt/bad", ref: { url: "https://x.example/y", sha256, size: blob.length } }],
        { fetcher: () => Promise.resolve(Buffer.from("tampered!!!")) },
      ),
    ).rejects.toThrow(/expected/);
  });
});

describe("file references in error messages (they become the app's status)", () => {
  const TOKEN = "X-Amz-Signature=c2VjcmV0LXNpZ25hdHVyZQ";

  it("the default fetcher names scheme, host and path, never the query or fragment", async () => {
    const server: Server = createServer((_req, res) => res.writeHead(403).end());
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    try {
      const failure = fetchBytes(`http://127.0.0.1:${port}/blobs/m.bin?${TOKEN}#part`, 10);
      await expect(failure).rejects.toThrow(`GET http://127.0.0.1:${port}/blobs/m.bin: HTTP 403`);
      await expect(failure).rejects.not.toThrow(/Signature|#part/);
    } finally {
      server.close();
    }
  });

  it("a fetcher's error that quotes the URL loses its secrets", async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), "devicelet-files-"));
    const url = `https://user:pw@blobs.example/m.bin?${TOKEN}`;
    const failure = writeAppFiles(root, [{ path: "/m.bin", ref: { url, sha256: "0".repeat(64), size: 1 } }], {
      fetcher: (u) => Promise.reject(new Error(`cannot reach ${u}`)),
    });
    await expect(failure).rejects.toThrow("/m.bin: cannot reach https://blobs.example/m.bin");
    await expect(failure).rejects.not.toThrow(/Signature|user|pw@/);
  });
});

describe("writeAppFiles and what the app left in its folder", () => {
  const setup = () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-links-"));
    const root = path.join(dir, "pod", "app");
    const outside = path.join(dir, "outside");
    mkdirSync(path.join(root, "etc"), { recursive: true });
    mkdirSync(outside);
    writeFileSync(path.join(outside, "passwd"), "root:x:0:0\n");
    return { root, outside };
  };
  const config = { path: "/etc/config.json", encoding: "utf8", content: "{}" } as const;

  it("replaces a file the app turned into a symlink, never writing through it", async () => {
    const { root, outside } = setup();
    await writeAppFiles(root, [config]);
    // An earlier run of the app pointed its config at a file outside its folder.
    rmSync(path.join(root, "etc/config.json"));
    symlinkSync(path.join(outside, "passwd"), path.join(root, "etc/config.json"));
    await writeAppFiles(root, [config]);
    expect(readFileSync(path.join(outside, "passwd"), "utf8")).toBe("root:x:0:0\n");
    expect(lstatSync(path.join(root, "etc/config.json")).isSymbolicLink()).toBe(false);
    expect(readFileSync(path.join(root, "etc/config.json"), "utf8")).toBe("{}");
  });

  it("replaces a folder the app turned into a symlink, never creating files through it", async () => {
    const { root, outside } = setup();
    rmSync(path.join(root, "etc"), { recursive: true });
    symlinkSync(outside, path.join(root, "etc"));
    await writeAppFiles(root, [config, { ...config, path: "/etc/passwd", content: "mine" }]);
    expect(readdirSync(outside)).toEqual(["passwd"]);
    expect(readFileSync(path.join(outside, "passwd"), "utf8")).toBe("root:x:0:0\n");
    expect(lstatSync(path.join(root, "etc")).isDirectory()).toBe(true);
    expect(readFileSync(path.join(root, "etc/passwd"), "utf8")).toBe("mine");
  });

  it("makes the app's root and the folders of private (Secret) files 0700, others 0755", async () => {
    const { root } = setup();
    const modeOf = (p: string) => statSync(path.join(root, p)).mode & 0o777;
    await writeAppFiles(root, [
      { path: "/etc/tls/key.pem", encoding: "utf8", content: "KEY", mode: 0o600 },
      { path: "/etc/app/app.yaml", encoding: "utf8", content: "a: 1" },
      { path: "/etc/app/ro.yaml", encoding: "utf8", content: "b: 2", mode: 0o444 },
    ]);
    expect(modeOf(".")).toBe(0o700);
    expect(modeOf("etc/tls")).toBe(0o700);
    expect(modeOf("etc/tls/key.pem")).toBe(0o600);
    expect(modeOf("etc/app")).toBe(0o755);
    expect(modeOf("etc/app/app.yaml")).toBe(0o644);
    expect(modeOf("etc/app/ro.yaml")).toBe(0o444);
    expect(readdirSync(path.join(root, "etc/app")).sort()).toEqual(["app.yaml", "ro.yaml"]);
  });

  it.runIf(process.getuid?.() === 0)("gives the folder and files to the app's uid and gid", async () => {
    const { root } = setup();
    await writeAppFiles(root, [{ path: "/etc/tls/key.pem", encoding: "utf8", content: "KEY", mode: 0o600 }], {
      owner: { uid: 65534, gid: 65533 },
    });
    for (const p of [".", "etc", "etc/tls", "etc/tls/key.pem"])
      expect(statSync(path.join(root, p))).toMatchObject({ uid: 65534, gid: 65533 });
    expect(statSync(path.dirname(root)).uid).toBe(0);
    expect(statSync(path.dirname(root)).mode & 0o777).toBe(0o711);
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
