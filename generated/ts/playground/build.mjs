// Bundles the playground (main.ts and the generated client it imports) with esbuild into
// one script beside index.html, in the directory chatd's HTTP listener serves at `/`.
// Usage: node playground/build.mjs [OUTDIR]   (default: server/http/static)

import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = resolve(process.argv[2] ?? join(here, "..", "..", "..", "server", "http", "static"));
await mkdir(outdir, { recursive: true });
await build({
  entryPoints: [join(here, "main.ts")],
  outfile: join(outdir, "playground.js"),
  bundle: true,
  format: "esm",
  target: "es2022",
  platform: "browser",
  minify: true,
  legalComments: "none",
  logLevel: "warning",
});
await copyFile(join(here, "index.html"), join(outdir, "index.html"));
console.log(`playground built in ${outdir}`);
