/**
 * The device side of devicelet: what runs on (or stands in for) a gateway or a microcontroller.
 *
 * - {@link DeviceSession} (session.ts) speaks the protocol for one device id: will, subscriptions,
 *   birth, staged acks, exactly-once application of desired documents, coalesced reports,
 *   commands, sleep, reboot. It runs over a {@link DeviceLink} (link.ts; MQTT in mqtt-link.ts, the
 *   only file here that imports `mqtt`) and hands documents to a {@link Runtime} (runtime.ts).
 * - {@link ProcessRuntime} (process-runtime.ts, supervisor.ts): apps as supervised processes.
 * - {@link SimRuntime} and the simulator (sim-runtime.ts, simulator.ts): thousands of simulated
 *   devices in one process, for tests and benchmarks.
 * - The agent (agent.ts): ProcessRuntime + DeviceSession + a state file, for Linux gateways.
 * - `kubectl logs`/`exec` sessions ({@link IoSessions}, io-sessions.ts) and the periodic `stats`
 *   message ({@link StatsReporter}, stats.ts), run by every session over its runtime's hooks:
 *   captured output (log-ring.ts), exec (process-exec.ts, sim-exec.ts), /proc (proc-stats.ts).
 *
 *   // a simulated fleet, as other tests and benchmarks use it
 *   const sim = await startSimulator({ brokerUrl, devices: fleetSpec({ gateways: 10, childrenPerGateway: 4, mcus: 10, prefix: "t" }) });
 *   sim.device("t-gw-0").applies;
 *
 *   // one device over MQTT with your own runtime
 *   const transport = new MqttTransport({ url, clientId: "gw-1", logger });
 *   const session = new DeviceSession({ deviceId: "gw-1", link: transport.link("gw-1"), runtime, device, logger });
 *   await session.start();
 */
export { parseAgentConfig, startAgent, agentConfigSchema, type Agent, type AgentConfig } from "./agent.ts";
export { DesiredApplier, type AppliedGeneration, type ApplierHooks } from "./applier.ts";
export { CommandRunner, type CommandAck } from "./commands.ts";
export { classifyInbound, type Inbound } from "./inbound.ts";
export { IoSessions, rfc3339Nano, type IoCapabilities, type IoSessionsOptions } from "./io-sessions.ts";
export { AppLog, type LogLine, type LogQuery } from "./log-ring.ts";
export { ProcReader, parseMeminfo, parseProcStat, parseSystemStat } from "./proc-stats.ts";
export { Outbox, type DesiredAck } from "./outbox.ts";
export { systemClock, type Clock } from "../base/clock.ts";
export type { DeviceLink, LinkHandlers, LinkWill } from "./link.ts";
export { MqttTransport, type MqttTransportOptions } from "./mqtt-link.ts";
export { ProcessRuntime, type ProcessRuntimeOptions } from "./process-runtime.ts";
export {
  RuntimeRefusal,
  admit,
  kubeletBackoff,
  podPhase,
  restartDelay,
  shouldRestart,
  type BackoffOptions,
  type AppLogView,
  type ExecRequest,
  type ExecResult,
  type Runtime,
  type RuntimeEvent,
  type RuntimeExec,
  type RuntimeStats,
} from "./runtime.ts";
export { DeviceSession, type BirthInfo, type DeviceSessionOptions } from "./session.ts";
export { SimRuntime, type SimRuntimeOptions } from "./sim-runtime.ts";
export { StatsReporter, type StatsReporterOptions } from "./stats.ts";
export {
  fleetSpec,
  startSimulator,
  type SimDevice,
  type SimDeviceSpec,
  type Simulator,
  type SimulatorOptions,
} from "./simulator.ts";
export { fileStore, memoryStore, type PersistedSession, type SessionStore } from "./store.ts";
