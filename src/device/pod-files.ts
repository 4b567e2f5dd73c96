/**
 * Writing an app's files: every file lands under the app's own root
 * (`<workDir>/<podUid>/<app>/`), whatever its path in the pod spec. `/etc/app/config.json` becomes
 * `<root>/etc/app/config.json`, never the real `/etc/app/config.json`, and no path can climb out of
 * the root. Inline files are decoded (utf8 or base64); files by reference are downloaded and
 * checked against their size and sha256 before they are written.
 */
import { createHash } from "node:crypto";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import type { DesiredFile } from "../protocol/types.ts";

/**
 * A file by reference could not be used: still fetching (download failed; retried with back-off)
 * or the download does not match its size and sha256 (docs/protocol.md § 9). The reason is the
 * app's waiting reason.
 */
export class FileError extends Error {
  readonly reason: "FetchingFiles" | "FileIntegrityError";
  constructor(reason: FileError["reason"], message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "FileError";
    this.reason = reason;
  }
}

/** The path under `root` for a path from the pod spec; throws when it would leave `root`. */
export function resolveUnder(root: string, specPath: string): string {
  const relative = path.posix.normalize(`/${specPath.replaceAll("\\", "/")}`).replace(/^\/+/, "");
  const resolved = path.resolve(root, relative);
  const base = path.resolve(root);
  if (relative === "" || (resolved !== base && !resolved.startsWith(base + path.sep))) {
    throw new Error(`file path ${JSON.stringify(specPath)} is not a file under the app's root`);
  }
  return resolved;
}

export type FetchBytes = (url: string, maxBytes: number) => Promise<Buffer>;

/** Default fetcher: HTTP(S) GET, refusing bodies larger than `maxBytes`. */
export const fetchBytes: FetchBytes = async (url, maxBytes) => {
  const response = await fetch(url, { signal: AbortSignal.timeout(60_000) });
  if (!response.ok || !response.body) throw new Error(`GET ${url}: HTTP ${response.status}`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
    size += chunk.length;
    if (size > maxBytes) throw new Error(`GET ${url}: larger than the announced ${maxBytes} bytes`);
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks);
};

/** Writes `files` under `root` (created if missing). */
export async function writeAppFiles(
  root: string,
  files: readonly DesiredFile[],
  fetcher: FetchBytes = fetchBytes,
): Promise<void> {
  await mkdir(root, { recursive: true });
  for (const file of files) {
    const target = resolveUnder(root, file.path);
    let content: Buffer;
    if ("ref" in file) {
      try {
        content = await fetcher(file.ref.url, file.ref.size);
      } catch (err) {
        throw new FileError("FetchingFiles", `${file.path}: ${(err as Error).message}`, { cause: err });
      }
      const digest = createHash("sha256").update(content).digest("hex");
      if (content.length !== file.ref.size || digest !== file.ref.sha256) {
        throw new FileError(
          "FileIntegrityError",
          `${file.path}: downloaded ${content.length} bytes with sha256 ${digest}, expected ${file.ref.size} bytes with ${file.ref.sha256}`,
        );
      }
    } else {
      content = Buffer.from(file.content, file.encoding === "base64" ? "base64" : "utf8");
    }
    await mkdir(path.dirname(target), { recursive: true });
    await writeFile(target, content);
    await chmod(target, file.mode ?? 0o644);
  }
}
