/**
 * `devicelet/provider`: everything a provider author needs, with no deep imports. The contract
 * (types.ts), the errors the engine acts on (errors.ts), and `defineProvider` (plugin.ts).
 * docs/providers.md goes from an empty folder to a provider that passes the conformance kit
 * (`devicelet/provider/testing`).
 *
 *   import { defineProvider, notFound, type PodLifecycleProvider } from "devicelet/provider";
 */
export * from "./types.ts";
export * from "./errors.ts";
export { defineProvider, type ProviderPlugin } from "./plugin.ts";
export type { FromSchema } from "./schema-type.ts";
export type { Clock } from "../base/clock.ts";
export { systemClock } from "../base/clock.ts";
