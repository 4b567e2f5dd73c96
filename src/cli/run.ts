/**
 * `devicelet run --config <file.yaml>`: validates the configuration (every problem at once), loads
 * the provider, runs the engine until SIGTERM or SIGINT, then stops cleanly: leases stop being
 * renewed, nodes stay registered, the provider flushes its state. With `leaderElection.enabled`
 * it stands by until it leads, and a leader that loses the lease exits 1 ("leader election lost").
 * With `sharding.enabled` it runs one engine per shard it owns (src/shard/engines.ts); a shard
 * engine whose provider fails stops every shard and exits 1.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import pino, { type Logger } from "pino";
import { parse } from "yaml";
import { ConfigError, parseConfig } from "../config/index.ts";
import { runEngine, type Engine } from "../engine.ts";
import { LeadershipLostError } from "../leader/index.ts";
import { redaction } from "../log/redact.ts";
import { trimHeapAfterBursts, watchHeap } from "../metrics/index.ts";
import { runShardedEngines } from "../shard/engines.ts";
import { resolveProvider } from "./providers.ts";
import { version } from "./version.ts";

export async function runCommand(options: { configPath: string }): Promise<number> {
  let text: string;
  try {
    text = await readFile(options.configPath, "utf8");
  } catch (err) {
    process.stderr.write(`devicelet: cannot read ${options.configPath}: ${(err as Error).message}\n`);
    return 2;
  }
  let type = "mock";
  try {
    const raw = parse(text) as { provider?: { type?: unknown } } | null;
    if (typeof raw?.provider?.type === "string") type = raw.provider.type;
  } catch {
    // parseConfig reports YAML errors with their lines.
  }
  let plugin;
  let config;
  try {
    // A package named in the config is looked up from the config file's folder first.
    plugin = await resolveProvider(type, [path.dirname(path.resolve(options.configPath))]);
    config = parseConfig(text, options.configPath, {
      providerSchemas: { [type]: plugin.configSchema },
    });
  } catch (err) {
    process.stderr.write(`${err instanceof ConfigError ? err.message : String(err)}\n`);
    return 2;
  }
  // Secret-derived values and credentials never reach a log: see src/log/redact.ts.
  const logger = pino({ level: config.log.level, redact: redaction });
  const controller = new AbortController();
  const stop = (signal: string) => {
    if (controller.signal.aborted) return;
    logger.info({ signal }, "stopping: leases will no longer be renewed; nodes stay registered");
    controller.abort(new Error(signal));
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
  const heapLogger = logger.child({ component: "heap" });
  const stopHeapWatch = watchHeap({ logger: heapLogger });
  const stopHeapTrim = trimHeapAfterBursts({ logger: heapLogger });
  controller.signal.addEventListener("abort", stopHeapWatch, { once: true });
  controller.signal.addEventListener("abort", stopHeapTrim, { once: true });
  if (config.sharding.enabled) {
    const createProvider: Parameters<typeof runShardedEngines>[0]["createProvider"] = (context) =>
      plugin.create(config.provider.config, context);
    return runSharded(
      () => runShardedEngines({ config, logger, version, createProvider }, controller.signal),
      {
        logger,
        configPath: options.configPath,
        signal: controller.signal,
      },
    );
  }
  let engine: Engine | undefined;
  try {
    engine = await runEngine(
      {
        config,
        logger,
        version,
        createProvider: (context) => plugin.create(config.provider.config, context),
      },
      controller.signal,
    );
    logger.info(
      { nodes: engine.nodes.nodeNames().length, provider: engine.provider.name },
      "devicelet is running",
    );
  } catch (err) {
    if (!controller.signal.aborted) {
      controller.abort(err);
      // Found only against the API server (a state namespace that does not exist): as config errors.
      if (err instanceof ConfigError) {
        process.stderr.write(`${new ConfigError(options.configPath, err.problems).message}\n`);
        return 2;
      }
      if (err instanceof LeadershipLostError) return leadershipLost(logger, err);
      logger.error({ err }, "devicelet failed to start");
      return 1;
    }
  }
  if (!engine) {
    logger.info("devicelet stopped before it was ready");
    return 0;
  }
  try {
    await engine.done;
  } catch (err) {
    if (err instanceof LeadershipLostError) return leadershipLost(logger, err);
    logger.error({ err }, "devicelet stopped: the provider failed");
    return 1;
  }
  logger.info("devicelet stopped");
  return 0;
}

/** Runs the shard engines until they stop; the exit status as for a single engine. */
async function runSharded(
  start: () => ReturnType<typeof runShardedEngines>,
  o: { readonly logger: Logger; readonly configPath: string; readonly signal: AbortSignal },
): Promise<number> {
  let sharded;
  try {
    sharded = await start();
  } catch (err) {
    if (o.signal.aborted) return 0;
    if (err instanceof ConfigError) {
      process.stderr.write(`${new ConfigError(o.configPath, err.problems).message}\n`);
      return 2;
    }
    o.logger.error({ err }, "devicelet failed to start");
    return 1;
  }
  o.logger.info({ shards: sharded.coordinator.shards }, "devicelet is running");
  try {
    await sharded.done;
  } catch (err) {
    o.logger.error({ err }, "devicelet stopped: a shard's provider failed");
    return 1;
  }
  o.logger.info("devicelet stopped");
  return 0;
}

/**
 * The lease was lost while leading: everything has stopped; exit non-zero so the container
 * restarts as a standby, as kube-controller-manager does (leaderElection in docs/configuration.md).
 */
function leadershipLost(logger: Logger, err: LeadershipLostError): number {
  logger.error({ err }, "leader election lost");
  return 1;
}
