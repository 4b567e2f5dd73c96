/**
 * `devicelet simulate`: thousands of simulated devices (gateways with child microcontrollers, and
 * standalone microcontrollers) against a real broker, for demos and benchmarks (see
 * src/device/simulator.ts). Runs until SIGTERM or SIGINT, then every device publishes `offline`.
 * Resolves to the exit code; never calls process.exit.
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import pino from "pino";
import { fleetSpec, startSimulator } from "../device/simulator.ts";

const usage = `Usage: devicelet simulate --broker <url> [options]

Runs simulated devices that speak the devicelet protocol to an MQTT broker.

Options:
  --broker <url>          mqtt://, mqtts://, ws:// or wss:// broker URL (required)
  --devices <n>           total devices; split as gateways with children plus standalone
                          microcontrollers unless --gateways/--children/--mcus are given
  --gateways <n>          gateways (each one MQTT connection)
  --children <n>          microcontrollers behind each gateway (default 4)
  --mcus <n>              standalone microcontrollers
  --pods-per-gateway <n>  pods capacity of each gateway (default 110)
  --app-start-ms <ms>     time from apply to Running (default 200)
  --app-start-jitter-ms <ms>  extra random start time (default 0)
  --failure-rate <f>      fraction of app starts that crash, 0-1 (default 0)
  --ca <file>             PEM CA to verify an mqtts:// broker
  --prefix <p>            device id prefix (default sim)
  --mqtt <4|5>            MQTT protocol version (default 5)
  --log-level <level>     default info
  -h, --help              print this help
`;

export async function simulateCommand(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        broker: { type: "string" },
        devices: { type: "string" },
        gateways: { type: "string" },
        children: { type: "string" },
        mcus: { type: "string" },
        "pods-per-gateway": { type: "string" },
        "app-start-ms": { type: "string" },
        "app-start-jitter-ms": { type: "string" },
        "failure-rate": { type: "string" },
        ca: { type: "string" },
        prefix: { type: "string", default: "sim" },
        mqtt: { type: "string", default: "5" },
        "log-level": { type: "string", default: "info" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    return fail((err as Error).message);
  }
  if (values.help) {
    process.stdout.write(usage);
    return 0;
  }
  if (!values.broker) return fail("--broker <url> is required");
  const problems: string[] = [];
  const int = (name: string, text: string | undefined, fallback: number) => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isInteger(n) || n < 0) problems.push(`--${name} must be a non-negative integer`);
    return n;
  };
  const rate = values["failure-rate"] === undefined ? 0 : Number(values["failure-rate"]);
  if (!(rate >= 0 && rate <= 1)) problems.push("--failure-rate must be between 0 and 1");
  if (values.mqtt !== "4" && values.mqtt !== "5") problems.push("--mqtt must be 4 or 5");
  if (!/^[a-z0-9][a-z0-9.-]{0,40}$/.test(values.prefix))
    problems.push("--prefix must be a short lowercase id");
  const total = int("devices", values.devices, 0);
  const explicit = values.gateways !== undefined || values.mcus !== undefined;
  const children = int("children", values.children, 4);
  // --devices N alone: half the fleet behind gateways, half standalone.
  const gateways = int("gateways", values.gateways, explicit ? 0 : Math.floor(total / 2 / (children + 1)));
  const mcus = int("mcus", values.mcus, explicit ? 0 : total - gateways * (children + 1));
  const podsPerGateway = int("pods-per-gateway", values["pods-per-gateway"], 110);
  const appStartMs = int("app-start-ms", values["app-start-ms"], 200);
  const appStartJitterMs = int("app-start-jitter-ms", values["app-start-jitter-ms"], 0);
  if (gateways + mcus === 0 && problems.length === 0)
    problems.push("no devices: give --devices or --gateways/--mcus");
  if (problems.length > 0) return fail(problems.join("\n"));

  const logger = pino({ level: values["log-level"] });
  const ca = values.ca === undefined ? undefined : await readFile(values.ca, "utf8");
  const devices = fleetSpec({
    gateways,
    childrenPerGateway: children,
    mcus,
    prefix: values.prefix,
    podsPerGateway,
  });
  const stopped = new Promise<string>((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
  logger.info(
    { devices: devices.length, gateways, children, mcus, broker: values.broker },
    "starting simulated devices",
  );
  let simulator;
  try {
    simulator = await startSimulator({
      brokerUrl: values.broker,
      devices,
      appStartMs,
      appStartJitterMs,
      failureRate: rate,
      protocolVersion: values.mqtt === "4" ? 4 : 5,
      logger,
      ...(ca === undefined ? {} : { ca }),
    });
  } catch (err) {
    logger.error({ err }, "simulator failed to start");
    return 1;
  }
  logger.info({ devices: simulator.devices.size }, "all simulated devices are online");
  const signal = await stopped;
  logger.info({ signal }, "stopping simulated devices");
  await simulator.stop();
  return 0;
}

function fail(message: string): number {
  process.stderr.write(`devicelet simulate: ${message}\n\n${usage}`);
  return 2;
}
