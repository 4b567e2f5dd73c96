// What the long-running commands load, checked in a Node.js process of its own (vitest's workers
// load their own modules): every command's and provider's modules, a served endpoint and one
// request through the kube transport's undici, and then neither Node.js's own copy of undici nor
// the parts of client-node's that devicelet never uses. Each was heap at rest, which V8 grows by
// half again as headroom in a burst (docs/performance.md).
import { execFileSync } from "node:child_process";
import { fileURLToPath, pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("../..", import.meta.url));
const url = (file: string) => JSON.stringify(pathToFileURL(root + file).href);

const script = `
import { createRequire } from "node:module";
await import(${url("src/cli/run.ts")});
await import(${url("src/cli/agent.ts")});
await import(${url("src/cli/simulate.ts")});
for (const provider of ["mock", "mqtt", "iothub"]) await import(${url("providers/")} + provider + "/index.ts");
const { servePlain } = await import(${url("src/base/plain-server.ts")});
const { undici } = await import(${url("src/kube/access.ts")});
const served = await servePlain((_req, res) => res.end("pong"), { port: 0, bindAddress: "127.0.0.1" });
const { Agent, request } = undici();
const agent = new Agent({ connect: {} });
const response = await request(
  { origin: served.baseUrl, path: "/ping?x=1" },
  { method: "GET", headers: {}, dispatcher: agent },
);
const body = await response.body.text();
await agent.close();
await served.close();
const cache = Object.keys(createRequire(import.meta.url).cache);
console.log(JSON.stringify({
  answer: [response.statusCode, body],
  nodeUndici: process.moduleLoadList.filter((m) => m.includes("deps/undici")),
  undiciFiles: cache.filter((f) => f.includes("/node_modules/undici/")).map((f) => f.split("/node_modules/undici/")[1]),
}));
`;

describe("what devicelet loads", () => {
  it("loads neither Node.js's undici nor undici's index, fetch, caches, mocks or interceptors, and still sends", () => {
    const env = { ...process.env };
    delete env.NODE_OPTIONS;
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], {
      env,
      encoding: "utf8",
      timeout: 60_000,
    });
    const seen = JSON.parse(out.trim().split("\n").at(-1) ?? "{}") as {
      answer: [number, string];
      nodeUndici: string[];
      undiciFiles: string[];
    };
    expect(seen.answer).toEqual([200, "pong"]);
    expect(seen.nodeUndici).toEqual([]);
    expect(seen.undiciFiles).toContain("lib/dispatcher/agent.js");
    expect(seen.undiciFiles).toContain("lib/api/api-request.js");
    expect(seen.undiciFiles).not.toContain("index.js");
    expect(seen.undiciFiles.filter((f) => /^lib\/(web|cache|mock|interceptor)\//.test(f))).toEqual([]);
  }, 90_000);
});
