// Drives the web UI in headless Chromium like a user and fails on anything a user would see go
// wrong: a missing row, a check that does not hold, a console error, an uncaught page error or a
// failed request. Screenshots of every step go to --out.
//
//   node tests/ui/ui_check.mjs --base http://127.0.0.1:PORT --trace TRACE_ID \
//     --session SESSION_ID --feature FEATURE --out DIR [--big-trace TRACE_ID]
//     [--tree 'name:depth,...'] [--loop-trace TRACE_ID --loop-tree 'name:depth,...']
//     [--token ADMIN_TOKEN] [--long-trace TRACE_ID --long-omitted N] [--search TEXT]
//
// --token: the gateway wants this admin token; the check signs in through the UI's form first.
// --tree: the rows --trace must show, in order (span name and depth in the tree); --loop-tree
// the same for --loop-trace. --long-trace: a one-call trace of a conversation over the capture
// size limit, N messages left out between the first and the latest. --search: text that --trace
// holds and the newest traces do not, in a gateway whose search reads few traces a page.
//
// Needs Debian's chromium at /usr/bin/chromium and playwright-core (tests/setup-ui.sh).

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`${a} needs a value`);
    out[a.slice(2)] = v;
    i++;
  }
  for (const k of ['base', 'trace', 'session', 'feature', 'out']) {
    if (!out[k]) throw new Error(`missing --${k}`);
  }
  out.base = out.base.replace(/\/+$/, '');
  return out;
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`ui_check: ${e.message}`);
  console.error('usage: node tests/ui/ui_check.mjs --base URL --trace ID --session ID --feature NAME --out DIR [--big-trace ID]');
  process.exit(2);
}
fs.mkdirSync(args.out, { recursive: true });

const TIMEOUT = 15000;
const problems = []; // console errors, page errors, failed requests: any one fails the run
let step = 'start';
let shot = 0;
let page;
let browser;
let allow401 = false; // set while the login step expects the API's 401

class CheckFailed extends Error {}

function fail(message) {
  throw new CheckFailed(message);
}

function check(cond, message) {
  if (!cond) fail(message);
}

