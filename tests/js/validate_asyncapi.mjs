// Validate an AsyncAPI document with the official parser (@asyncapi/parser).
// Usage: node validate_asyncapi.mjs DOCUMENT.json
// Prints the parser's diagnostics as JSON lines; exits 1 if any is an error (severity 0), else 0.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const text = readFileSync(process.argv[2], "utf8");
const { document, diagnostics } = await new Parser().parse(text);
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
const errors = diagnostics.filter((d) => d.severity === 0);
process.exit(document && errors.length === 0 ? 0 : 1);
