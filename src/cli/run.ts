/**
 * `devicelet run --config <file.yaml>`: validates the configuration (every problem at once), loads
 * the provider, runs the engine until SIGTERM or SIGINT, then stops cleanly: leases stop being
 * renewed, nodes stay registered, the provider flushes its state. With `leaderElection.enabled`
 * it stands by until it leads, and a leader that loses the lease exits 1 ("leader election lost").
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import pino, { type Logger } from "pino";
import { parse } from "yaml";
import { ConfigError, parseConfig } from "../config/index.ts";
import { runEngine, type Engine } from "../engine.ts";
import { LeadershipLostError } from "../leader/index.ts";
import { redaction } from "../log/redact.ts";
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

/**
 * The lease was lost while leading: everything has stopped; exit non-zero so the container
 * restarts as a standby, as kube-controller-manager does (leaderElection in docs/configuration.md).
 */
function leadershipLost(logger: Logger, err: LeadershipLostError): number {
  logger.error({ err }, "leader election lost");
  return 1;
}
