/**
 * Global setup of the integration project: when vitest collects coverage, hands the tests the
 * folder their child processes write raw V8 coverage to (coverage/children, which `vitest
 * --coverage` empties at its start and hack/coverage.ts reads at the end). See child-coverage.setup.ts.
 */
import path from "node:path";
import type { TestProject } from "vitest/node";

declare module "vitest" {
  export interface ProvidedContext {
    /** Where child processes write raw V8 coverage; "" when coverage is off. */
    childCoverageDir: string;
  }
}

export default function setup(project: TestProject): void {
  const { coverage } = project.vitest.config;
  project.provide(
    "childCoverageDir",
    coverage.enabled ? path.join(coverage.reportsDirectory, "children") : "",
  );
}
