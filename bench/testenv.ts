/** Where the benchmarks' harness control plane is recorded: `$DEVICELET_TESTENV_DIR`, else `.testenv`. */
import path from "node:path";

export const testenvDir =
  process.env.DEVICELET_TESTENV_DIR ?? path.resolve(import.meta.dirname, "../.testenv");
