import { describe, expect, it } from "vitest";
import type { DeviceInfo } from "../provider/types.ts";
import {
  buildNode,
  buildNodeStatus,
  deviceIdFromProviderId,
  heartbeatConditions,
  isDeviceletNode,
  nodeStatusChanged,
  providerIdFor,
  TRANSPORT_TAINT_KEY,
  transportTaints,
  type NodeStatusOptions,
} from "./build.ts";
import { addressChecker } from "./addresses.ts";
import { capacityProblem, checkBirth } from "./birth.ts";
import { deviceNodeLabels, labelPolicyProblems } from "./labels.ts";
import { DNS1123_SUBDOMAIN, LABEL_VALUE, shortHash } from "./names.ts";

const t0 = new Date("2026-11-01T10:00:00.250Z");
const t1 = new Date("2026-11-01T10:05:00.000Z");

const device: DeviceInfo = {
  id: "Gw_7/sensor",
  deviceClass: "mcu",
  os: "linux",
  arch: "arm64",
  zone: "plant-a",
  gateway: "gw-7",
  labels: { site: "plant a", "example.com/line": "a", "kubernetes.io/hostname": "spoof" },
  capacity: { cpu: "1", memory: "256Mi", "example.com/gpio": "8" },
  addresses: [
    { type: "InternalIP", address: "10.1.2.3" },
    { type: "Hostname", address: "sensor.local" },
    { type: "ExternalIP", address: "203.0.113.9" },
  ],
  connected: true,
  lastSeen: t0,
  nodeInfo: { osImage: "Zephyr 3.7", kernelVersion: "3.7.0", bootID: "boot-1" },
};

const nodeOptions = {
  nodeName: "dl-gw-7-sensor-abc",
  providerName: "mqtt",
  taintKey: "virtual-kubelet.io/provider",
  extraLabels: { team: "edge", "devicelet.dev/transport": "spoof" },
  kubeletPort: 10250,
  kubeletAddress: "192.0.2.10",
  version: "0.1.0",
  now: t0,
};

const statusOptions = (over: Partial<NodeStatusOptions> = {}): NodeStatusOptions => ({
  ready: true,
  readyMessage: "",
  now: t0,
  kubeletPort: 10250,
  kubeletAddress: "192.0.2.10",
  version: "0.1.0",
  ...over,
});

describe("buildNode", () => {
  const node = buildNode(device, nodeOptions);

  it("labels the node, devicelet's labels winning over extra and device labels", () => {
    expect(node.metadata?.labels).toEqual({
      // The device's bare key, re-keyed under the prefix; its other keys are not allowed by default.
      "device.devicelet.dev/site": `plant-a-${shortHash("plant a")}`,
      team: "edge",
      type: "virtual-kubelet",
      "kubernetes.io/os": "linux",
      "kubernetes.io/arch": "arm64",
      "kubernetes.io/hostname": "dl-gw-7-sensor-abc",
      "node.kubernetes.io/exclude-from-external-load-balancers": "true",
      "devicelet.dev/device-id": `Gw_7-sensor-${shortHash("Gw_7/sensor")}`,
      "devicelet.dev/transport": "mqtt",
      "devicelet.dev/device-class": "mcu",
      "devicelet.dev/gateway": "gw-7",
      "topology.kubernetes.io/zone": "plant-a",
    });
    for (const value of Object.values(node.metadata?.labels ?? {})) expect(value).toMatch(LABEL_VALUE);
    expect(node.metadata?.name).toMatch(DNS1123_SUBDOMAIN);
    expect(node.metadata?.annotations).toMatchObject({
      "devicelet.dev/device-id": "Gw_7/sensor",
      "devicelet.dev/gateway": "gw-7",
    });
  });

  it("taints the node and sets the providerID", () => {
    expect(node.spec).toEqual({
      providerID: "devicelet://mqtt/Gw_7%2Fsensor",
      taints: [{ key: "virtual-kubelet.io/provider", value: "devicelet", effect: "NoSchedule" }],
    });
  });

  it("omits gateway and zone labels when the device has none", () => {
    const { zone: _z, gateway: _g, ...bare } = device;
    const labels = buildNode(bare, nodeOptions).metadata?.labels ?? {};
    expect(labels).not.toHaveProperty("devicelet.dev/gateway");
    expect(labels).not.toHaveProperty("topology.kubernetes.io/zone");
  });

  it("carries an initial Ready status", () => {
    expect(node.status?.conditions?.find((c) => c.type === "Ready")?.status).toBe("True");
  });
});

