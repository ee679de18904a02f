// Build the component into ../static (committed, so that `pip install medsuite` needs no Node):
//   cd medsuite/viewer/frontend && npm ci && npm run build
// One minified ES module (the sources in src/, no runtime dependencies) plus index.html.
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static");
mkdirSync(out, { recursive: true });
rmSync(join(out, "THIRD_PARTY_LICENSES.txt"), { force: true });

const result = await esbuild.build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  outfile: join(out, "viewer.js"),
  legalComments: "none",
  metafile: true,
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
const size = Object.values(result.metafile.outputs)[0].bytes;
console.log(`viewer.js ${(size / 1024).toFixed(1)} KiB from ${Object.keys(result.metafile.inputs).length} source files`);
