// Draw a splat file with three.js + Spark in headless Chromium and save a PNG screenshot.
// Usage: node view_splats.mjs SPLATS.ply OUT.png [WIDTH HEIGHT]
// Prints one JSON line: {"status": "ready" | "error: ...", "numSplats": N, "background": "#rrggbb"}.
// Chromium: $CHROMIUM, else /usr/bin/chromium (Debian's package).
import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const [splatFile, outPng, w = "512", h = "512"] = process.argv.slice(2);
if (!splatFile || !outPng) {
  console.error("usage: node view_splats.mjs SPLATS.ply OUT.png [WIDTH HEIGHT]");
  process.exit(2);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const background = "#334d66";
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                ".ply": "application/octet-stream", ".map": "application/json" };

// Serve this folder (the page and node_modules) plus the one splat file, on loopback only.
const server = createServer(async (req, res) => {
  const url = new URL(req.url, "http://localhost");
  let file = url.pathname === "/splats.ply" ? path.resolve(splatFile) : path.join(here, decodeURIComponent(url.pathname));
  if (url.pathname !== "/splats.ply" && !file.startsWith(here + path.sep)) { res.writeHead(403).end(); return; }
  try {
    if ((await stat(file)).isDirectory()) throw new Error("folder");
    res.writeHead(200, { "content-type": types[path.extname(file)] || "application/octet-stream" });
    res.end(await readFile(file));
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const port = server.address().port;

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
         `--window-size=${w},${h}`],
});
let result;
try {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push(String(e)));
  await page.setViewport({ width: Number(w), height: Number(h) });
  const q = new URLSearchParams({ url: "/splats.ply", width: w, height: h, background });
  await page.goto(`http://127.0.0.1:${port}/splat_viewer.html?${q}`);
  let status;
  try {
    await page.waitForFunction(() => window.__status && window.__status !== "loading", { timeout: Number(process.env.VIEW_TIMEOUT_MS || 60_000) });
    status = await page.evaluate(() => window.__status);
  } catch (err) {
    status = `error: ${err.message} (page status: ${await page.evaluate(() => window.__status)})`;
  }
  const numSplats = await page.evaluate(() => window.__numSplats);
  await page.screenshot({ path: outPng });
  result = { status, numSplats, background, logs: logs.slice(-20) };
} finally {
  await browser.close();
  server.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
