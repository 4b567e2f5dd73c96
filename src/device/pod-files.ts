/**
 * Writing an app's files: every file lands under the app's own root
 * (`<workDir>/<podUid>/<app>/`), whatever its path in the pod spec. `/etc/app/config.json` becomes
 * `<root>/etc/app/config.json`, never the real `/etc/app/config.json`, and no path can climb out of
 * the root. Inline files are decoded (utf8 or base64); files by reference are downloaded and
 * checked against their size and sha256 before they are written.
 *
 * The root is 0700 and, when the app runs as another user, owned by it (its parent, the pod's
 * folder, is the agent's and 0711: the app can pass through it); files keep their `mode`;
 * folders holding a file closed to group and others (one from a Secret) are 0700. Links the app
 * left in its folder are never followed (see {@link writeAppFiles}).
 */
import { createHash, randomBytes } from "node:crypto";
import { constants as fs } from "node:fs";
import { chmod, lchown, lstat, mkdir, open, rename, rm } from "node:fs/promises";
import path from "node:path";
import { urlLocation } from "../log/redact.ts";
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

/**
 * Default fetcher: HTTP(S) GET, refusing bodies larger than `maxBytes`. Its errors name the URL by
 * {@link urlLocation} only: they become the app's status, and a pre-signed URL's query is a token.
 */
export const fetchBytes: FetchBytes = async (url, maxBytes) => {
  const response = await fetch(url, { signal: AbortSignal.timeout(60_000) });
  const shown = `GET ${urlLocation(url)}`;
  if (!response.ok || !response.body) throw new Error(`${shown}: HTTP ${response.status}`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
    size += chunk.length;
    if (size > maxBytes) throw new Error(`${shown}: larger than the announced ${maxBytes} bytes`);
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks);
};

/** Who owns an app's folder and files: the app's uid and gid when the agent switches to them. */
export interface FileOwner {
  readonly uid: number;
  readonly gid: number;
}

export interface WriteOptions {
  readonly fetcher?: FetchBytes;
  /** chown every folder and file written to this; default: left to the agent. */
  readonly owner?: FileOwner;
}

/** The app's root and every folder holding a private file; no one but the app's user gets in. */
const PRIVATE_DIR = 0o700;
const SHARED_DIR = 0o755;
const POD_DIR = 0o711;
const DEFAULT_FILE_MODE = 0o644;
/** A file granting nothing to group and others: one from a Secret (devicelet sends those so). */
const isPrivate = (mode: number) => (mode & 0o077) === 0;

/**
 * Writes `files` under `root` (created if missing, mode 0700, owned by `owner`). Each file gets its
 * `mode` (default 0644); each folder below the root is 0700 when it holds a file that grants
 * nothing to group and others (a file from a Secret), else 0755.
 *
 * Nothing the app left in its folder is followed: every folder on the way is checked with `lstat`,
 * and a symlink or file where a folder belongs is removed and replaced by a real folder; each file
 * is written to a new temporary file (`O_EXCL | O_NOFOLLOW`) in its folder and renamed over the
 * target, which replaces a symlink there rather than writing through it. So an app that replaced
 * `etc/config.json` by a link to `/etc/passwd` on an earlier run cannot make the agent write there.
 * (An app racing the agent while it writes could still swap a folder between the check and the
 * write; the supervisor writes while the app's process is not running.)
 */
export async function writeAppFiles(
  root: string,
  files: readonly DesiredFile[],
  options: WriteOptions = {},
): Promise<void> {
  const { owner } = options;
  const podDir = path.dirname(root);
  await mkdir(path.dirname(podDir), { recursive: true });
  // The agent's: others may pass through to their app's folder, not list or change it.
  await ensureDir(podDir, POD_DIR, undefined);
  await ensureDir(root, PRIVATE_DIR, owner);
  const targets = files.map((file) => ({ file, target: resolveUnder(root, file.path) }));
  const dirModes = new Map<string, number>();
  for (const { file, target } of targets) {
    const mode = isPrivate(file.mode ?? DEFAULT_FILE_MODE) ? PRIVATE_DIR : SHARED_DIR;
    for (let dir = path.dirname(target); dir !== root; dir = path.dirname(dir))
      dirModes.set(dir, Math.min(dirModes.get(dir) ?? SHARED_DIR, mode));
  }
  // Parents before children: shorter paths first.
  for (const dir of [...dirModes.keys()].sort((a, b) => a.length - b.length))
    await ensureDir(dir, dirModes.get(dir) ?? SHARED_DIR, owner);
  for (const { file, target } of targets) {
    const content = await fileContent(file, options.fetcher ?? fetchBytes);
    await replaceFile(target, content, file.mode ?? DEFAULT_FILE_MODE, owner);
  }
}

async function fileContent(file: DesiredFile, fetcher: FetchBytes): Promise<Buffer> {
  if (!("ref" in file)) return Buffer.from(file.content, file.encoding === "base64" ? "base64" : "utf8");
  let content: Buffer;
  try {
    content = await fetcher(file.ref.url, file.ref.size);
  } catch (err) {
    // The message becomes the app's status: whatever the fetcher says, the URL's secrets stay out.
    const why = (err as Error).message.replaceAll(file.ref.url, urlLocation(file.ref.url));
    throw new FileError("FetchingFiles", `${file.path}: ${why}`, { cause: err });
  }
  const digest = createHash("sha256").update(content).digest("hex");
  if (content.length !== file.ref.size || digest !== file.ref.sha256) {
    throw new FileError(
      "FileIntegrityError",
      `${file.path}: downloaded ${content.length} bytes with sha256 ${digest}, expected ${file.ref.size} bytes with ${file.ref.sha256}`,
    );
  }
  return content;
}

/** `dir` as a real folder with `mode` and `owner`: whatever else is there (a symlink, a file) goes. */
async function ensureDir(dir: string, mode: number, owner: FileOwner | undefined): Promise<void> {
  const found = await lstat(dir).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  });
  if (found && !found.isDirectory()) await rm(dir, { force: true, recursive: true });
  if (!found?.isDirectory()) await mkdir(dir, { mode });
  // lchown/chmod on a path lstat just saw as a real folder (chmod follows links; lchown does not).
  if (owner) await lchown(dir, owner.uid, owner.gid);
  await chmod(dir, mode);
}

/** Writes `content` to a fresh temporary file next to `target`, then renames it over `target`. */
async function replaceFile(
  target: string,
  content: Buffer,
  mode: number,
  owner: FileOwner | undefined,
): Promise<void> {
  const tmp = path.join(path.dirname(target), `.devicelet-${randomBytes(6).toString("hex")}.tmp`);
  const handle = await open(tmp, fs.O_WRONLY | fs.O_CREAT | fs.O_EXCL | fs.O_NOFOLLOW, 0o600);
  try {
    await handle.writeFile(content);
    if (owner) await handle.chown(owner.uid, owner.gid);
    await handle.chmod(mode);
  } catch (err) {
    await handle.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  // A folder where the file belongs (the app made one) would make the rename fail.
  const found = await lstat(target).catch(() => undefined);
  if (found?.isDirectory()) await rm(target, { recursive: true, force: true });
  await rename(tmp, target);
}
