/**
 * What must never reach a log line: Secret-derived values and credentials. Two tools, used by every
 * process devicelet ships (`devicelet run`, `devicelet agent`):
 *
 * - {@link redaction}: pino's `redact` option. pino replaces the listed paths with "[redacted]"
 *   wherever they occur at the top of a log object or up to two objects down, so a workload, a
 *   desired pod, a whole desired document, a Secret or a ConfigMap logged under any key loses its
 *   env, file contents and data. Paths cannot be recursive, so log objects are kept shallow: log
 *   ids and counts, not documents.
 * - {@link withoutCredentials}: a URL as it may be shown (logs, node conditions, Events), with any
 *   `user:password@` removed.
 * - {@link urlLocation}: only a URL's scheme, host and path, for URLs whose query may carry a token
 *   (pre-signed file references) and so must not reach a message either.
 *
 *   const logger = pino({ level, redact: redaction });
 *   logger.info({ url: withoutCredentials(config.broker.url) }, "connecting");
 */

/** Keys whose values carry Secret material or credentials, as paths from a logged object. */
const SECRET_LEAVES = [
  "env",
  "secretEnv",
  "files[*].content",
  "apps[*].env",
  "apps[*].secretEnv",
  "apps[*].files[*].content",
  "pods[*].apps[*].env",
  "pods[*].apps[*].secretEnv",
  "pods[*].apps[*].files[*].content",
  "data",
  "stringData",
  "binaryData",
  "password",
  "token",
] as const;

/** Where a leaf may sit: the log object itself, or one or two objects down. */
const DEPTHS = ["", "*.", "*.*."] as const;

/** Paths pino replaces with "[redacted]" (fast-redact syntax). */
export const SECRET_REDACT_PATHS: readonly string[] = DEPTHS.flatMap((depth) =>
  SECRET_LEAVES.map((leaf) => `${depth}${leaf}`),
);

/** pino's `redact` option: the paths above, censored with "[redacted]". */
export const redaction = { paths: [...SECRET_REDACT_PATHS], censor: "[redacted]" };

/** `mqtt://user:pass@host:1883/x` → `mqtt://host:1883/x`; anything without userinfo unchanged. */
export const withoutCredentials = (url: string): string =>
  url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/?#]*@/i, "$1");

/**
 * A URL's scheme, host and path, as it may be shown in a message that leaves the process (app
 * status, pod status, Events, logs): `https://u:p@host/f?X-Amz-Signature=…#x` → `https://host/f`.
 * Userinfo, query and fragment are dropped: a pre-signed URL carries its token in the query.
 */
export const urlLocation = (url: string): string => {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
  } catch {
    // Not a URL the WHATWG parser takes: cut the same parts by hand.
    return withoutCredentials(url).replace(/[?#][\s\S]*$/, "");
  }
};
