/**
 * What every configuration check reports, schema or rule alike. A leaf of `src/config` so the
 * rules (`rules.ts`) and the loader (`load.ts`) can both name it without importing each other.
 */

/** One thing wrong with a configuration file. */
export interface ConfigProblem {
  /** JSON pointer into the document (`/api/qps`), or `""` for the whole file / a YAML syntax error. */
  readonly path: string;
  readonly message: string;
  /** 1-based line in the file, when it can be located. */
  readonly line?: number;
  readonly column?: number;
}
