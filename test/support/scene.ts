/**
 * The one scene every MQTT integration test runs in: a namespace of its own, a Mosquitto of its
 * own (persistence on), the real `devicelet run` with provider mqtt against it, and simulated
 * devices speaking the real protocol, all up and registered as nodes before the first test.
 *
 *   const scene = mqttScene({ id, devices: [{ id: `${id}-gw`, kind: "gateway" }] });
 *   beforeAll(() => scene.start());
 *   afterAll(() => scene.stop());
 *   it("…", async () => {
 *     await apply(barePod({ namespace: scene.namespace, testId: id, name: "p", node: `${id}-gw` }));
 *     await scene.broker.stop(); await scene.broker.start();   // a real broker outage
 *     scene.device(`${id}-gw`).runningPods();                   // what the device runs
 *   });
 *
 * `stop()` takes down whatever `start()` got to (devices, then devicelet, then the broker, then the
 * namespace), also after a start that failed half-way, and is safe to call twice. A second devicelet
 * on the same broker and state (`startDevicelet`) is stopped with it, before the first. The handles
 * (`broker`, `devicelet`, `sim`) throw when read before the part exists.
 */
import type { Broker } from "../../hack/testenv/mosquitto.ts";
import {
  startSimulator,
  type SimDevice,
  type SimDeviceSpec,
  type Simulator,
  type SimulatorOptions,
} from "../../src/device/simulator.ts";
import { kubectl } from "./kubectl.ts";
import {
  expectNodeCount,
  startBroker,
  startMqttDevicelet,
  stopAll,
  type MqttDeviceletOptions,
  type RunningMqttDevicelet,
} from "./mqtt.ts";

/** What the scene needs of a broker: where devices connect, and how to stop it. */
export interface SceneBroker {
  /** Plain `mqtt://` listener; the simulated devices connect here. */
  readonly url: string;
  stop(): Promise<void>;
}

export interface SceneOptions<B extends SceneBroker> {
  /** Unique per test file (`uniqueName(…)`): the namespace, the node label, the allowed device prefix. */
  readonly id: string;
  /** Simulated devices; each id must start with `<id>-` to be allowed by devicelet. */
  readonly devices: readonly SimDeviceSpec[];
  /** Simulator settings other than the broker and the devices (default app start: 100 ms). */
  readonly simulator?: Omit<SimulatorOptions, "brokerUrl" | "devices">;
  /** Merged over devicelet's provider config (see startMqttDevicelet); a function gets the started broker. */
  readonly provider?: Record<string, unknown> | ((broker: B) => Record<string, unknown>);
  /** Merged over devicelet's core config. */
  readonly core?: Record<string, unknown>;
  /** Node.js flags for the devicelet process. */
  readonly nodeFlags?: readonly string[];
  /** Starts the broker; default a plain Mosquitto of the scene's own (startBroker). */
  readonly broker?: (id: string) => Promise<B>;
  /**
   * false: no devicelet (the test plays devicelet itself); no nodes are awaited then. Default true,
   * and start() resolves once every device is a node.
   */
  readonly devicelet?: boolean;
}

export interface MqttScene<B extends SceneBroker> {
  readonly id: string;
  /** The test's namespace; devicelet keeps its state ConfigMaps here too. */
  readonly namespace: string;
  /** `devicelet.dev/test=<id>`: selects the scene's nodes. */
  readonly nodeSelector: string;
  readonly broker: B;
  readonly devicelet: RunningMqttDevicelet;
  readonly sim: Simulator;
  /** A simulated device by id; throws for an unknown one. */
  device(id: string): SimDevice;
  /** Namespace, broker, devicelet, devices; resolves once every device is a node. */
  start(): Promise<void>;
  /**
   * One more devicelet process against the scene's broker and namespace (a second replica on the
   * same state), after start(). Its `id` names its log folder, node label, client id and allowed
   * devices unless `provider`/`core` say otherwise. stop() stops it, before the scene's devicelet.
   */
  startDevicelet(
    options: Omit<MqttDeviceletOptions, "brokerUrl" | "namespace">,
  ): Promise<RunningMqttDevicelet>;
  /** Everything start() got to, in reverse; runs every step, then throws the first failure. */
  stop(): Promise<void>;
}

export function mqttScene(options: SceneOptions<Broker>): MqttScene<Broker>;
export function mqttScene<B extends SceneBroker>(
  options: SceneOptions<B> & { broker: (id: string) => Promise<B> },
): MqttScene<B>;
export function mqttScene<B extends SceneBroker>(options: SceneOptions<B>): MqttScene<B> {
  const { id } = options;
  // Without a factory the overloads make B the harness Mosquitto's Broker, which startBroker returns.
  const startBrokerOf =
    options.broker ?? ((name: string) => startBroker(name) as Promise<SceneBroker> as Promise<B>);
  let namespaceCreated = false;
  let broker: B | undefined;
  let devicelet: RunningMqttDevicelet | undefined;
  let sim: Simulator | undefined;
  const extraDevicelets: RunningMqttDevicelet[] = [];
  const missing = (part: string): never => {
    throw new Error(`scene ${id}: no ${part} (start() not called, or it failed before)`);
  };
  const scene: MqttScene<B> = {
    id,
    namespace: id,
    nodeSelector: `devicelet.dev/test=${id}`,
    get broker() {
      return broker ?? missing("broker");
    },
    get devicelet() {
      return devicelet ?? missing("devicelet");
    },
    get sim() {
      return sim ?? missing("simulator");
    },
    device: (deviceId) => (sim ?? missing("simulator")).device(deviceId),
    async start() {
      await kubectl(["create", "namespace", id]);
      namespaceCreated = true;
      broker = await startBrokerOf(id);
      if (options.devicelet !== false) {
        devicelet = await startMqttDevicelet({
          id,
          brokerUrl: broker.url,
          namespace: id,
          ...(options.provider === undefined
            ? {}
            : {
                provider:
                  typeof options.provider === "function" ? options.provider(broker) : options.provider,
              }),
          ...(options.core === undefined ? {} : { core: options.core }),
          ...(options.nodeFlags === undefined ? {} : { nodeFlags: options.nodeFlags }),
        });
      }
      sim = await startSimulator({
        appStartMs: 100,
        ...options.simulator,
        brokerUrl: broker.url,
        devices: [...options.devices],
      });
      if (devicelet) await expectNodeCount(devicelet.nodeSelector, options.devices.length);
    },
    async startDevicelet(extra) {
      const started = await startMqttDevicelet({
        ...extra,
        brokerUrl: (broker ?? missing("broker")).url,
        namespace: id,
      });
      extraDevicelets.push(started);
      return started;
    },
    async stop() {
      await stopAll(
        async () => sim?.stop(),
        ...extraDevicelets
          .splice(0)
          .reverse()
          .map((extra) => () => extra.stop()),
        async () => devicelet?.stop(),
        async () => broker?.stop(),
        async () => {
          if (namespaceCreated)
            await kubectl(["delete", "namespace", id, "--wait=false", "--ignore-not-found"]);
          namespaceCreated = false;
        },
      );
    },
  };
  return scene;
}
