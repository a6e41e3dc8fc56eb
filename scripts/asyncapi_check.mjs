// Validates schemas/asyncapi.yaml with @asyncapi/parser, offline: `make asyncapi-check`.
//
// Usage: node scripts/asyncapi_check.mjs [FILE] (default schemas/asyncapi.yaml). The parser is loaded from
// ASYNCAPI_PARSER_DIR (default .tools/asyncapi, installed by `make asyncapi-tools`), not from a global
// install, so the version is the one pinned in scripts/asyncapi/package-lock.json.
//
// Fails (exit 1) on any parser diagnostic of severity error, on any `$ref` that is not local (a `#`
// pointer or a relative file path) in the document or in a file it references, and on any http(s) read:
// the check must not depend on the network.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const file = path.resolve(process.argv[2] ?? "schemas/asyncapi.yaml");
const toolDir = path.resolve(process.env.ASYNCAPI_PARSER_DIR ?? ".tools/asyncapi");
const require = createRequire(path.join(toolDir, "package.json"));
const { Parser, fromFile, DiagnosticSeverity } = require("@asyncapi/parser");
const parserVersion = require("@asyncapi/parser/package.json").version;
const yaml = require("js-yaml");

const problems = [];

// Walks every `$ref` of a document and of the local files it points to (each file once).
function collectRefs(target, seen) {
  if (seen.has(target)) return;
  seen.add(target);
  const text = readFileSync(target, "utf8");
  const doc = target.endsWith(".json") ? JSON.parse(text) : yaml.load(text);
  const walk = (node, where) => {
    if (Array.isArray(node)) {
      node.forEach((item, i) => walk(item, `${where}/${i}`));
    } else if (node && typeof node === "object") {
      for (const [key, value] of Object.entries(node)) {
        if (key === "$ref" && typeof value === "string") {
          checkRef(value, target, `${where}/$ref`, seen);
        } else {
          walk(value, `${where}/${key}`);
        }
      }
    }
  };
  walk(doc, "");
}

function checkRef(ref, from, where, seen) {
  const rel = path.relative(process.cwd(), from);
  if (ref.startsWith("#")) return;
  if (/^[a-z][a-z0-9+.-]*:/i.test(ref) || ref.startsWith("//")) {
    problems.push(`${rel}${where}: non-local $ref ${ref}`);
    return;
  }
  const target = path.resolve(path.dirname(from), ref.split("#")[0]);
  try {
    collectRefs(target, seen);
  } catch (err) {
    problems.push(`${rel}${where}: cannot read ${ref}: ${err.message}`);
  }
}

collectRefs(file, new Set());

const offline = () => {
  throw new Error("remote $ref: the AsyncAPI check runs offline");
};
const parser = new Parser({
  __unstable: {
    resolver: {
      resolvers: [
        { schema: "http", order: 0, read: offline },
        { schema: "https", order: 0, read: offline },
      ],
    },
  },
});
const { document, diagnostics } = await fromFile(parser, file).parse();
const label = ["error", "warning", "info", "hint"];
for (const d of diagnostics) {
  const line = `${label[d.severity] ?? d.severity} ${d.code} at ${d.path.join("/")}: ${d.message}`;
  if (d.severity === DiagnosticSeverity.Error) problems.push(line);
  else console.log(line);
}

if (problems.length > 0 || document === undefined) {
  for (const p of problems) console.error(p);
  console.error(`asyncapi-check: ${path.relative(process.cwd(), file)} is invalid (@asyncapi/parser ${parserVersion})`);
  process.exit(1);
}
console.log(
  `asyncapi-check: ${path.relative(process.cwd(), file)} is valid (@asyncapi/parser ${parserVersion}): ` +
    `${document.channels().length} channels, ${document.operations().length} operations, ` +
    `${document.messages().length} messages`,
);
