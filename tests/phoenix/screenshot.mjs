// Screenshot of the gateway's span in Phoenix's UI (headless Debian chromium, playwright-core
// from tests/ui/node_modules). Run by tests/phoenix/check.sh with SCREENSHOT=<png>.
//   node tests/phoenix/screenshot.mjs <phoenix url> <span.json from check_span.py> <out.png>
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'ui', 'package.json'));
const { chromium } = require('playwright-core');

const [phoenix, spanFile, out] = process.argv.slice(2);
const span = JSON.parse(readFileSync(spanFile, 'utf8'));
const url = `${phoenix}/projects/${span.project_id}/traces/${encodeURIComponent(span.trace_id)}` +
  `?selectedSpanNodeId=${encodeURIComponent(span.span_node_id)}`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  await page.goto(url, { waitUntil: 'networkidle' });
  // The span's details: its name and the metadata block are there once the drawer has loaded.
  await page.getByText('Metadata', { exact: false }).first().waitFor({ timeout: 30000 });
  await page.waitForTimeout(1000);
  await page.screenshot({ path: out, fullPage: false });
} finally {
  await browser.close();
}
