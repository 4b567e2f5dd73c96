/**
 * The TypeScript type of the value a JSON Schema accepts, so a provider's `create` gets its config
 * typed from the same `configSchema` the engine validates it with (declare the schema `as const`).
 *
 *   const schema = { type: "object", required: ["url"], properties: {
 *     url: { type: "string" }, pollSeconds: { type: "integer", default: 10 } } } as const;
 *   type Config = FromSchema<typeof schema>;   // { url: string; pollSeconds: number }
 *
 * The engine validates with defaults filled in, so a property with a `default` is present.
 * Covered: `type` (one or a list), `properties`, `required`, `additionalProperties`, `items`,
 * `enum`, `const`, `anyOf`/`oneOf`, `nullable`-free JSON types. Anything else (`if`/`then`,
 * `$ref`, `allOf`, `patternProperties`) gives `unknown` for that part: name the config type
 * explicitly instead (`defineProvider<MyConfig>(...)`).
 */

/** The type of an object with no keys: only ever intersected with object types here. */
// eslint-disable-next-line @typescript-eslint/no-generated-empty-object-type -- intended: the identity of `&`
type NoKeys = Record<never, never>;
type Simplify<T> = { [K in keyof T]: T[K] };

type FromType<S, T> = T extends "string"
  ? string
  : T extends "number" | "integer"
    ? number
    : T extends "boolean"
      ? boolean
      : T extends "null"
        ? null
        : T extends "array"
          ? S extends { readonly items: infer I }
            ? FromSchema<I>[]
            : unknown[]
          : T extends "object"
            ? FromObject<S>
            : unknown;

type PropertiesOf<S> = S extends { readonly properties: infer P } ? P : NoKeys;
type RequiredOf<S> = S extends { readonly required: readonly (infer R)[] } ? R : never;
/** Keys present after validation: required ones, and those a default fills in. */
type PresentKeys<S> = {
  [K in keyof PropertiesOf<S>]: K extends RequiredOf<S>
    ? K
    : PropertiesOf<S>[K] extends { readonly default: unknown }
      ? K
      : never;
}[keyof PropertiesOf<S>];

type Extra<S> = S extends { readonly additionalProperties: false }
  ? NoKeys
  : S extends { readonly additionalProperties: infer A extends object }
    ? { [key: string]: FromSchema<A> }
    : PropertiesOf<S> extends Record<string, never>
      ? { [key: string]: unknown }
      : NoKeys;

type FromObject<S> = Simplify<
  { [K in PresentKeys<S> & keyof PropertiesOf<S>]: FromSchema<PropertiesOf<S>[K]> } & {
    [K in Exclude<keyof PropertiesOf<S>, PresentKeys<S>>]?: FromSchema<PropertiesOf<S>[K]>;
  } & Extra<S>
>;

/** The value type a JSON Schema (declared `as const`) accepts, defaults filled in. */
export type FromSchema<S> = S extends { readonly const: infer C }
  ? C
  : S extends { readonly enum: readonly (infer E)[] }
    ? E
    : S extends { readonly anyOf: readonly (infer A)[] }
      ? FromSchema<A>
      : S extends { readonly oneOf: readonly (infer O)[] }
        ? FromSchema<O>
        : S extends { readonly type: readonly (infer T)[] }
          ? FromType<S, T>
          : S extends { readonly type: infer T }
            ? FromType<S, T>
            : unknown;
