/**
 * The Grafana dashboard the chart ships (charts/devicelet/dashboards/devicelet.json) queries only
 * series devicelet exports: renaming a metric without the dashboard fails here.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { DEVICELET_SERIES } from "./devicelet-metrics.ts";
import { DeviceletMetrics } from "./index.ts";

const dashboardFile = new URL("../../charts/devicelet/dashboards/devicelet.json", import.meta.url);

interface Panel {
  readonly type: string;
  readonly title: string;
  readonly datasource?: { readonly uid?: string };
  readonly targets?: readonly { readonly expr: string }[];
}

/** Every `devicelet_*` series an expression names, with a histogram's or summary's suffix dropped. */
const seriesIn = (expr: string) => [...expr.matchAll(/\bdevicelet_[a-zA-Z0-9_]+/g)].map((m) => m[0]);

/** The names a registry's metrics are queried by, histogram series included. */
function queryable(metrics: DeviceletMetrics): Set<string> {
  const names = new Set<string>();
  for (const metric of metrics.registry.getMetricsAsArray()) {
    names.add(metric.name);
    for (const suffix of ["_bucket", "_sum", "_count"]) names.add(metric.name + suffix);
  }
  return names;
}

describe("Grafana dashboard", () => {
  const dashboard = JSON.parse(readFileSync(dashboardFile, "utf8")) as {
    readonly panels: readonly Panel[];
    readonly templating: { readonly list: readonly { readonly name: string; readonly type: string }[] };
  };
  const panels = dashboard.panels.filter((p) => p.type !== "row");

  it("queries only series devicelet exports", () => {
    const metrics = new DeviceletMetrics();
    metrics.provider.observe({
      pendingChanges: () => 0,
      devicesOutOfSync: () => 0,
      commandsQueued: () => 0,
      transportConnected: () => true,
    });
    const known = queryable(metrics);
    const queried = panels.flatMap((p) => (p.targets ?? []).flatMap((t) => seriesIn(t.expr)));
    expect(queried.length).toBeGreaterThan(20);
    expect(queried.filter((name) => !known.has(name))).toEqual([]);
  });

  it("has a panel for every series devicelet exports apart from the process ones", () => {
    const queried = new Set(
      panels
        .flatMap((p) => (p.targets ?? []).flatMap((t) => seriesIn(t.expr)))
        .map((n) => n.replace(/_(bucket|sum|count)$/, "")),
    );
    expect(DEVICELET_SERIES.filter((name) => !queried.has(name))).toEqual([]);
  });

  it("takes its data source from a template variable", () => {
    expect(dashboard.templating.list).toContainEqual(
      expect.objectContaining({ name: "datasource", type: "datasource" }),
    );
    expect(panels.filter((p) => p.datasource?.uid !== "${datasource}").map((p) => p.title)).toEqual([]);
  });
});