describe("buildNodeStatus", () => {
  it("reports capacity, addresses, endpoint and nodeInfo", () => {
    const status = buildNodeStatus(device, statusOptions());
    expect(status.capacity).toEqual({ cpu: "1", memory: "256Mi", "example.com/gpio": "8", pods: "110" });
    expect(status.allocatable).toEqual(status.capacity);
    expect(status.addresses).toEqual([
      { type: "InternalIP", address: "192.0.2.10" },
      { type: "InternalIP", address: "10.1.2.3" },
      { type: "ExternalIP", address: "203.0.113.9" },
    ]);
    expect(status.daemonEndpoints).toEqual({ kubeletEndpoint: { Port: 10250 } });
    expect(status.nodeInfo).toMatchObject({
      architecture: "arm64",
      operatingSystem: "linux",
      osImage: "Zephyr 3.7",
      kernelVersion: "3.7.0",
      kubeletVersion: "v1.36.3-devicelet-0.1.0",
      containerRuntimeVersion: "devicelet://0.1.0",
      bootID: "boot-1",
    });
    expect(status.nodeInfo?.machineID).toMatch(/^[0-9a-f]{32}$/);
    expect(status.nodeInfo?.systemUUID).toMatch(
      /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
    );
  });

  it("uses a DNS kubelet address as Hostname, first of its type", () => {
    const status = buildNodeStatus(device, statusOptions({ kubeletAddress: "devicelet.devicelet.svc" }));
    expect(status.addresses).toEqual([
      { type: "Hostname", address: "devicelet.devicelet.svc" },
      { type: "InternalIP", address: "10.1.2.3" },
      { type: "Hostname", address: "sensor.local" },
      { type: "ExternalIP", address: "203.0.113.9" },
    ]);
  });

  it("drops device addresses that would outrank the kubelet address", () => {
    const status = buildNodeStatus(
      {
        ...device,
        addresses: [
          { type: "Hostname", address: "sensor.local" },
          { type: "InternalDNS", address: "s.lan" },
        ],
      },
      statusOptions(),
    );
    expect(status.addresses).toEqual([{ type: "InternalIP", address: "192.0.2.10" }]);
    expect(buildNodeStatus(device, statusOptions({ kubeletAddress: "" })).addresses).toEqual(
      device.addresses,
    );
  });

  it("sets the conditions, with heartbeat now", () => {
    const status = buildNodeStatus({ ...device, connected: false }, statusOptions());
    expect(status.conditions?.map((c) => [c.type, c.status, c.reason])).toEqual([
      ["MemoryPressure", "False", "KubeletHasSufficientMemory"],
      ["DiskPressure", "False", "KubeletHasNoDiskPressure"],
      ["PIDPressure", "False", "KubeletHasSufficientPID"],
      ["Ready", "True", "KubeletReady"],
      ["DeviceConnected", "False", "DeviceOffline"],
    ]);
    expect(status.conditions?.find((c) => c.type === "DeviceConnected")?.message).toBe(
      "device is offline; last seen 2026-11-01T10:00:00.000Z",
    );
    for (const c of status.conditions ?? []) expect(c.lastHeartbeatTime).toEqual(t0);
  });

  it("reports devicelet's health, not the device's, as Ready", () => {
    const status = buildNodeStatus(
      { ...device, connected: false },
      statusOptions({ ready: false, readyMessage: "broker down" }),
    );
    expect(status.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      reason: "KubeletNotReady",
      message: "broker down",
    });
  });

  it("keeps lastTransitionTime while a status holds and moves it when it flips", () => {
    // The previous status as read back from the API server: wire strings at whole seconds.
    const previous = JSON.parse(JSON.stringify(buildNodeStatus(device, statusOptions()))) as Parameters<
      typeof nodeStatusChanged
    >[1];
    previous.conditions?.push({ type: "NetworkUnavailable", status: "False", reason: "RouteCreated" });
    const next = buildNodeStatus({ ...device, connected: false }, statusOptions({ now: t1, previous }));
    const byType = new Map(next.conditions?.map((c) => [c.type, c]));
    expect(byType.get("Ready")?.lastTransitionTime).toEqual(t0);
    expect(byType.get("Ready")?.lastHeartbeatTime).toEqual(t1);
    expect(byType.get("DeviceConnected")?.lastTransitionTime).toEqual(t1);
    expect(byType.get("NetworkUnavailable")?.reason).toBe("RouteCreated");
  });
});

