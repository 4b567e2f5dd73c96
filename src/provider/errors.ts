/**
 * Errors a provider throws, classified by what the engine should do about them rather than by
 * where they came from. Each has a stable `code` that survives serialisation and logging; use
 * the `is*` guards instead of `instanceof` so errors from another copy of this module still match.
 */

export const ProviderErrorCode = {
  NotFound: "DEVICELET_NOT_FOUND",
  InvalidInput: "DEVICELET_INVALID_INPUT",
  Transient: "DEVICELET_TRANSIENT",
  Unsupported: "DEVICELET_UNSUPPORTED",
} as const;
export type ProviderErrorCode = (typeof ProviderErrorCode)[keyof typeof ProviderErrorCode];

export class ProviderError extends Error {
  readonly code: ProviderErrorCode;
  constructor(code: ProviderErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ProviderError";
    this.code = code;
  }
}

/** The thing asked for does not exist on the provider (a pod it never ran, a device it never saw). */
export const notFound = (message: string, options?: ErrorOptions) =>
  new ProviderError(ProviderErrorCode.NotFound, message, options);
/** The request can never succeed as given; retrying is pointless. */
export const invalidInput = (message: string, options?: ErrorOptions) =>
  new ProviderError(ProviderErrorCode.InvalidInput, message, options);
/** Worth retrying with backoff: a broker away, a timeout, a device busy. */
export const transient = (message: string, options?: ErrorOptions) =>
  new ProviderError(ProviderErrorCode.Transient, message, options);
/** The provider or device cannot do this at all (a pod field, logs on a microcontroller). */
export const unsupported = (message: string, options?: ErrorOptions) =>
  new ProviderError(ProviderErrorCode.Unsupported, message, options);

const hasCode = (err: unknown, code: ProviderErrorCode): boolean =>
  typeof err === "object" && err !== null && (err as { code?: unknown }).code === code;

export const isNotFound = (err: unknown) => hasCode(err, ProviderErrorCode.NotFound);
export const isInvalidInput = (err: unknown) => hasCode(err, ProviderErrorCode.InvalidInput);
export const isTransient = (err: unknown) => hasCode(err, ProviderErrorCode.Transient);
export const isUnsupported = (err: unknown) => hasCode(err, ProviderErrorCode.Unsupported);

/** Errors the engine must not retry: the same call would fail the same way. */
export const isTerminal = (err: unknown) => isInvalidInput(err) || isUnsupported(err);
