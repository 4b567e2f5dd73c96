import { once } from "node:events";
import { createServer } from "node:net";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { startSimulator } from "./simulator.ts";

describe("startSimulator", () => {
  it("names the broker without its credentials when devices do not come online", async () => {
    // A port that accepts TCP and never answers CONNECT: no device ever comes online.
    const silent = createServer(() => undefined).listen(0, "127.0.0.1");
    await once(silent, "listening");
    const { port } = silent.address() as { port: number };
    try {
      const started = startSimulator({
        brokerUrl: `mqtt://sim-user:s3cret-password@127.0.0.1:${port}`,
        devices: [{ id: "leak-mcu-0", kind: "mcu" }],
        startTimeoutMs: 200,
        logger: pino({ level: "silent" }),
      });
      await expect(started).rejects.toThrow(`not online in time (leak-mcu-0…) at mqtt://127.0.0.1:${port}`);
      await expect(started).rejects.not.toThrow(/s3cret|sim-user/);
    } finally {
      silent.close();
    }
  });
});