describe("nodeStatusChanged", () => {
  const first = buildNodeStatus(device, statusOptions());

  it("ignores heartbeats and time formatting", () => {
    const wire = JSON.parse(JSON.stringify(first)) as Parameters<typeof nodeStatusChanged>[0];
    const later = buildNodeStatus(device, statusOptions({ now: t1, previous: wire }));
    expect(nodeStatusChanged(wire, later)).toBe(false);
    expect(nodeStatusChanged(first, later)).toBe(false);
  });

  it("sees presence, capacity and readiness changes", () => {
    expect(nodeStatusChanged(undefined, first)).toBe(true);
    const offline = buildNodeStatus({ ...device, connected: false }, statusOptions({ previous: first }));
    expect(nodeStatusChanged(first, offline)).toBe(true);
    const bigger = buildNodeStatus(
      { ...device, capacity: { ...device.capacity, cpu: "2" } },
      statusOptions({ previous: first }),
    );
    expect(nodeStatusChanged(first, bigger)).toBe(true);
    const notReady = buildNodeStatus(
      device,
      statusOptions({ ready: false, readyMessage: "x", previous: first }),
    );
    expect(nodeStatusChanged(first, notReady)).toBe(true);
  });

  it("drops a resource the device no longer states to zero", () => {
    const { "example.com/gpio": _gpio, ...rest } = device.capacity;
    const next = buildNodeStatus({ ...device, capacity: rest }, statusOptions({ previous: first }));
    expect(next.capacity).toEqual({ cpu: "1", memory: "256Mi", "example.com/gpio": "0", pods: "110" });
    expect(nodeStatusChanged(first, next)).toBe(true);
  });

  it("does not churn on last-seen updates while the device is online", () => {
    const seenLater = buildNodeStatus(
      { ...device, lastSeen: t1 },
      statusOptions({ now: t1, previous: first }),
    );
    expect(nodeStatusChanged(first, seenLater)).toBe(false);
  });
});

describe("transport state on the node", () => {
  const cond = (
    conditions: { type?: string; status?: string; reason?: string }[] | undefined,
    type: string,
  ) => conditions?.find((c) => c.type === type);

  it("shows a broker outage as TransportConnected=False, never as Ready=False", () => {
    const down = buildNodeStatus(
      device,
      statusOptions({ transport: { connected: false, message: "disconnected from mqtt://b for 40s" } }),
    );
    expect(cond(down.conditions, "Ready")?.status).toBe("True");
    expect(cond(down.conditions, "TransportConnected")).toMatchObject({
      status: "False",
      reason: "TransportDisconnected",
      message: "disconnected from mqtt://b for 40s",
    });
    const up = buildNodeStatus(
      device,
      statusOptions({ previous: down, transport: { connected: true, message: "connected" } }),
    );
    expect(cond(up.conditions, "TransportConnected")?.status).toBe("True");
    expect(nodeStatusChanged(down, up)).toBe(true);
    // Without a transport to report, there is no such condition at all.
    expect(cond(buildNodeStatus(device, statusOptions()).conditions, "TransportConnected")).toBeUndefined();
  });

  it("writes only Ready and TransportConnected for a node whose device is not known yet", () => {
    const previous = buildNodeStatus({ ...device, connected: false }, statusOptions());
    const conditions = heartbeatConditions(
      statusOptions({ now: t1, previous, transport: { connected: false, message: "connecting" } }),
    );
    expect(cond(conditions, "DeviceConnected")?.status).toBe("False");
    expect(cond(conditions, "Ready")?.status).toBe("True");
    expect(cond(conditions, "TransportConnected")?.status).toBe("False");
    expect(conditions.filter((c) => c.type === "Ready")).toHaveLength(1);
  });

  it("adds and removes the NoSchedule taint, keeping everyone else's", () => {
    const theirs = [
      { key: "virtual-kubelet.io/provider", value: "devicelet", effect: "NoSchedule" },
      { key: "node.kubernetes.io/unreachable", effect: "NoExecute", timeAdded: "2026-11-01T10:00:00Z" },
    ];
    const tainted = transportTaints(theirs, true);
    expect(tainted).toEqual([...theirs, { key: TRANSPORT_TAINT_KEY, effect: "NoSchedule" }]);
    expect(transportTaints(tainted, true)).toBeUndefined();
    expect(transportTaints(tainted, false)).toEqual(theirs);
    expect(transportTaints(theirs, false)).toBeUndefined();
    expect(transportTaints(undefined, true)).toEqual([{ key: TRANSPORT_TAINT_KEY, effect: "NoSchedule" }]);
  });
});

