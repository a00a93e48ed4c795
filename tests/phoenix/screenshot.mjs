// Screenshot of the gateway's span in Phoenix's UI (headless Debian chromium, playwright-core
// from tests/ui/node_modules): the span's Attributes tab (llm.cost.*, cost.usd,
// llm.prompt_template.version, metadata.*) with Phoenix's own cost tooltip open.
// Run by tests/phoenix/check.sh with SCREENSHOT=<png>.
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
  const page = await browser.newPage({ viewport: { width: 1600, height: 2100 } });
  await page.goto(url, { waitUntil: 'networkidle' });
  await page.getByText('Metadata').first().waitFor({ timeout: 30000 });
  await page.getByRole('tab', { name: 'Attributes' }).click();
  await page.getByText('llm.cost.total', { exact: true }).waitFor({ timeout: 30000 });
  // The cost in the span's header line: hovering opens Phoenix's tokens-and-cost breakdown.
  await page.getByText(/^<?\$\d/).nth(2).hover();
  await page.getByText('Tokens and cost').waitFor({ timeout: 10000 });
  await page.waitForTimeout(500);
  await page.screenshot({ path: out });
} finally {
  await browser.close();
}