async function screenshot(name) {
  shot++;
  const file = path.join(args.out, `${String(shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file });
  console.log(`  screenshot ${file}`);
}

/** Fails the step if anything went wrong in the page since the last call. */
function noProblems() {
  if (problems.length) fail(`the page reported problems:\n    ${problems.join('\n    ')}`);
}

async function runStep(name, fn) {
  step = name;
  const t0 = Date.now();
  await fn();
  noProblems();
  console.log(`ok   ${name} (${Date.now() - t0} ms)`);
}

async function waitFor(fn, arg, message) {
  try {
    await page.waitForFunction(fn, arg, { timeout: TIMEOUT });
  } catch (e) {
    noProblems();
    fail(`${message} (waited ${TIMEOUT / 1000}s)`);
  }
}

async function visibleRows(selector) {
  return page.$$eval(selector, (els) => els.filter((e) => e.offsetParent !== null).length);
}

async function goto(urlPath) {
  const res = await page.goto(args.base + urlPath, { waitUntil: 'load' });
  check(res && res.ok(), `GET ${urlPath} answered ${res ? res.status() : 'nothing'}`);
}

/** The app shows API errors in [data-testid=error]; an error box on a page is a failed check. */
async function noErrorBox() {
  const boxes = await page.$$eval('[data-testid=error]', (els) => els.map((e) => e.textContent.trim()));
  check(!boxes.length, `the page shows an error: ${boxes.join(' | ')}`);
}

async function main() {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  page = await context.newPage();
  page.on('console', (msg) => {
    // The browser logs the 401 the login step asks for; nothing else may fail.
    if (allow401 && /\b401\b/.test(msg.text())) return;
    if (msg.type() === 'error') problems.push(`[${step}] console error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`[${step}] uncaught page error: ${err.message}`));
  page.on('requestfailed', (req) => problems.push(`[${step}] request failed: ${req.method()} ${req.url()} (${req.failure()?.errorText})`));
  page.on('response', (res) => {
    if (allow401 && res.status() === 401 && new URL(res.url()).pathname.startsWith('/api/')) return;
    if (res.status() >= 400) problems.push(`[${step}] request failed: ${res.request().method()} ${res.url()} answered ${res.status()}`);
  });

  if (args.token) {
    await runStep('the UI asks for the admin token, refuses a wrong one, takes the right one', async () => {
      allow401 = true;
      await goto('/ui');
      await waitFor(() => !!document.querySelector('[data-testid=login]'), null, 'no login form at /ui without a token');
      check(await visibleRows('[data-testid=trace-row]') === 0, 'trace rows shown without a token');
      await screenshot('login');
      await page.fill('[data-testid=login-token]', 'not-the-admin-token');
      await page.click('[data-testid=login-submit]');
      await waitFor(() => !!document.querySelector('[data-testid=login-problem]'), null, 'a wrong token was not refused');
      await page.fill('[data-testid=login-token]', args.token);
      await page.click('[data-testid=login-submit]');
      await waitFor(() => document.querySelectorAll('[data-testid=trace-row]').length > 0, null, 'no trace rows after signing in');
      const kept = await page.evaluate(() => [sessionStorage.getItem('sidetrace.adminToken'), localStorage.length]);
      check(kept[0] === args.token && kept[1] === 0, `the token is not kept in sessionStorage only: ${JSON.stringify(kept)}`);
      allow401 = false;
    });
  }

  await runStep('trace list shows rows', async () => {
    await goto('/ui');
    await waitFor(() => document.querySelectorAll('[data-testid=trace-row]').length > 0, null, 'no trace rows in the list at /ui');
    await noErrorBox();
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    check(width <= 1440, `the list page is wider than the 1440px window (${width}px)`);
    await screenshot('trace-list');
  });

  await runStep(`filter by feature ${args.feature}`, async () => {
    await page.fill('[data-testid=filter-feature]', args.feature);
    await page.click('[data-testid=filter-apply]');
    await waitFor((f) => new URL(location.href).searchParams.get('feature') === f, args.feature, 'the URL does not carry the feature filter');
    await waitFor((f) => {
      const rows = [...document.querySelectorAll('[data-testid=trace-row]')];
      return rows.length > 0 && rows.every((r) => r.dataset.feature === f);
    }, args.feature, `the filtered list does not show only traces of feature ${args.feature}`);
    await noErrorBox();
    const n = await page.$$eval('[data-testid=trace-row]', (rs) => rs.length);
    console.log(`  ${n} rows of feature ${args.feature}`);
    await screenshot('trace-list-filtered');
  });

  await runStep('open the trace from its row', async () => {
    const rowSel = `[data-testid=trace-row][data-trace-id="${args.trace}"]`;
    if (!(await page.$(rowSel))) {
      // not of that feature, or not on the first page: clear the filter and page through
      await page.click('[data-testid=filter-clear]');
      await waitFor(() => !new URL(location.href).searchParams.get('feature') && document.querySelectorAll('[data-testid=trace-row]').length > 0, null, 'clearing the filters did not bring the rows back');
      for (let i = 0; i < 20 && !(await page.$(rowSel)); i++) {
        const more = await page.$('[data-testid=load-more]:not([hidden])');
        if (!more) break;
        const before = await page.$$eval('[data-testid=trace-row]', (rs) => rs.length);
        await more.click();
        await waitFor((b) => document.querySelectorAll('[data-testid=trace-row]').length > b, before, 'load more did not add rows');
      }
    }
    const row = await page.$(rowSel);
    check(row, `trace ${args.trace} is not in the trace list`);
    // click a plain cell (not the name link) like a user clicking the row
    await row.$eval('[role=cell]:nth-child(3)', (cell) => cell.click());
    await waitFor((t) => location.pathname === '/ui/traces/' + t, args.trace, 'clicking the row did not open the trace');
    await waitFor(() => document.querySelectorAll('[data-testid=span-row]').length > 0, null, 'the trace view shows no span tree');
    await noErrorBox();
  });

  await runStep('see the span tree', async () => {
    const n = await page.$$eval('[data-testid=span-row]', (rs) => rs.length);
    check(n > 0, 'no span rows');
    const head = await page.textContent('[data-testid=trace-head]');
    check(head.includes(args.trace), 'the trace header does not show the trace id');
    const bars = await page.$$eval('[data-testid=span-row] .bar', (bs) => bs.filter((b) => b.getBoundingClientRect().width > 0).length);
    check(bars > 0, 'the waterfall has no bars');
    console.log(`  ${n} spans`);
    await screenshot('trace-view');
  });

  /** The span rows of the trace on screen, in order, as `name:depth`. */
  async function treeRows() {
    return page.$$eval('[data-testid=span-row]', (rs) => rs.map((r) => `${r.dataset.name}:${r.dataset.depth}`));
  }

  async function checkTree(traceId, expected, shotName) {
    await goto('/ui/traces/' + traceId);
    await waitFor((n) => document.querySelectorAll('[data-testid=span-row]').length === n, expected.length, `trace ${traceId} does not show ${expected.length} spans`);
    await noErrorBox();
    const rows = await treeRows();
    check(JSON.stringify(rows) === JSON.stringify(expected), `trace ${traceId}: the tree is\n      ${rows.join('\n      ')}\n    not\n      ${expected.join('\n      ')}`);
    console.log(`  ${rows.join(' | ')}`);
    await screenshot(shotName);
  }

  if (args.tree) {
    await runStep('the agent run is one tree: app spans, LLM calls, tool calls under the call that asked, the score', async () => {
      await checkTree(args.trace, args.tree.split(','), 'agent-tree-with-app-spans');
      // the tool span's panel names its call id and the call it answers
      const tool = await page.$('[data-testid=span-row][data-name="execute_tool get_weather"]');
      const toolTitle = await tool.$eval('.sname', (e) => e.title);
      check(toolTitle === 'execute_tool get_weather', `a row's name has no tooltip with the name in full (${toolTitle})`);
      await tool.click();
      await waitFor(() => /execute_tool get_weather/.test(document.querySelector('[data-testid=span-panel] [data-testid=span-name]')?.textContent || ''), null, 'the tool span does not open');
      const attrs = await page.textContent('[data-testid=span-panel] [data-testid=span-attributes]');
      check(attrs.includes('gen_ai.tool.call.id') && attrs.includes('call_7Hq2'), 'the tool span panel does not show its call id');
      await screenshot('tool-span-panel');
      const score = await page.textContent('[data-testid=span-row][data-name="evaluation helpfulness"] [data-testid=mark-score]').catch(() => null);
      check(score && score.includes('0.9') && score.includes('pass'), `the score's row does not show its value and label (${score})`);
      // the score's panel says when it was posted (its span sits at the end of the span it scores)
      await page.click('[data-testid=span-row][data-name="evaluation helpfulness"]');
      await waitFor(() => /evaluation helpfulness/.test(document.querySelector('[data-testid=span-panel] [data-testid=span-name]')?.textContent || ''), null, 'the score span does not open');
      const posted = await page.textContent('[data-testid=span-panel] [data-testid=span-score-posted]').catch(() => null);
      check(posted && /Posted/.test(posted) && /\d/.test(posted), `the score's panel does not say when it was posted (${posted})`);
    });
  }

  if (args['loop-trace'] && args['loop-tree']) {
    await runStep('the same run with no SDK is one tree too', async () => {
      await checkTree(args['loop-trace'], args['loop-tree'].split(','), 'agent-tree-no-sdk');
    });
    await goto('/ui/traces/' + args.trace);
    await waitFor(() => document.querySelectorAll('[data-testid=span-row]').length > 0, null, 'the trace view shows no span tree');
  }

  if (args['long-trace'] && args['long-omitted']) {
    await runStep('a long conversation shows its first and latest messages, and what was left out', async () => {
      await goto('/ui/traces/' + args['long-trace']);
      await waitFor(() => document.querySelectorAll('[data-testid=span-row]').length === 1, null, 'the long conversation\'s trace does not show its call');
      await page.click('[data-testid=span-row]');
      await waitFor(() => document.querySelector('[data-testid=span-panel] [data-testid=chat-input]'), null, 'the call\'s panel shows no input messages');
      const note = await page.textContent('[data-testid=span-panel] [data-testid=omitted-messages]').catch(() => null);
      check(note && note.startsWith(args['long-omitted'] + ' messages'), `no note of ${args['long-omitted']} messages left out (${note})`);
      // on screen: the first message, the note, then (past "show earlier") the latest
      const idx = await page.$$eval('[data-testid=chat-input] [data-testid=chat-message] .msg-idx', (xs) => xs.map((x) => x.textContent));
      check(idx[0] === '#1', `the first message shown is ${idx[0]}, not #1`);
      check(idx[idx.length - 1] === '#40', `the last message shown is ${idx[idx.length - 1]}, not #40`);
      const text = await page.textContent('[data-testid=chat-input]');
      check(text.includes('Turn 1 of the conversation') && text.includes('Turn 40 of the conversation'), 'the first or the latest message is not shown');
      const kept = 40 - Number(args['long-omitted']);
      await page.click('[data-testid=chat-input] [data-testid=show-earlier]');
      const all = await page.$$eval('[data-testid=chat-input] [data-testid=chat-message]', (xs) => xs.length);
      check(all === kept, `${all} messages shown with the earlier ones, not the ${kept} kept`);
      await screenshot('long-conversation');
    });
    await goto('/ui/traces/' + args.trace);
    await waitFor(() => document.querySelectorAll('[data-testid=span-row]').length > 0, null, 'the trace view shows no span tree');
  }

  if (args.search) {
    await runStep(`search the traces for "${args.search}": a bounded first page, then Load more`, async () => {
      await goto('/ui/traces?q=' + encodeURIComponent(args.search));
      await waitFor(() => document.querySelector('[data-testid=search-partial]'), null, 'the search does not say it stopped early');
      const note = await page.textContent('[data-testid=search-partial]');
      check(/read traces back to/.test(note), `the note does not say how far back it read (${note})`);
      await screenshot('search-partial');
      // With more below, a sort says it orders the loaded rows only.
      await page.click('[data-testid=trace-table] .gh.sortable >> text=Cost');
      const sorted = await page.textContent('[data-testid=list-status]');
      check(/sorted among those loaded/.test(sorted), `a sort with more below does not say it orders the loaded rows only (${sorted})`);
      const rowSel = `[data-testid=trace-row][data-trace-id="${args.trace}"]`;
      for (let i = 0; i < 10 && !(await page.$(rowSel)); i++) {
        const more = await page.$('[data-testid=load-more]:not([hidden])');
        check(more, `the search ended without finding trace ${args.trace}`);
        await more.click();
        await waitFor(() => !document.querySelector('[data-testid=load-more]')?.disabled, null, 'load more did not finish');
      }
      check(await page.$(rowSel), `trace ${args.trace} was not found by its text`);
      await noErrorBox();
      await screenshot('search-found');
    });
    await goto('/ui/traces/' + args.trace);
    await waitFor(() => document.querySelectorAll('[data-testid=span-row]').length > 0, null, 'the trace view shows no span tree');
  }

  await runStep('collapse and expand a node', async () => {
    const toggle = await page.$('[data-testid=span-row] [data-testid=span-toggle]');
    check(toggle, 'no span has children to collapse');
    const row = await toggle.evaluateHandle((t) => t.closest('[data-testid=span-row]'));
    const before = await visibleRows('[data-testid=span-row]');
    await toggle.click();
    check(await row.evaluate((r) => r.getAttribute('aria-expanded')) === 'false', 'the node did not collapse');
    const collapsed = await visibleRows('[data-testid=span-row]');
    check(collapsed < before, `collapsing hid no rows (${before} visible before, ${collapsed} after)`);
    await screenshot('trace-collapsed');
    await toggle.click();
    check(await row.evaluate((r) => r.getAttribute('aria-expanded')) === 'true', 'the node did not expand');
    const after = await visibleRows('[data-testid=span-row]');
    check(after === before, `expanding did not bring the rows back (${before} before, ${after} after)`);
  });

  await runStep('open a span: messages as chat, and its cost', async () => {
    const candidates = await page.$$('[data-testid=span-row]:has(.kind.k-llm)');
    check(candidates.length, 'the trace has no LLM call span');
    let found = false;
    for (const c of candidates) {
      await c.click();
      await waitFor((id) => {
        const name = document.querySelector('[data-testid=span-panel] [data-testid=span-name]');
        return !!name;
      }, null, 'the span panel did not open');
      if (await page.$('[data-testid=span-panel] [data-testid=chat-message]')) { found = true; break; }
    }
    check(found, 'no LLM span shows its messages as a chat');
    const roles = await page.$$eval('[data-testid=span-panel] [data-testid=chat-message]', (ms) => ms.map((m) => m.dataset.role || 'system'));
    check(roles.length > 0, 'no chat messages');
    const cost = await page.textContent('[data-testid=span-panel] [data-testid=span-cost]').catch(() => null);
    check(cost && /\$\d|not priced/.test(cost), `the span panel shows no cost (${cost})`);
    check(await page.$('[data-testid=span-panel] [data-testid=span-attributes]'), 'the span panel has no attribute table');
    check(await page.$('[data-testid=span-panel] [data-testid=copy-span-id]'), 'the span panel has no copy button for the span id');
    console.log(`  roles ${roles.join(', ')}; cost ${cost.trim()}`);
    await screenshot('span-panel');
    const panel = await page.$('[data-testid=span-panel]');
    await panel.evaluate((p) => { p.scrollTop = p.scrollHeight; });
    await screenshot('span-panel-bottom');
  });

  await runStep('deep link to the trace', async () => {
    await goto('/ui/traces/' + args.trace);
    await waitFor(() => document.querySelectorAll('[data-testid=span-row]').length > 0, null, 'the deep link shows no span tree');
    await waitFor(() => !!document.querySelector('[data-testid=span-panel] [data-testid=span-name]'), null, 'the deep link opens no span');
    await noErrorBox();
    const head = await page.textContent('[data-testid=trace-head]');
    check(head.includes(args.trace), 'the deep-linked trace header does not show the trace id');
    await screenshot('trace-deep-link');
    // The OTLP JSON button downloads the trace with the admin token (a plain link sends none,
    // and was refused with 401 and no word when a token was set).
    const [download] = await Promise.all([
      page.waitForEvent('download', { timeout: 15000 }),
      page.click('[data-testid=otlp-download]'),
    ]);
    const saved = JSON.parse(fs.readFileSync(await download.path(), 'utf8'));
    check(Array.isArray(saved.resourceSpans) && saved.resourceSpans.length > 0, 'the downloaded trace has no resourceSpans');
  });

  if (args['durations-trace']) {
    await runStep('durations round into the next unit, and a name is a search only by a whole word', async () => {
      await goto('/ui/traces/' + args['durations-trace']);
      await waitFor(() => document.querySelectorAll('[data-testid=span-row]').length === 3, null, 'the durations trace does not show its three spans');
      const rows = await page.$$eval('[data-testid=span-row]', (rs) => rs.map((r) => ({
        name: r.dataset.name, dur: r.querySelector('.c-dur').textContent, kind: r.querySelector('.kind').textContent,
      })));
      const row = (name) => rows.find((r) => r.name === name) || {};
      check(row('agent.run research_task').dur === '3m 00s', `179.6 s shows as ${row('agent.run research_task').dur}`);
      check(row('agent.run research_task').kind === 'APP', `"research_task" is taken for a search: ${row('agent.run research_task').kind}`);
      check(row('vector_search docs').dur === '1m 00s', `59,999.7 ms shows as ${row('vector_search docs').dur}`);
      check(row('vector_search docs').kind === 'RET', `"vector_search" is not taken for a search: ${row('vector_search docs').kind}`);
      check(row('summarize').dur === '1.00 s', `999.7 ms shows as ${row('summarize').dur}`);
    });
  }

  if (args['unreadable-trace']) {
    await runStep('a span that cannot be read back is left out, and the trace says so', async () => {
      await goto('/ui/traces/' + args['unreadable-trace']);
      await waitFor(() => !!document.querySelector('[data-testid=spans-unreadable]'), null, 'the trace shows no notice of its unreadable span');
      const text = await page.textContent('[data-testid=spans-unreadable]');
      check(text.startsWith("1 of this trace's spans could not be read back"), `the notice says "${text}"`);
      const rows = await page.$$eval('[data-testid=span-row]', (rs) => rs.map((r) => r.dataset.name));
      check(rows.length === 1 && rows[0] === 'ingest.job', `the tree shows ${JSON.stringify(rows)}`);
      await noErrorBox();
      await screenshot('trace-unreadable-span');
    });
  }

  if (args.many) {
    await runStep(`Load more to ${args.many} traces, and sort them`, async () => {
      await goto('/ui/traces');
      const count = () => page.$$eval('[data-testid=trace-row]', (rs) => rs.length);
      await waitFor(() => document.querySelectorAll('[data-testid=trace-row]').length > 0, null, 'no trace rows in the list');
      const t0 = Date.now();
      let clicks = 0;
      let last = 0;
      while ((await count()) < Number(args.many)) {
        const more = await page.$('[data-testid=load-more]:not([hidden])');
        check(more, `the list ended at ${await count()} traces, before ${args.many}`);
        const before = await count();
        const c0 = Date.now();
        await more.click();
        await waitFor((b) => document.querySelectorAll('[data-testid=trace-row]').length > b, before, 'load more did not add rows');
        last = Date.now() - c0;
        clicks++;
      }
      const n = await count();
      // reported, not asserted: wall-clock limits do not belong in a test
      console.log(`  ${n} traces loaded by ${clicks} clicks of Load more in ${Date.now() - t0} ms (the last click ${last} ms)`);
      const ids = await page.$$eval('[data-testid=trace-row]', (rs) => rs.map((r) => r.dataset.traceId).sort().join());
      // A sort renders at once: timed in the page, to the layout after it.
      const took = await page.evaluate(() => {
        const t = performance.now();
        document.querySelector('[data-testid=col-duration]').click();
        void document.body.offsetHeight;
        return Math.round(performance.now() - t);
      });
      await waitFor(() => document.querySelector('[data-testid=col-duration]').getAttribute('aria-sort') === 'descending', null, 'the list is not sorted by duration');
      console.log(`  ${n} rows sorted by duration in ${took} ms`);
      const first = await page.$eval('[data-testid=trace-row]', (r) => r.dataset.traceId);
      check(first === args['durations-trace'], `the longest trace (${args['durations-trace']}, 3 minutes) is not first but ${first}`);
      const after = await page.$$eval('[data-testid=trace-row]', (rs) => rs.map((r) => r.dataset.traceId).sort().join());
      check(after === ids, 'the sort changed which traces are listed');
      await noErrorBox();
      await page.evaluate(() => window.scrollTo(0, 0));
      await screenshot('many-traces-sorted');
    });
  }

  if (args['big-trace']) {
    await runStep('a large trace renders', async () => {
      const t0 = Date.now();
      await goto('/ui/traces/' + args['big-trace']);
      await waitFor(() => document.querySelectorAll('[data-testid=span-row]').length > 0 && !!document.querySelector('[data-testid=span-name]'), null, 'the large trace shows no span tree');
      const n = await page.$$eval('[data-testid=span-row]', (rs) => rs.length);
      // reported, not asserted: wall-clock limits do not belong in a test
      console.log(`  ${n} spans shown ${Date.now() - t0} ms after navigation`);
      const s0 = Date.now();
      await page.fill('[data-testid=tree-search]', 'lookup_account');
      await waitFor(() => /match/.test(document.querySelector('[data-testid=tree-search-info]').textContent), null, 'search in the tree shows no result count');
      console.log(`  search in ${n} spans answered in ${Date.now() - s0} ms: ${await page.textContent('[data-testid=tree-search-info]')}`);
      await screenshot('big-trace-search');
    });
  }

  await runStep(`session ${args.session}`, async () => {
    await goto('/ui/sessions');
    await waitFor(() => document.querySelectorAll('[data-testid=session-row]').length > 0, null, 'the session list shows no sessions');
    await screenshot('session-list');
    await goto('/ui/sessions/' + encodeURIComponent(args.session));
    await waitFor(() => document.querySelectorAll('[data-testid=session-traces] [data-testid=trace-row]').length > 0, null, 'the session view lists no traces');
    await noErrorBox();
    const title = await page.textContent('[data-testid=session-title]');
    check(title.includes(args.session), `the session view is titled "${title}"`);
    check(await page.$('[data-testid=session-cost]'), 'the session view shows no total cost');
    await screenshot('session-view');
  });

  await runStep('cost page draws the chart', async () => {
    await goto('/ui/costs?group_by=feature&window=7d&bucket=1h');
    await waitFor(() => {
      const c = document.querySelector('[data-testid=cost-chart] canvas');
      if (!c) return false;
      const r = c.getBoundingClientRect();
      return c.width > 0 && c.height > 0 && r.width > 0 && r.height > 0;
    }, null, 'the cost page draws no chart (no canvas of nonzero size)');
    await waitFor(() => document.querySelectorAll('[data-testid=cost-row]').length > 0, null, 'the cost table has no rows');
    await noErrorBox();
    await screenshot('costs');
    await page.selectOption('[data-testid=cost-group-by]', 'model');
    await waitFor(() => new URL(location.href).searchParams.get('group_by') === 'model' && !!document.querySelector('[data-testid=cost-chart] canvas') && document.querySelectorAll('[data-testid=cost-row]').length > 0, null, 'grouping by model shows no chart');
    await noErrorBox();
    await screenshot('costs-by-model');
  });
}

let code = 0;
try {
  await main();
  console.log(`ui_check: all checks passed (${shot} screenshots in ${args.out})`);
} catch (e) {
  code = 1;
  const msg = e instanceof CheckFailed ? e.message : (e && e.stack) || String(e);
  console.error(`FAIL ${step}: ${msg}`);
  if (page) {
    try {
      await page.screenshot({ path: path.join(args.out, 'failure.png') });
      console.error(`  screenshot ${path.join(args.out, 'failure.png')}`);
    } catch (_) { /* the page may be gone */ }
  }
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(code);
