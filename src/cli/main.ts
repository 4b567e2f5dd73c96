/**
 * The `devicelet` command line. `main(argv)` resolves to the process exit code; it never calls
 * `process.exit` itself, so a command's clean-up always runs.
 */
import { parseArgs } from "node:util";
import { version } from "./version.ts";

const usage = `devicelet ${version} — a virtual kubelet for devices

Usage:
  devicelet run --config <file.yaml>   register the configured devices as nodes and run their pods
  devicelet simulate --devices N --broker URL
                                       run a simulated fleet speaking the device protocol
  devicelet agent --config <file.yaml> run the reference gateway agent on this Linux machine
  devicelet --version                  print the version
  devicelet --help                     print this help

Configuration is documented in docs/configuration.md; examples/mock.yaml runs ten mock devices.
`;

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    process.stdout.write(usage);
    return command === undefined ? 2 : 0;
  }
  if (command === "--version" || command === "-v") {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  if (command === "run") {
    const { values } = parseArgs({ args: [...rest], options: { config: { type: "string", short: "c" } } });
    if (!values.config) {
      process.stderr.write("devicelet run: --config <file.yaml> is required\n");
      return 2;
    }
    const { runCommand } = await import("./run.ts");
    return runCommand({ configPath: values.config });
  }
  if (command === "simulate") {
    const { simulateCommand } = await import("./simulate.ts");
    return simulateCommand([...rest]);
  }
  if (command === "agent") {
    const { agentCommand } = await import("./agent.ts");
    return agentCommand([...rest]);
  }
  process.stderr.write(`devicelet: unknown command "${command}"\n\n${usage}`);
  return 2;
}
