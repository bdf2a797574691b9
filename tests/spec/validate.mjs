// Validates generated contract documents with real validators; exits non-zero on any error.
//
//   node validate.mjs asyncapi FILE   # @asyncapi/parser (AsyncAPI 3.0 + its Spectral ruleset)
//   node validate.mjs openapi FILE    # @redocly/openapi-core lint, `recommended` ruleset
//
// Only error-severity findings fail: warnings and hints are printed, so they stay visible.
// Module resolution goes through NODE_PATH-free `createRequire` on the install directory
// given by SPEC_VALIDATORS_DIR (tests/spec/install.sh puts the pinned packages there).
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const [kind, file] = process.argv.slice(2);
const dir = process.env.SPEC_VALIDATORS_DIR;
if (!kind || !file || !dir) {
  console.error("usage: SPEC_VALIDATORS_DIR=DIR node validate.mjs asyncapi|openapi FILE");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(dir), "package.json"));
const source = readFileSync(file, "utf8");

function report(findings) {
  for (const f of findings) {
    console.log(`${f.severity}: ${f.where}: ${f.message} [${f.code}]`);
  }
  const errors = findings.filter((f) => f.severity === "error").length;
  console.log(`${kind}: ${errors} error(s), ${findings.length - errors} other finding(s)`);
  process.exit(errors > 0 ? 1 : 0);
}

if (kind === "asyncapi") {
  const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");
  const { diagnostics, document } = await new Parser().parse(source, { source: file });
  const severity = (s) =>
    s === DiagnosticSeverity.Error ? "error" : s === DiagnosticSeverity.Warning ? "warning" : "info";
  const findings = diagnostics.map((d) => ({
    severity: severity(d.severity),
    where: "/" + (d.path || []).join("/"),
    message: d.message,
    code: d.code,
  }));
  if (!document && !findings.some((f) => f.severity === "error")) {
    findings.push({ severity: "error", where: "/", message: "not parsed", code: "no-document" });
  }
  report(findings);
} else if (kind === "openapi") {
  const { createConfig, lintFromString } = require("@redocly/openapi-core");
  const config = await createConfig({ extends: ["recommended"] });
  const problems = await lintFromString({ source, absoluteRef: path.resolve(file), config });
  report(
    problems.map((p) => ({
      severity: p.severity,
      where: (p.location || []).map((l) => l.pointer).join(", "),
      message: p.message,
      code: p.ruleId,
    })),
  );
} else {
  console.error(`unknown document kind: ${kind}`);
  process.exit(2);
}
