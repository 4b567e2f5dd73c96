import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// Two projects: `unit` needs nothing running; `integration` gets the real control plane from the
// global setup (started once per run, or reused when `npm run testenv -- up` left one running).
// `devicelet/provider` as a provider package imports it: the sources, as the "devicelet-source"
// condition of package.json "exports" gives them to Node and tsc in this checkout.
const resolve = {
  alias: [
    {
      find: /^devicelet\/provider\/testing$/,
      replacement: fileURLToPath(new URL("src/testing/index.ts", import.meta.url)),
    },
    {
      find: /^devicelet\/provider$/,
      replacement: fileURLToPath(new URL("src/provider/index.ts", import.meta.url)),
    },
  ],
};

export default defineConfig({
  test: {
    projects: [
      {
        resolve,
        test: {
          name: "unit",
          include: [
            "src/**/*.test.ts",
            "providers/**/*.test.ts",
            "test/unit/**/*.test.ts",
            "bench/**/*.test.ts",
          ],
          // In `npm test` the unit files share the two cores with the integration project's control
          // plane, brokers and devicelet processes: CPU-bound property tests (1,500 generated pods)
          // took over the 5 s default there while taking about 1 s alone.
          testTimeout: 30_000,
        },
      },
      {
        resolve,
        test: {
          name: "integration",
          include: ["test/integration/**/*.test.ts"],
          globalSetup: ["test/global-setup.ts", "test/child-coverage.global.ts"],
          setupFiles: ["test/child-coverage.setup.ts"],
          testTimeout: 180_000,
          hookTimeout: 240_000,
          // Two cores: integration files share one control plane; run them one at a time.
          fileParallelism: false,
        },
      },
    ],
    // `npm test` runs with coverage, then hack/coverage.ts adds what the child processes of the
    // integration tests ran (the devicelet CLI, the agent; they write raw V8 coverage to
    // coverage/children) to the JSON report here, and holds the sum to the thresholds there.
    coverage: {
      provider: "v8",
      include: ["src/**", "providers/**"],
      exclude: ["**/*.test.ts"],
      reporter: ["json"],
    },
  },
});
