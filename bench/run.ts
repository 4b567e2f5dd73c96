/**
 * `npm run bench -- <name>`: benchmarks, measured on the harness control plane (reused when
 * `npm run testenv -- up` left one running, otherwise started and stopped here).
 *   engine   1,000 pods over 100 mock device nodes, side by side with KWOK
 *   mqtt     1,000 pods over 100 simulated devices through Mosquitto; a 1,000-device reconnect storm
 */
const benches: Record<string, () => Promise<unknown>> = {
  engine: async () => (await import("./engine.ts")).benchEngine(),
  mqtt: async () => (await import("./mqtt.ts")).benchMqtt(),
};

const name = process.argv[2] ?? "";
const bench = benches[name];
if (!bench) {
  console.error(`usage: npm run bench -- <${Object.keys(benches).join("|")}>`);
  process.exitCode = 2;
} else {
  await bench();
}
