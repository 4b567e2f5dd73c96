// typescript-eslint strict type-checked rules over the whole project, with Prettier owning format.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", ".testenv/", "coverage/"] },
  js.configs.recommended,
  ...tseslint.configs.strictTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: { allowDefaultProject: ["bin/*.js", "eslint.config.js"] } },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/restrict-template-expressions": [
        "error",
        { allowNumber: true, allowBoolean: true },
      ],
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-confusing-void-expression": ["error", { ignoreArrowShorthand: true }],
    },
  },
  {
    // An ES import of node:http reads all its exports, and three of them load Node.js's own undici
    // (2.3 MiB of heap): devicelet takes the module with process.getBuiltinModule.
    files: ["src/**/*.ts", "providers/**/*.ts"],
    ignores: ["**/*.test.ts", "src/testing/**"],
    rules: {
      "@typescript-eslint/no-restricted-imports": [
        "error",
        {
          paths: [
            {
              name: "node:http",
              allowTypeImports: true,
              message: 'Use process.getBuiltinModule("node:http"): importing it loads Node.js\'s undici.',
            },
            {
              name: "http",
              allowTypeImports: true,
              message: 'Use process.getBuiltinModule("node:http"): importing it loads Node.js\'s undici.',
            },
          ],
        },
      ],
    },
  },
  {
    // Fakes in tests implement promise-returning contracts without always awaiting anything.
    files: ["**/*.test.ts", "test/**/*.ts"],
    rules: { "@typescript-eslint/require-await": "off" },
  },
  {
    files: ["bin/*.js", "eslint.config.js"],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: { process: "readonly", URL: "readonly", console: "readonly" } },
  },
);