describe("device labels on the node", () => {
  const policy = { prefix: "device.devicelet.dev/", allow: ["example.com/line", "acme.io/*"] };
  const hostile = {
    line: "a",
    "device.devicelet.dev/room": "7",
    "example.com/line": "b",
    "example.com/other": "c",
    "acme.io/rack": "r1",
    "kubernetes.io/hostname": "spoof",
    "node-role.kubernetes.io/control-plane": "",
    "node-restriction.kubernetes.io/trusted": "yes",
    "topology.kubernetes.io/zone": "elsewhere",
    "k8s.io/anything": "x",
    "sub.k8s.io/anything": "x",
    "devicelet.dev/transport": "forged",
    "devicelet.dev/test": "forged",
    "x.devicelet.dev/y": "forged",
    type: "forged",
    ["n".repeat(64)]: "too long once prefixed",
  };

  it("keeps prefixed and allowed keys, re-keys bare ones, drops the rest and says why", () => {
    const { labels, dropped } = deviceNodeLabels(hostile, policy);
    expect(labels).toEqual({
      "device.devicelet.dev/line": "a",
      "device.devicelet.dev/room": "7",
      "example.com/line": "b",
      "acme.io/rack": "r1",
      // A bare `type` is re-keyed, so it cannot forge devicelet's own `type` label.
      "device.devicelet.dev/type": "forged",
    });
    expect(dropped.map((d) => d.key).sort()).toEqual(
      [
        "example.com/other",
        "kubernetes.io/hostname",
        "node-role.kubernetes.io/control-plane",
        "node-restriction.kubernetes.io/trusted",
        "topology.kubernetes.io/zone",
        "k8s.io/anything",
        "sub.k8s.io/anything",
        "devicelet.dev/transport",
        "devicelet.dev/test",
        "x.devicelet.dev/y",
        "n".repeat(64),
      ].sort(),
    );
    expect(dropped.find((d) => d.key === "example.com/other")?.why).toContain("nodes.deviceLabels.allow");
  });

  it("never lets a device set a reserved or devicelet key on its node, whatever the policy", () => {
    // Even a policy that (wrongly) allows them; configuration loading refuses such a policy.
    const lax = { prefix: "device.devicelet.dev/", allow: ["kubernetes.io/*", "devicelet.dev/*", "type"] };
    const { zone: _zone, ...noZone } = device;
    const node = buildNode(
      { ...noZone, labels: hostile },
      {
        ...nodeOptions,
        deviceLabels: lax,
      },
    );
    const labels = node.metadata?.labels ?? {};
    expect(labels.type).toBe("virtual-kubelet");
    expect(labels["devicelet.dev/transport"]).toBe("mqtt");
    expect(labels).not.toHaveProperty("topology.kubernetes.io/zone");
    expect(labels).not.toHaveProperty("node-role.kubernetes.io/control-plane");
    expect(labels).not.toHaveProperty("node-restriction.kubernetes.io/trusted");
    expect(labels).not.toHaveProperty("devicelet.dev/test");
    expect(labels["kubernetes.io/hostname"]).toBe(nodeOptions.nodeName);
  });

  it("refuses a configuration that allows reserved keys or a reserved prefix", () => {
    expect(labelPolicyProblems(policy)).toEqual([]);
    const problems = labelPolicyProblems({
      prefix: "node-role.kubernetes.io/",
      allow: [
        "kubernetes.io/arch",
        "topology.kubernetes.io/*",
        "devicelet.dev/transport",
        "type",
        "ok.example/x",
      ],
    });
    expect(problems.map((p) => p.path)).toEqual(["/prefix", "/allow/0", "/allow/1", "/allow/2", "/allow/3"]);
    expect(labelPolicyProblems({ prefix: "devicelet.dev/", allow: [] })).toHaveLength(1);
  });
});

