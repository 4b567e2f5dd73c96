/**
 * The blob emulator (hack/blob-emulator.ts) refuses what Azure Blob Storage refuses, with Azure's
 * status and error code: a missing or forged signature, an expired SAS, a permission the SAS does
 * not grant, a PUT without its blob type. Plain HTTPS requests that trust the emulator's CA; each
 * test asserts the stored state through a GET, not the emulator's internals.
 */
import https from "node:https";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBlobEmulator, type BlobEmulator } from "../../hack/blob-emulator.ts";

let blobs: BlobEmulator;
beforeAll(async () => {
  blobs = await startBlobEmulator();
});
afterAll(async () => {
  await blobs.close();
});

interface Answer {
  status: number;
  code: string | undefined;
  body: Buffer;
  headers: Record<string, string | string[] | undefined>;
}

/** `method` on blob `name` of the container, authorised by the SAS query of `sasUrl`. */
function call(
  method: string,
  sasUrl: string,
  name: string,
  o: { body?: Buffer; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const container = new URL(sasUrl);
  const url = `${container.origin}${container.pathname}/${name}${container.search}`;
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method,
        ca: blobs.ca,
        headers: o.body ? { "content-length": String(o.body.length), ...o.headers } : (o.headers ?? {}),
        timeout: 5000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const code = res.headers["x-ms-error-code"];
          resolve({
            status: res.statusCode ?? 0,
            code: typeof code === "string" ? code : undefined,
            body: Buffer.concat(chunks),
            headers: res.headers,
          });
        });
      },
    );
    req.on("error", reject);
    req.end(o.body);
  });
}

const blockBlob = { "x-ms-blob-type": "BlockBlob" };

describe("blob emulator", () => {
  it("stores a block blob and serves it back, whole and probed", async () => {
    const sas = blobs.containerSasUrl();
    const content = Buffer.from("hello blob");
    expect((await call("PUT", sas, "a/b.txt", { body: content, headers: blockBlob })).status).toBe(201);
    const got = await call("GET", sas, "a/b.txt");
    expect(got.status).toBe(200);
    expect(got.body.equals(content)).toBe(true);
    const probed = await call("HEAD", sas, "a/b.txt");
    expect([probed.status, probed.headers["content-length"]]).toEqual([200, String(content.length)]);
    expect((await call("GET", sas, "missing")).code).toBe("BlobNotFound");
  });

  it("refuses a request without a signature, with a forged one, or with a permission it was not signed for", async () => {
    const sas = new URL(blobs.containerSasUrl({ permissions: "r" }));
    const unsigned = new URL(sas);
    unsigned.searchParams.delete("sig");
    const forged = blobs.containerSasUrl({ signature: Buffer.alloc(32, 7).toString("base64") });
    const widened = new URL(sas);
    widened.searchParams.set("sp", "rcw");
    for (const url of [unsigned.toString(), forged, widened.toString()]) {
      const answer = await call("PUT", url, "refused", { body: Buffer.from("x"), headers: blockBlob });
      expect([answer.status, answer.code]).toEqual([403, "AuthenticationFailed"]);
    }
    expect((await call("GET", blobs.containerSasUrl(), "refused")).code).toBe("BlobNotFound");
  });

  it("refuses an expired SAS", async () => {
    const expired = blobs.containerSasUrl({ expiresAt: new Date(Date.now() - 60_000) });
    const answer = await call("PUT", expired, "late", { body: Buffer.from("x"), headers: blockBlob });
    expect([answer.status, answer.code]).toEqual([403, "AuthenticationFailed"]);
    expect((await call("GET", blobs.containerSasUrl(), "late")).code).toBe("BlobNotFound");
  });

  it("needs r to read, c or w to create, w to overwrite", async () => {
    const body = Buffer.from("v1");
    const readOnly = blobs.containerSasUrl({ permissions: "r" });
    expect((await call("PUT", readOnly, "perm", { body, headers: blockBlob })).code).toBe(
      "AuthorizationPermissionMismatch",
    );
    const createOnly = blobs.containerSasUrl({ permissions: "c" });
    expect((await call("PUT", createOnly, "perm", { body, headers: blockBlob })).status).toBe(201);
    expect((await call("GET", createOnly, "perm")).code).toBe("AuthorizationPermissionMismatch");
    const again = await call("PUT", createOnly, "perm", { body: Buffer.from("v2"), headers: blockBlob });
    expect(again.code).toBe("AuthorizationPermissionMismatch");
    expect((await call("GET", readOnly, "perm")).body.toString()).toBe("v1");
  });

  it("needs x-ms-blob-type BlockBlob on a PUT", async () => {
    const sas = blobs.containerSasUrl();
    const body = Buffer.from("typed");
    expect((await call("PUT", sas, "typed", { body })).code).toBe("MissingRequiredHeader");
    const page = await call("PUT", sas, "typed", { body, headers: { "x-ms-blob-type": "PageBlob" } });
    expect(page.code).toBe("InvalidHeaderValue");
    expect((await call("GET", sas, "typed")).code).toBe("BlobNotFound");
  });
});
