/**
 * A {@link ProviderContext} for tests: what the engine would hand a provider, with everything the
 * provider does through it kept for the test to look at.
 *
 *   const context = testContext();                       // fresh MemoryStore, silent logger
 *   const provider = createMyProvider(config, context);
 *   ...
 *   context.events;                                      // ProviderEvents recorded, in order
 *   context.failures;                                    // errors passed to `fail` (fatal ones)
 *   context.metrics.rejected;                            // reasons passed to `metrics.messageRejected`
 *   context.metrics.reread;                              // devices passed to `metrics.reportsReread`
 *   const again = testContext({ store: context.store }); // a restart: same durable state
 *
 * The logger is silent unless `logLevel` (or the `DEVICELET_KIT_LOG` environment variable) asks
 * for more; it then writes to stderr, so a failing conformance run can be read back.
 */
import pino, { type Logger } from "pino";
import type { ProviderContext, ProviderEvent, ProviderGauges, ProviderMetrics } from "../provider/types.ts";
import { MemoryStore } from "./memory-store.ts";

export interface TestContext extends ProviderContext {
  readonly store: MemoryStore;
  /** Every event the provider recorded, oldest first. The test owns the array. */
  readonly events: ProviderEvent[];
  /** Every error the provider reported as fatal with `fail`, oldest first. */
  readonly failures: Error[];
  readonly metrics: TestMetrics;
}

/** A {@link ProviderMetrics} that keeps what the provider reported; the test owns the arrays. */
export class TestMetrics implements ProviderMetrics {
  /** Seconds passed to `desiredIssued`, oldest first. */
  readonly issued: number[] = [];
  /** Seconds passed to `desiredDelivered`, oldest first. */
  readonly delivered: number[] = [];
  /** Seconds passed to `desiredApplied`, oldest first. */
  readonly applied: number[] = [];
  /** Reasons passed to `messageRejected`, oldest first. */
  readonly rejected: string[] = [];
  /** Calls of `commandExpired`. */
  expired = 0;
  /** Devices passed to `reportsReread`, summed. */
  reread = 0;
  /** The callbacks last passed to `observe`: call them to read the gauges. */
  gauges: ProviderGauges = {};

  desiredIssued(seconds: number): void {
    this.issued.push(seconds);
  }

  desiredDelivered(seconds: number): void {
    this.delivered.push(seconds);
  }

  desiredApplied(seconds: number): void {
    this.applied.push(seconds);
  }

  messageRejected(reason: string): void {
    this.rejected.push(reason);
  }

  commandExpired(): void {
    this.expired++;
  }

  reportsReread(devices: number): void {
    this.reread += devices;
  }

  observe(gauges: ProviderGauges): void {
    this.gauges = gauges;
  }
}

export interface TestContextOptions {
  /** The durable state to start from: pass an earlier context's store to play a restart. */
  readonly store?: MemoryStore;
  /** A logger to use instead of the built-in one. */
  readonly logger?: Logger;
  /** Level of the built-in logger; default `DEVICELET_KIT_LOG` or `silent`. */
  readonly logLevel?: pino.LevelWithSilent;
  /** Passed on as the context's `checkPodAddress`. */
  readonly checkPodAddress?: (address: string) => string | undefined;
}

export function testContext(options: TestContextOptions = {}): TestContext {
  const events: ProviderEvent[] = [];
  const failures: Error[] = [];
  const level = options.logLevel ?? (process.env.DEVICELET_KIT_LOG as pino.LevelWithSilent | undefined);
  return {
    logger: options.logger ?? pino({ level: level ?? "silent" }, process.stderr),
    store: options.store ?? new MemoryStore(),
    events,
    failures,
    recordEvent: (event) => {
      events.push(event);
    },
    fail: (error) => {
      failures.push(error);
    },
    metrics: new TestMetrics(),
    ...(options.checkPodAddress === undefined ? {} : { checkPodAddress: options.checkPodAddress }),
  };
}