describe("checkBirth", () => {
  const policy = {
    labels: { prefix: "device.devicelet.dev/", allow: [] },
    addresses: addressChecker(["10.0.0.0/8", "fd00::/8"]),
  };

  it("drops addresses that are not IPs, not in range, or not DNS names", () => {
    const { device: checked, problems } = checkBirth(
      {
        ...device,
        labels: {},
        addresses: [
          { type: "InternalIP", address: "10.1.2.3" },
          { type: "InternalIP", address: "999.1.1.1" },
          { type: "InternalIP", address: "010.1.1.1" },
          { type: "ExternalIP", address: "203.0.113.9" },
          { type: "InternalIP", address: "fd00::7" },
          { type: "InternalIP", address: "fe80::1%eth0" },
          { type: "Hostname", address: "sensor.local" },
          { type: "Hostname", address: "Not_A_Name" },
          { type: "InternalDNS", address: "a".repeat(254) },
        ],
      },
      policy,
    );
    expect(checked.addresses.map((a) => a.address)).toEqual(["10.1.2.3", "fd00::7", "sensor.local"]);
    expect(problems).toHaveLength(6);
    expect(new Set(problems.map((p) => p.reason))).toEqual(new Set(["InvalidAddress"]));
    expect(problems.map((p) => p.message).join("\n")).toContain("outside nodes.addressRanges");
  });

  it("leaves out capacity the API server would refuse, keeping the rest", () => {
    const { device: checked, problems } = checkBirth(
      {
        ...device,
        labels: {},
        capacity: {
          cpu: "1.5",
          memory: "-1Gi",
          pods: "1.5",
          "example.com/gpio": "500m",
          "example.com/adc": "4",
          "ephemeral-storage": "1.5.5",
          "hugepages-2Mi": "10X",
          "example.com/big": "1K",
          "example.com/e": "1e",
        },
      },
      { ...policy, addresses: addressChecker([]) },
    );
    expect(checked.capacity).toEqual({ cpu: "1.5", "example.com/adc": "4" });
    expect(problems.map((p) => p.reason)).toEqual(Array(7).fill("InvalidCapacity"));
    expect(problems.map((p) => p.message)).toEqual([
      'capacity memory="-1Gi" is negative; left out of the node',
      'capacity pods="1.5" must be a whole number; left out of the node',
      'capacity example.com/gpio="500m" must be a whole number; left out of the node',
      'capacity ephemeral-storage="1.5.5" is not a Kubernetes quantity; left out of the node',
      'capacity hugepages-2Mi="10X" is not a Kubernetes quantity; left out of the node',
      'capacity example.com/big="1K" is not a Kubernetes quantity; left out of the node',
      'capacity example.com/e="1e" is not a Kubernetes quantity; left out of the node',
    ]);
  });

  it("accepts what Kubernetes accepts", () => {
    for (const q of [
      "0",
      "+4",
      ".5",
      "5.",
      "1e3",
      "1E-3",
      "250m",
      "5u",
      "1n",
      "1Ki",
      "2Gi",
      "1k",
      "0.0001",
    ]) {
      expect(capacityProblem("memory", q), q).toBeUndefined();
    }
    expect(capacityProblem("pods", "-0")).toBeUndefined();
    expect(capacityProblem("kubernetes.io/thing", "1.5")).toBeUndefined();
  });
});

