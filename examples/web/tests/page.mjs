// The page test: serves www/ (built by `./serve --build-only`) on a free localhost port, opens
// it in headless Chromium with WebGPU, waits for the automatic bench and training, and checks
// what the page shows. Saves a screenshot to target/web-page.png at the repository's root.
//
//   cd examples/web && npm ci && ./serve --build-only && node tests/page.mjs
//
// CHROMIUM overrides the browser (default /usr/bin/chromium); PAGE_TIMEOUT_S the wait (300).
import { createServer } from 'node:http';
import { access, mkdir, readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = fileURLToPath(new URL('.', import.meta.url));
const www = join(here, '..', 'www');
const screenshot = join(here, '..', '..', '..', 'target', 'web-page.png');
const timeoutMs = 1000 * Number(process.env.PAGE_TIMEOUT_S ?? 300);
// WebGPU in Chromium on Linux without a GPU: SwiftShader through ANGLE's Vulkan. The rest keep
// a browser on a machine without network from trying to reach it.
const FLAGS = [
  '--no-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan,VulkanFromANGLE',
  '--use-angle=vulkan', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run',
];
await access(join(www, 'pkg', 'web_bg.wasm')).catch(() => {
  console.log('FAIL www/pkg is not built: run ./serve --build-only first');
  process.exit(1);
});
const TYPES = {
  '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm',
  '.css': 'text/css', '.json': 'application/json',
};

// Static files of www/, nothing outside it.
const server = createServer(async (request, response) => {
  const path = normalize(decodeURIComponent(new URL(request.url, 'http://x').pathname));
  const file = join(www, path.endsWith('/') ? `${path}index.html` : path);
  try {
    if (!file.startsWith(www)) throw new Error('outside www');
    const body = await readFile(file);
    response.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
    response.end(body);
  } catch {
    response.writeHead(404).end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${server.address().port}/`;

const failures = [];
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
};
const positive = (value) => typeof value === 'number' && Number.isFinite(value) && value > 0;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: FLAGS,
});
const page = await browser.newPage({ viewport: { width: 1000, height: 1400 } });
page.on('console', (message) => console.log(`page ${message.type()}: ${message.text()}`));
page.on('pageerror', (error) => console.log(`page error: ${error.message}`));
try {
  const opened = Date.now();
  await page.goto(url);
  await page.waitForSelector('#bench tbody tr', { timeout: timeoutMs });
  console.log(`first bench result after ${((Date.now() - opened) / 1000).toFixed(1)} s (target: < 30 s)`);
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state),
    null, { timeout: timeoutMs, polling: 500 });
  console.log(`page done after ${((Date.now() - opened) / 1000).toFixed(1)} s`);
  const state = await page.evaluate(() => document.body.dataset.state);
  const results = JSON.parse(await page.textContent('#results'));
  check(state === 'done', `page state is done (${state}${results.error ? `: ${results.error}` : ''})`);
  console.log(`adapter: ${JSON.stringify(results.adapter)}`);
  console.log(`first result ${(results.first_result_ms / 1000).toFixed(1)} s after navigation (page clock)`);
  check(results.bench.length >= 1, `bench results shown (${results.bench.length})`);
  for (const r of results.bench) {
    const numbers = ['ms_per_step', 'bytes_per_param', 'gb_per_s', 'floor_ms_per_step',
      'floor_gb_per_s', 'floor_ratio', 'format_floor_ms_per_step', 'format_floor_ratio'];
    console.log(`bench ${r.rule} ${r.precision} ${r.params} params: ` +
      numbers.map((k) => `${k} ${r[k]?.toFixed(3)}`).join(', '));
    check(numbers.every((k) => positive(r[k])), `bench ${r.rule} ${r.precision}: finite and positive`);
  }
  check(results.train.length === 2, `two training runs (${results.train.length})`);
  for (const r of results.train) {
    const losses = r.gpu_loss;
    const [first, last] = [losses[0], losses[losses.length - 1]];
    console.log(`train ${r.optimizer} ${r.precision}: loss ${first?.toFixed(4)} -> ` +
      `${last?.toFixed(4)} over ${losses.length} epochs, test accuracy ` +
      `${(100 * r.gpu_accuracy).toFixed(1)}%, ${(r.ms / 1000).toFixed(1)} s`);
    check(losses.length >= 2 && losses.every(positive), `${r.precision}: losses finite and positive`);
    check(last < first, `${r.precision}: loss falls (${first} -> ${last})`);
  }
} catch (error) {
  failures.push(String(error));
  console.log(`FAIL ${error}`);
} finally {
  // Also of a page that failed or timed out: what it showed says why.
  await mkdir(join(screenshot, '..'), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
  await browser.close();
  server.close();
}
if (failures.length) {
  console.log(`${failures.length} failed`);
  process.exit(1);
}
console.log('page test passed');
