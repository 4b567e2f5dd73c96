import pino from "pino";
import { describe, expect, it } from "vitest";
import { createKubeClient } from "../../src/kube/index.ts";
import { ConfigMapStore } from "../../src/state/configmap-store.ts";
import { kubectl } from "../support/kubectl.ts";
import { deviceletKubeconfig, uniqueName } from "../support/testenv.ts";

describe("ConfigMapStore", () => {
  it("keeps values in the API server under devicelet's own identity, readable by a new instance", async () => {
    const ns = uniqueName("state");
    await kubectl(["create", "namespace", ns]);
    const kube = () =>
      createKubeClient({
        kubeconfigPath: deviceletKubeconfig(),
        qps: 50,
        burst: 50,
        logger: pino({ level: "silent" }),
      });
    const first = new ConfigMapStore(kube(), ns);
    expect(await first.get("mqtt.gw-1")).toBeUndefined();
    await first.set("mqtt.gw-1", '{"epoch":"e1","reservedThrough":1000}');
    await first.set("mqtt.gw-1", '{"epoch":"e1","reservedThrough":2000}');
    await first.set("mqtt.GW_2", "x");

    const second = new ConfigMapStore(kube(), ns);
    expect(await second.get("mqtt.gw-1")).toBe('{"epoch":"e1","reservedThrough":2000}');
    expect(await second.get("mqtt.GW_2")).toBe("x");
    const names = (
      await kubectl([
        "get",
        "configmaps",
        "-n",
        ns,
        "-l",
        "app.kubernetes.io/managed-by=devicelet",
        "-o",
        "name",
      ])
    )
      .trim()
      .split("\n");
    expect(names).toHaveLength(2);
    await kubectl(["delete", "namespace", ns, "--wait=false"]);
  });
});
