/**
 * `devicelet simulate`: thousands of simulated devices (gateways with child microcontrollers, and
 * standalone microcontrollers) against a real broker, for demos and benchmarks (see
 * src/device/simulator.ts), or against Azure IoT Hub with one device identity per simulated device
 * (`--iothub-devices`: a file of device connection strings). Runs until SIGTERM or SIGINT, then
 * every device publishes `offline`. Resolves to the exit code; never calls process.exit.
 *
 *   devicelet simulate --broker mqtt://127.0.0.1:1883 --devices 500
 *   devicelet simulate --iothub-devices devices.txt --iothub-ca hub-ca.pem --gateways 2
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import pino from "pino";
import { fleetSpec, startSimulator, type SimDeviceSpec, type SimulatorOptions } from "../device/simulator.ts";

const usage = `Usage: devicelet simulate --broker <url> [options]
       devicelet simulate --iothub-devices <file> [options]

Runs simulated devices that speak the devicelet protocol to an MQTT broker, or to Azure IoT Hub.

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
  --iothub-devices <file> IoT Hub instead of a broker: one device connection string per line
                          (blank lines and # comments skipped), one standalone device each,
                          ids from DeviceId; the first --gateways of them are gateways, the
                          rest microcontrollers. No children over IoT Hub.
  --iothub-ca <file>      PEM CA to trust besides the system's (a local hub emulator)
  --iothub-heartbeat <s>  seconds between presence heartbeats (default 60)
  --iothub-connects-per-second <n>  connects per second while starting (default 50)
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
        "iothub-devices": { type: "string" },
        "iothub-ca": { type: "string" },
        "iothub-heartbeat": { type: "string" },
        "iothub-connects-per-second": { type: "string" },
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
  const hubFile = values["iothub-devices"];
  if (!values.broker === (hubFile === undefined))
    return fail("give exactly one of --broker <url> and --iothub-devices <file>");
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
  const heartbeat = int("iothub-heartbeat", values["iothub-heartbeat"], 60);
  const connectsPerSecond = int("iothub-connects-per-second", values["iothub-connects-per-second"], 50);
  if (hubFile === undefined) {
    if (gateways + mcus === 0 && problems.length === 0)
      problems.push("no devices: give --devices or --gateways/--mcus");
    for (const flag of ["iothub-ca", "iothub-heartbeat", "iothub-connects-per-second"] as const)
      if (values[flag] !== undefined) problems.push(`--${flag} needs --iothub-devices`);
  } else {
    for (const flag of ["devices", "mcus", "children", "ca"] as const)
      if (values[flag] !== undefined) problems.push(`--${flag} does not apply to --iothub-devices`);
    if (heartbeat < 5 || heartbeat > 3600) problems.push("--iothub-heartbeat must be 5 to 3600 seconds");
    if (connectsPerSecond < 1) problems.push("--iothub-connects-per-second must be at least 1");
  }
  if (problems.length > 0) return fail(problems.join("\n"));

  const logger = pino({ level: values["log-level"] });
  let target: Pick<SimulatorOptions, "brokerUrl" | "ca" | "protocolVersion" | "iothub">;
  let devices: SimDeviceSpec[];
  try {
    if (hubFile === undefined) {
      const ca = values.ca === undefined ? undefined : await readFile(values.ca, "utf8");
      target = {
        brokerUrl: values.broker,
        protocolVersion: values.mqtt === "4" ? 4 : 5,
        ...(ca === undefined ? {} : { ca }),
      };
      devices = fleetSpec({
        gateways,
        childrenPerGateway: children,
        mcus,
        prefix: values.prefix,
        podsPerGateway,
      });
    } else {
      const hub = await iotHubFleet({ file: hubFile, gateways, podsPerGateway });
      const ca = values["iothub-ca"] === undefined ? undefined : await readFile(values["iothub-ca"], "utf8");
      target = {
        iothub: {
          connectionString: hub.connectionString,
          heartbeatSeconds: heartbeat,
          connectsPerSecond,
          ...(ca === undefined ? {} : { ca }),
        },
      };
      devices = hub.devices;
    }
  } catch (err) {
    return fail((err as Error).message);
  }
  const stopped = new Promise<string>((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
  logger.info(
    hubFile === undefined
      ? { devices: devices.length, gateways, children, mcus, broker: values.broker }
      : { devices: devices.length, gateways, iothub: hubFile },
    "starting simulated devices",
  );
  let simulator;
  try {
    simulator = await startSimulator({
      ...target,
      devices,
      appStartMs,
      appStartJitterMs,
      failureRate: rate,
      logger,
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

/**
 * Standalone devices from a file of device connection strings, one a line (blank lines and `#`
 * comments skipped): ids from `DeviceId`, the first `gateways` of them gateways, spread over zones
 * as {@link fleetSpec} spreads its own.
 */
async function iotHubFleet(o: {
  file: string;
  gateways: number;
  podsPerGateway: number;
}): Promise<{ devices: SimDeviceSpec[]; connectionString: (deviceId: string) => string }> {
  const byId = new Map<string, string>();
  for (const [i, raw] of (await readFile(o.file, "utf8")).split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const id = /(?:^|;)DeviceId=([^;]+)/.exec(line)?.[1];
    if (id === undefined || !/(?:^|;)HostName=[^;]+/.test(line))
      throw new Error(
        `${o.file}:${i + 1}: not a device connection string (HostName=…;DeviceId=…;SharedAccessKey=…)`,
      );
    if (byId.has(id)) throw new Error(`${o.file}:${i + 1}: device ${id} is listed twice`);
    byId.set(id, line);
  }
  const ids = [...byId.keys()];
  if (ids.length === 0) throw new Error(`${o.file}: no device connection strings`);
  if (o.gateways > ids.length)
    throw new Error(`--gateways ${o.gateways} is more than the ${ids.length} devices in ${o.file}`);
  const spread = fleetSpec({
    gateways: o.gateways,
    childrenPerGateway: 0,
    mcus: ids.length - o.gateways,
    prefix: "iothub",
    podsPerGateway: o.podsPerGateway,
  });
  return {
    devices: spread.map((spec, i) => ({ ...spec, id: ids[i] ?? spec.id })),
    connectionString: (deviceId) => byId.get(deviceId) ?? "",
  };
}

function fail(message: string): number {
  process.stderr.write(`devicelet simulate: ${message}\n\n${usage}`);
  return 2;
}
