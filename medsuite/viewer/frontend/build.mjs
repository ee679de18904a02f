// Build the component into ../static (committed, so that `pip install medsuite` needs no Node):
//   cd medsuite/viewer/frontend && npm ci && npm run build     # writes ../static/{viewer.js,index.html,BUILD.json}
//   npm run check                                              # rebuilds in memory: exit 1 if ../static is stale
// One minified ES module (the sources in src/, no runtime dependencies) plus index.html. BUILD.json records the
// SHA-256 of every source and output file, so that a Python test (tests/test_viewer_component.py) can tell,
// without Node, that the committed build is the build of the committed sources.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static");
const check = process.argv.includes("--check");
const SOURCES = ["build.mjs", "index.html", "package.json", "package-lock.json",
  ...readdirSync(join(here, "src")).filter((f) => f.endsWith(".js")).sort().map((f) => `src/${f}`)];
const sha = (bytes) => createHash("sha256").update(bytes).digest("hex");

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
  write: false,
});
const built = { "viewer.js": Buffer.from(result.outputFiles[0].contents), "index.html": readFileSync(join(here, "index.html")) };
const stamp = {
  note: "written by medsuite/viewer/frontend/build.mjs; checked by tests/test_viewer_component.py",
  esbuild: esbuild.version,
  sources: Object.fromEntries(SOURCES.map((f) => [f, sha(readFileSync(join(here, f)))])),
  outputs: Object.fromEntries(Object.entries(built).map(([f, b]) => [f, sha(b)])),
};
const stampText = JSON.stringify(stamp, null, 1) + "\n";

if (check) {
  const stale = Object.entries(built).filter(([f, b]) => {
    try { return !readFileSync(join(out, f)).equals(b); } catch { return true; }
  }).map(([f]) => f);
  let committed = "";
  try { committed = readFileSync(join(out, "BUILD.json"), "utf8"); } catch { /* missing: stale */ }
  if (committed !== stampText) stale.push("BUILD.json");
  if (stale.length) {
    console.error(`stale build in ../static: ${stale.join(", ")} (run: npm run build, and commit ../static)`);
    process.exit(1);
  }
  console.log("../static is the build of these sources");
} else {
  mkdirSync(out, { recursive: true });
  rmSync(join(out, "THIRD_PARTY_LICENSES.txt"), { force: true });
  for (const [f, b] of Object.entries(built)) writeFileSync(join(out, f), b);
  writeFileSync(join(out, "BUILD.json"), stampText);
  console.log(`viewer.js ${(built["viewer.js"].length / 1024).toFixed(1)} KiB from ${Object.keys(result.metafile.inputs).length} source files`);
}
