/** The in-memory DurableStore now ships with the conformance kit; tests keep importing it from here. */
export { MemoryStore } from "../../src/testing/memory-store.ts";
