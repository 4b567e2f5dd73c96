/**
 * `devicelet agent --config agent.yaml`: the reference device agent for Linux gateways (see
 * src/device/agent.ts and examples/agent.yaml). Runs until SIGTERM or SIGINT, then publishes
 * `offline` and stops its apps gracefully. Resolves to the exit code; never calls process.exit.
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import pino from "pino";
import { ConfigError } from "../config/load.ts";
import { parseAgentConfig, startAgent, type Agent } from "../device/agent.ts";
import { redaction } from "../log/redact.ts";

const usage = `Usage: devicelet agent --config <agent.yaml>

Runs the devicelet device agent on a Linux gateway: connects to the MQTT broker (or Azure IoT Hub)
as the configured device, runs the pods devicelet schedules to it as supervised processes, and
reports their status.

Options:
  -c, --config <file>   agent configuration (see examples/agent.yaml)
  -h, --help            print this help
`;

export async function agentCommand(argv: string[]): Promise<number> {
  let values: { config?: string | undefined; help?: boolean | undefined };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { config: { type: "string", short: "c" }, help: { type: "boolean", short: "h" } },
    }));
  } catch (err) {
    process.stderr.write(`devicelet agent: ${(err as Error).message}\n\n${usage}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(usage);
    return 0;
  }
  if (!values.config) {
    process.stderr.write(`devicelet agent: --config <agent.yaml> is required\n\n${usage}`);
    return 2;
  }
  let config;
  try {
    config = parseAgentConfig(await readFile(values.config, "utf8"), values.config);
  } catch (err) {
    process.stderr.write(
      `${err instanceof ConfigError ? err.message : `devicelet agent: ${(err as Error).message}`}\n`,
    );
    return 2;
  }
  // Pod specs carry Secret-derived env and files: see src/log/redact.ts.
  const logger = pino({ level: config.log.level, redact: redaction });
  const stopped = new Promise<string>((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
  let agent: Agent;
  try {
    agent = await startAgent(config, { logger });
  } catch (err) {
    logger.error({ err }, "agent failed to start");
    return 1;
  }
  const signal = await stopped;
  logger.info({ signal }, "agent stopping: publishing offline, stopping apps");
  await agent.stop();
  logger.info("agent stopped");
  return 0;
}
