/**
 * devicelet's configuration: the file given to `devicelet run --config <file.yaml>`.
 *
 * Validated once at the edge, then frozen (docs/architecture.md, decision 7): YAML is parsed, the core schema
 * and the selected provider's schema are checked in one ajv pass with defaults filled in, and a
 * {@link ConfigError} lists every problem with its JSON path and line. See docs/configuration.md.
 *
 * ```ts
 * import { loadConfig, registerProviderSchema } from "../config/index.ts";
 * import { mockConfigSchema } from "../../providers/mock/index.ts";
 *
 * registerProviderSchema("mock", mockConfigSchema);
 * const config = await loadConfig("examples/mock.yaml"); // throws ConfigError
 * config.api.qps; // 100 unless set; config is deep-frozen
 * ```
 */
export { deepFreeze } from "../base/freeze.ts";
export {
  ConfigError,
  formatProblem,
  isCidr,
  loadConfig,
  parseConfig,
  registerConfigCheck,
  registerProviderSchema,
  validateWithSchema,
  type ConfigProblem,
  type ParseOptions,
  type ProviderConfigSchema,
} from "./load.ts";
export {
  compare,
  fileProblem,
  readableFile,
  together,
  valueAt,
  type ConfigCheck,
  type RuleProblem,
} from "./rules.ts";
export {
  coreConfigSchema,
  labelMapSchema,
  LOG_LEVELS,
  patterns,
  type DeviceletConfig,
  type KubeletConfig,
  type LogLevel,
  type ProviderSection,
} from "./schema.ts";
