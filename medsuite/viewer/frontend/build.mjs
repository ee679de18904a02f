// Build the component into ../static (committed, so that `pip install medsuite` needs no Node):
//   cd medsuite/viewer/frontend && npm ci && npm run build
// One ES module (NiiVue and its small dependencies, minified) plus index.html and the third-party licences.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static");
mkdirSync(out, { recursive: true });

const result = await esbuild.build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  outfile: join(out, "viewer.js"),
  alias: { zarrita: join(here, "src", "zarr-stub.js") },
  legalComments: "none",
  metafile: true,
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));

// licences of every package that ended up in the bundle
const packages = new Set();
for (const input of Object.keys(result.metafile.inputs)) {
  const m = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (m) packages.add(m[1]);
}
let text = "Third-party software bundled in viewer.js (built by medsuite/viewer/frontend/build.mjs)\n";
for (const name of [...packages].sort()) {
  const dir = join(here, "node_modules", name);
  const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  text += `\n==== ${name} ${pkg.version} (${pkg.license || "see below"})\n`;
  for (const f of ["LICENSE", "LICENSE.md", "LICENSE.txt", "license", "LICENCE"]) {
    try {
      text += readFileSync(join(dir, f), "utf8");
      break;
    } catch {
      /* next name */
    }
  }
}
writeFileSync(join(out, "THIRD_PARTY_LICENSES.txt"), text);
const size = result.metafile.outputs[Object.keys(result.metafile.outputs)[0]].bytes;
console.log(`viewer.js ${(size / 1024).toFixed(0)} KiB; bundled packages: ${[...packages].sort().join(", ")}`);
