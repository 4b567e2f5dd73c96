/**
 * The context a test gives a provider it runs alone, without an engine: a silent logger, an
 * in-memory durable store, Events dropped, and a fatal error thrown (so the test sees it).
 *
 *   const provider = createMqttProvider(config, quietContext());
 */
import pino from "pino";
import type { ProviderContext } from "../../src/provider/types.ts";
import { MemoryStore } from "./memory-store.ts";

export function quietContext(): Pick<ProviderContext, "logger" | "store" | "recordEvent" | "fail"> {
  return {
    logger: pino({ level: "silent" }),
    store: new MemoryStore(),
    recordEvent: () => undefined,
    fail: (err: Error) => {
      throw err;
    },
  };
}
