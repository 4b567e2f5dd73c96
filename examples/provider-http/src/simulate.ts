/**
 * Runs simulated devices (device.ts) that poll a provider until stopped with Ctrl-C or SIGTERM:
 *
 *   node src/simulate.ts --url http://127.0.0.1:8480 --count 3 --prefix http-
 *
 * starts devices `http-0`, `http-1` and `http-2`. Each appears as a node once it has polled; a pod
 * scheduled to one is reported running `--start-delay-ms` after the device first gets it.
 */
import { parseArgs } from "node:util";
import { SimulatedDevice } from "./device.ts";

const { values } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:8480" },
    count: { type: "string", default: "3" },
    prefix: { type: "string", default: "http-" },
    "start-delay-ms": { type: "string", default: "200" },
  },
});
const count = Number(values.count);
if (!Number.isInteger(count) || count < 1)
  throw new Error(`--count must be a positive integer, not ${values.count}`);

const devices = Array.from(
  { length: count },
  (_, i) =>
    new SimulatedDevice({
      id: `${values.prefix}${i}`,
      url: values.url,
      startDelayMs: Number(values["start-delay-ms"]),
    }),
);
for (const device of devices) void device.setOnline(true);
process.stdout.write(`${count} devices polling ${values.url}: ${devices.map((d) => d.id).join(", ")}\n`);

const stop = () => void Promise.all(devices.map((d) => d.setOnline(false)));
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