describe("a sleeping device's node", () => {
  it("says DeviceSleeping with the wake time, not DeviceOffline", () => {
    const wakeAt = new Date("2026-11-01T10:15:00.700Z");
    const status = buildNodeStatus({ ...device, connected: false, sleep: { wakeAt } }, statusOptions());
    const c = status.conditions?.find((x) => x.type === "DeviceConnected");
    expect([c?.status, c?.reason]).toEqual(["False", "DeviceSleeping"]);
    expect(c?.message).toBe(
      "device is sleeping until 2026-11-01T10:15:00.000Z; last seen 2026-11-01T10:00:00.000Z",
    );
    const noWake = buildNodeStatus({ ...device, connected: false, sleep: {} }, statusOptions());
    expect(noWake.conditions?.find((x) => x.type === "DeviceConnected")?.message).toContain(
      "with no wake time given",
    );
  });

  it("counts as a status change when the device falls asleep", () => {
    const offline = buildNodeStatus({ ...device, connected: false }, statusOptions());
    const asleep = buildNodeStatus({ ...device, connected: false, sleep: {} }, statusOptions());
    expect(nodeStatusChanged(offline, asleep)).toBe(true);
  });
});

describe("isDeviceletNode", () => {
  const ids = { providerName: "mqtt", deviceId: "worker-1" };
  it("adopts only a node with this device's providerID or devicelet's type and transport labels", () => {
    expect(isDeviceletNode({ spec: { providerID: "devicelet://mqtt/worker-1" } }, ids)).toBe(true);
    expect(
      isDeviceletNode(
        { metadata: { labels: { type: "virtual-kubelet", "devicelet.dev/transport": "mqtt" } } },
        ids,
      ),
    ).toBe(true);
    // A kubeadm node, another device's providerID, another provider's or another virtual kubelet's.
    expect(isDeviceletNode({ metadata: { labels: { "kubernetes.io/hostname": "worker-1" } } }, ids)).toBe(
      false,
    );
    expect(isDeviceletNode({ spec: { providerID: "devicelet://mqtt/worker-2" } }, ids)).toBe(false);
    expect(isDeviceletNode({ spec: { providerID: "aws:///eu-west-1a/i-0abc" } }, ids)).toBe(false);
    expect(
      isDeviceletNode(
        { metadata: { labels: { type: "virtual-kubelet", "devicelet.dev/transport": "mock" } } },
        ids,
      ),
    ).toBe(false);
    expect(isDeviceletNode({ metadata: { labels: { type: "virtual-kubelet" } } }, ids)).toBe(false);
  });
});

describe("deviceIdFromProviderId", () => {
  it("reads back the device id of every providerID providerIdFor writes", () => {
    for (const id of ["worker-1", "Gw_7/sensor", "plant a/line#2?x=1", "ünï-⚙", "%41", "a%2Fb", "/"]) {
      expect(deviceIdFromProviderId("mqtt", providerIdFor("mqtt", id))).toBe(id);
    }
    expect(deviceIdFromProviderId("mqtt", "devicelet://mqtt/Gw_7%2Fsensor")).toBe("Gw_7/sensor");
  });

  it("reads nothing from a providerID devicelet would not have written for that provider", () => {
    for (const providerID of [
      undefined,
      "",
      "devicelet://mqtt/", // no device id
      "devicelet://mock/worker-1", // another provider's
      "devicelet://mqttx/worker-1",
      "aws:///eu-west-1a/i-0abc",
      "devicelet://mqtt/%E0%A4%A", // a malformed escape
      "devicelet://mqtt/%41", // "A", but providerIdFor writes it as it is
      "devicelet://mqtt/a/b", // providerIdFor escapes the slash
    ]) {
      expect(deviceIdFromProviderId("mqtt", providerID), String(providerID)).toBeUndefined();
    }
  });
});
