/**
 * `devicelet run --config <file.yaml>`: validates the configuration (every problem at once), loads
 * the provider, runs the engine until SIGTERM or SIGINT, then stops cleanly: leases stop being
 * renewed, nodes stay registered, the provider flushes its state.
 */
import { readFile } from "node:fs/promises";
import pino from "pino";
import { parse } from "yaml";
import { ConfigError, parseConfig } from "../config/index.ts";
import { runEngine, type Engine } from "../engine.ts";
import { redaction } from "../log/redact.ts";
import { resolveProvider } from "../provider/registry.ts";
import { version } from "./main.ts";

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
    plugin = await resolveProvider(type);
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
        createProvider: (context) => plugin.create(config.provider.config as never, context),
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
      logger.error({ err }, "devicelet failed to start");
      return 1;
    }
  }
  await new Promise<void>((resolve) => {
    if (controller.signal.aborted) resolve();
    else controller.signal.addEventListener("abort", () => resolve(), { once: true });
  });
  // Let the provider flush its state (it listens to the same signal), then close connections.
  const provider = engine?.provider as { stop?: () => Promise<void> } | undefined;
  if (typeof provider?.stop === "function") await provider.stop();
  await engine?.kube.close();
  logger.info("devicelet stopped");
  return 0;
}
