/**
 * `npm run bench -- <name>`: benchmarks, measured on the harness control plane (reused when
 * `npm run testenv -- up` left one running, otherwise started and stopped here).
 *   engine   1,000 pods over 100 mock device nodes, side by side with KWOK
 *   throughput  5,000 pods with nodeName set, created straight through the API, over 100 mock
 *            device nodes and then 100 KWOK nodes: pods/s, API requests per pod, CPU, memory
 *            (THROUGHPUT_PODS, THROUGHPUT_NODES)
 *   churn    6 rounds of 2,000 pods over 50 mock device nodes created and deleted, then the same on
 *            KWOK: whether memory stays level, and deletes per second (CHURN_ROUNDS, CHURN_PODS)
 *   scale    10,000 pods over 1,000 mock device nodes held for 10 minutes, then the same on KWOK:
 *            memory, NotReady nodes, steady API rate and CPU (SCALE_NODES, SCALE_PODS,
 *            SCALE_HOLD_SECONDS)
 *   mqtt     1,000 pods over 100 simulated devices through Mosquitto; a 1,000-device reconnect storm
 *   iothub   1,000 pods over 100 simulated IoT Hub devices through the local emulator, unthrottled
 *            and at one S1 unit's rates; a 1,000-device reconnect storm at S1 rates
 *   iothub-feed  how devicelet learns of reported changes on a 1,000-device S1 hub: polling
 *            against the event feed, change latency and idle quota cost
 *   soak     [--minutes N] [--seed S]: load and random faults (devicelet, Mosquitto, the API server,
 *            devices), then an audit of what was lost, applied twice, resurrected or evicted; it
 *            uses its own control plane ($DEVICELET_TESTENV_DIR, else /tmp/devicelet-soak-testenv)
 *   fuzz     [--seed S] [--cases N] [--only NAME]: 100,000 generated and mutated inputs to the
 *            device-facing decoders, pod translation, status mapping and config loading; needs
 *            no control plane; exits non-zero on any crash or unhandled rejection
 * Told to stop before it is done (Ctrl-C, SIGTERM, SIGHUP), a bench stops every process it started,
 * the control plane too when it started it, and exits 128 + the signal's number (bench/interrupt.ts).
 */
import { stopOnSignals } from "./interrupt.ts";

const benches: Record<string, () => Promise<unknown>> = {
  engine: async () => (await import("./engine.ts")).benchEngine(),
  throughput: async () => (await import("./throughput.ts")).benchThroughput(),
  churn: async () => (await import("./churn.ts")).benchChurn(),
  scale: async () => (await import("./scale.ts")).benchScale(),
  mqtt: async () => (await import("./mqtt.ts")).benchMqtt(),
  iothub: async () => (await import("./iothub.ts")).benchIotHub(),
  "iothub-feed": async () => (await import("./iothub-feed.ts")).benchIotHubFeed(),
  soak: async () => (await import("./soak.ts")).benchSoak(process.argv.slice(3)),
  fuzz: async () => (await import("./fuzz.ts")).benchFuzz(process.argv.slice(3)),
};

const name = process.argv[2] ?? "";
const bench = benches[name];
if (!bench) {
  console.error(`usage: npm run bench -- <${Object.keys(benches).join("|")}>`);
  process.exitCode = 2;
} else {
  // The soak bench restores the faults it injected before it stops, and handles the signals itself.
  if (name !== "soak") stopOnSignals();
  await bench();
}
