// Validate a .gltf/.glb with the Khronos glTF validator and print its full report as JSON on stdout.
// Usage: node validate_gltf.mjs FILE   (exit 0 when the report was produced, whatever it says;
// the caller judges the issues, because KHR_gaussian_splatting postdates the validator).
import { readFile } from "node:fs/promises";
import path from "node:path";
import validator from "gltf-validator";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate_gltf.mjs FILE.glb");
  process.exit(2);
}
const data = new Uint8Array(await readFile(file));
const report = await validator.validateBytes(data, {
  uri: path.basename(file),
  maxIssues: 0, // no limit
  externalResourceFunction: (uri) => readFile(path.resolve(path.dirname(file), decodeURIComponent(uri))).then((b) => new Uint8Array(b)),
});
process.stdout.write(JSON.stringify(report) + "\n");
