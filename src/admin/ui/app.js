// The sidetrace trace explorer: a single page over the admin JSON API (docs/api.md).
// Plain DOM, no framework, no build step. Every piece of data reaches the page through
// textContent or attributes (see `h`), never through innerHTML.

'use strict';

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** Creates an element. `props`: class, text, title, style (object), data (object), on (object of
 * listeners), attrs (object), and any other key is set as a property. Children: nodes, strings
 * (as text), arrays, null/false (skipped). */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const k in props) {
      const v = props[k];
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'style') Object.assign(el.style, v);
      else if (k === 'data') for (const d in v) el.dataset[d] = v[d];
      else if (k === 'on') for (const e in v) el.addEventListener(e, v[e]);
      else if (k === 'attrs') for (const a in v) el.setAttribute(a, v[a]);
      else if (k === 'testid') el.setAttribute('data-testid', v);
      else el[k] = v;
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

// ---------------------------------------------------------------------------------------------
// Formatting

const nf = new Intl.NumberFormat('en-US');
const dateFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  hour12: false,
});
const timeFmt = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
});
const fullFmt = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit',
  second: '2-digit', fractionalSecondDigits: 3, hour12: false, timeZoneName: 'short',
});

function fmtInt(n) {
  if (n === null || n === undefined || n === '') return '—';
  const x = Number(n);
  return Number.isFinite(x) ? nf.format(x) : String(n);
}

function fmtCompact(n) {
  const x = Number(n) || 0;
  if (x < 1000) return String(x);
  if (x < 1e6) return (x / 1e3).toFixed(x < 1e4 ? 1 : 0) + 'k';
  return (x / 1e6).toFixed(x < 1e7 ? 1 : 0) + 'M';
}

/** An exact decimal USD string as the API sends it; trailing zeros trimmed, never rounded. */
function fmtCost(s) {
  if (s === null || s === undefined || s === '') return '—';
  let t = String(s);
  if (/^-?\d+\.\d+$/.test(t)) t = t.replace(/0+$/, '').replace(/\.$/, '');
  return '$' + t;
}

function costNum(s) {
  if (s === null || s === undefined || s === '') return -1;
  const x = parseFloat(s);
  return Number.isFinite(x) ? x : -1;
}

function fmtDur(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return '—';
  const x = Number(ms);
  // Each unit's rounding may carry into the next: 999.7 ms is 1.00 s, 179.6 s is 3m 00s.
  if (x < 1) return x.toFixed(2) + ' ms';
  if (x < 9.95) return x.toFixed(1) + ' ms';
  if (x < 999.5) return Math.round(x) + ' ms';
  if (x < 59950) return (x / 1000).toFixed(x < 9995 ? 2 : 1) + ' s';
  const secs = Math.round(x / 1000);
  if (secs < 3600) return Math.floor(secs / 60) + 'm ' + String(secs % 60).padStart(2, '0') + 's';
  const mins = Math.round(x / 60000);
  return Math.floor(mins / 60) + 'h ' + String(mins % 60).padStart(2, '0') + 'm';
}

function fmtTime(ms) {
  if (!Number.isFinite(ms)) return '—';
  const d = new Date(ms);
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  return sameDay ? timeFmt.format(d) : dateFmt.format(d);
}

function fmtFull(ms) {
  return Number.isFinite(ms) ? fullFmt.format(new Date(ms)) : '—';
}

function fmtAgo(ms) {
  const s = (Date.now() - ms) / 1000;
  if (s < 0) return 'just now';
  if (s < 60) return Math.floor(s) + 's ago';
  if (s < 3600) return Math.floor(s / 60) + 'm ago';
  if (s < 86400) return Math.floor(s / 3600) + 'h ago';
  return Math.floor(s / 86400) + 'd ago';
}

function shortId(id) {
  return id ? String(id).slice(0, 8) : '';
}

function tokensTitle(o) {
  if (!o) return '';
  return `input ${fmtInt(o.input_tokens)} (cached ${fmtInt(o.cached_input_tokens)})\n` +
    `output ${fmtInt(o.output_tokens)} (reasoning ${fmtInt(o.reasoning_tokens)})`;
}

// ---------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, type, message, path) {
    super(message);
    this.status = status;
    this.type = type;
    this.path = path;
  }
}

async function api(path, params) {
  let url = path;
  if (params) {
    const q = new URLSearchParams();
    for (const k in params) {
      const v = params[k];
      if (v !== undefined && v !== null && v !== '') q.set(k, v);
    }
    const s = q.toString();
    if (s) url += '?' + s;
  }
  let res;
  const headers = { accept: 'application/json' };
  const token = adminToken();
  if (token) headers.authorization = 'Bearer ' + token;
  try {
    res = await fetch(url, { headers });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the gateway (${e.message})`, url);
  }
  let text = '';
  try {
    text = await res.text();
  } catch (e) {
    throw new ApiError(res.status, 'network', `the answer was cut off (${e.message})`, url);
  }
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (res.status === 401) {
    // No token yet, or a wrong or changed one: ask for it (once per browser session).
    showLogin(token ? 'The gateway refused this token.' : null);
    throw new ApiError(401, 'unauthorized', 'the admin token is needed', url);
  }
  if (!res.ok) {
    const err = body && body.error;
    const msg = (err && err.message) || text.trim().slice(0, 300) || res.statusText;
    throw new ApiError(res.status, (err && err.type) || 'http_error', msg, url);
  }
  if (body === null) throw new ApiError(res.status, 'bad_json', 'the answer is not JSON', url);
  return body;
}

// With an admin token, a plain link would be refused (a download sends no Authorization
// header): the trace is fetched with the token and saved from memory. Without one, the link
// works as it is.
async function downloadWithToken(ev, traceId) {
  if (!adminToken()) return;
  ev.preventDefault();
  const a = ev.currentTarget;
  try {
    const body = await api('/api/traces/' + encodeURIComponent(traceId) + '/otlp');
    const url = URL.createObjectURL(new Blob([JSON.stringify(body)], { type: 'application/json' }));
    const save = h('a', { href: url, download: 'trace-' + traceId + '.otlp.json' });
    document.body.appendChild(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    a.after(errorBox(e, 'Could not download the trace'));
  }
}

// A path segment of a deep link, decoded; as it is when its percent-encoding is broken (the
// API then says what is wrong with it, rather than the page failing).
function decodedSegment(s) {
  try {
    return decodeURIComponent(s);
  } catch (_) {
    return s;
  }
}

function errorBox(err, what) {
  const e = err instanceof ApiError ? err : new ApiError(0, 'ui_error', String(err && err.message || err), '');
  const head = e.status ? `${what}: ${e.status} ${e.type}` : `${what}: ${e.type}`;
  return h('div', { class: 'error-box', testid: 'error', attrs: { role: 'alert' } },
    h('div', { class: 'error-head', text: head }),
    h('div', { class: 'error-msg', text: e.message }),
    e.path ? h('div', { class: 'error-path muted', text: 'GET ' + e.path }) : null);
}

// ---------------------------------------------------------------------------------------------
// Copying

async function copyText(text, button) {
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      ok = true;
    }
  } catch (_) {
    ok = false;
  }
  if (!ok) {
    const ta = h('textarea', { value: text, style: { position: 'fixed', top: '-1000px' } });
    document.body.appendChild(ta);
    ta.select();
    try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
    ta.remove();
  }
  if (button) {
    const old = button.textContent;
    button.textContent = ok ? 'copied' : 'copy failed';
    button.classList.add('flash');
    setTimeout(() => { button.textContent = old; button.classList.remove('flash'); }, 1200);
  }
}

function idChip(label, id, testid) {
  const btn = h('button', { class: 'copy', type: 'button', text: 'copy', title: 'Copy ' + label,
    testid: testid, on: { click: (e) => { e.stopPropagation(); copyText(id, btn); } } });
  return h('span', { class: 'idchip' },
    h('span', { class: 'muted', text: label + ' ' }),
    h('code', { text: id, title: id }), btn);
}

// ---------------------------------------------------------------------------------------------
// The admin token: asked for once, kept for this browser session only (sessionStorage, so it
// leaves with the tab), sent as a bearer token with every API call.

const TOKEN_KEY = 'sidetrace.adminToken';

function adminToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
}

function showLogin(problem) {
  for (const fn of cleanups) { try { fn(); } catch (_) { /* never stops the login form */ } }
  cleanups = [];
  ++routeGen; // pages still loading see they are stale and draw nothing
  try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* private mode */ }
  clear(main);
  clear(topRight);
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'current-password',
    required: true, testid: 'login-token', attrs: { 'aria-label': 'Admin token' } });
  const form = h('form', { class: 'login', testid: 'login', on: { submit: (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* kept for this page only */ }
    route();
  } } },
  h('h2', { text: 'Admin token' }),
  h('p', { class: 'muted', text: 'This gateway asks for its admin token ([admin] token). It is kept for this browser session only.' }),
  problem ? h('div', { class: 'notice warn', testid: 'login-problem', attrs: { role: 'alert' }, text: problem }) : null,
  input,
  h('button', { type: 'submit', text: 'Sign in', testid: 'login-submit' }));
  main.appendChild(h('div', { class: 'page' }, form));
  input.focus();
}

// ---------------------------------------------------------------------------------------------
// Routing (history API under /ui)

const main = document.getElementById('main');
const topRight = document.getElementById('topbar-right');
let routeGen = 0;
let cleanups = [];

function onCleanup(fn) { cleanups.push(fn); }

function navigate(url, replace) {
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  route();
}

function isCurrent(gen) { return gen === routeGen; }

function route() {
  for (const fn of cleanups) { try { fn(); } catch (_) { /* a cleanup never stops routing */ } }
  cleanups = [];
  const gen = ++routeGen;
  const path = location.pathname.replace(/\/+$/, '') || '/ui';
  const params = new URLSearchParams(location.search);
  clear(main);
  clear(topRight);
  window.scrollTo(0, 0);
  let m;
  let section = '';
  try {
    if (path === '/ui' || path === '/ui/traces') {
      section = 'traces';
      pageTraces(gen, params);
    } else if ((m = path.match(/^\/ui\/traces\/([^/]+)$/))) {
      section = 'traces';
      pageTrace(gen, decodedSegment(m[1]), params);
    } else if (path === '/ui/sessions') {
      section = 'sessions';
      pageSessions(gen, params);
    } else if ((m = path.match(/^\/ui\/sessions\/([^/]+)$/))) {
      section = 'sessions';
      pageSession(gen, decodedSegment(m[1]));
    } else if (path === '/ui/costs') {
      section = 'costs';
      pageCosts(gen, params);
    } else {
      main.appendChild(h('div', { class: 'page' }, h('div', { class: 'notice', testid: 'not-found' },
        'No page here. ', h('a', { href: '/ui/traces', text: 'Go to the traces' }))));
    }
  } catch (e) {
    main.appendChild(h('div', { class: 'page' }, errorBox(e, 'The page failed')));
  }
  for (const a of document.querySelectorAll('.nav a')) {
    a.classList.toggle('active', a.dataset.nav === section);
  }
  document.title = 'sidetrace' + (section ? ' · ' + section : '');
}

document.addEventListener('click', (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target.closest('a[href]');
  if (!a || a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith('/ui')) return;
  if (url.pathname.startsWith('/ui/assets/')) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener('popstate', route);

// A wrapper that turns exceptions in event handlers into a visible message, not a silent failure.
function guard(fn, where) {
  return (...args) => {
    try {
      const r = fn(...args);
      if (r && typeof r.catch === 'function') r.catch((e) => showToast(where, e));
      return r;
    } catch (e) {
      showToast(where, e);
      return undefined;
    }
  };
}

function showToast(where, e) {
  const box = errorBox(e, where);
  box.classList.add('toast');
  const close = h('button', { class: 'toast-close', type: 'button', text: '×', title: 'Dismiss',
    on: { click: () => box.remove() } });
  box.prepend(close);
  document.body.appendChild(box);
  setTimeout(() => box.remove(), 8000);
}

// ---------------------------------------------------------------------------------------------
// Shared bits of tables

/** A sortable table over `rows`, as CSS-grid rows (not a <table>: with 1,000 rows, table layout
 * measures every cell, while grid rows with `content-visibility: auto` lay out only what is on
 * screen). `cols`: {key, label, w (grid track), cls, value(row) for sorting, cell(row) ->
 * node|string, title, tdTitle(row)}. Sorting is client-side over the loaded rows. */
// `rowCache` (a WeakMap, optional): each row's element, kept across renders of the same rows,
// so a sort or Load more moves the rows already built instead of building all of them again
// (5,000 rows loaded took 0.6-1 s a sort). Only for columns whose cells do not change.
function sortTable({ cols, rows, sort, onSort, rowProps, testid, emptyText, rowCache }) {
  const table = h('div', { class: 'grid', testid, attrs: { role: 'table' } });
  table.style.setProperty('--cols', cols.map((c) => c.w || 'minmax(60px, 1fr)').join(' '));
  const head = h('div', { class: 'gr ghead', attrs: { role: 'row' } });
  for (const c of cols) {
    const sorted = sort && sort.key === c.key;
    const th = h('div', {
      class: 'gh ' + (c.cls || '') + (c.value ? ' sortable' : '') + (sorted ? ' sorted' : ''),
      title: c.title || (c.value ? 'Sort by ' + c.label : ''),
      testid: 'col-' + c.key,
      attrs: { role: 'columnheader', 'aria-sort': sorted ? (sort.dir === 'asc' ? 'ascending' : 'descending') : 'none' },
    }, c.label, sorted ? h('span', { class: 'arrow', text: sort.dir === 'asc' ? ' ▲' : ' ▼' }) : null);
    if (c.value) {
      th.addEventListener('click', () => {
        let dir = 'desc';
        if (sorted) dir = sort.dir === 'desc' ? 'asc' : (sort.dir === 'asc' ? '' : 'desc');
        onSort(dir ? { key: c.key, dir } : null);
      });
    }
    head.appendChild(th);
  }
  table.appendChild(head);
  let view = rows;
  if (sort && sort.key) {
    const col = cols.find((c) => c.key === sort.key);
    if (col && col.value) {
      const keyed = rows.map((r, i) => ({ r, i, v: col.value(r) }));
      const mul = sort.dir === 'asc' ? 1 : -1;
      keyed.sort((a, b) => {
        const x = a.v, y = b.v;
        let c = 0;
        if (typeof x === 'number' && typeof y === 'number') c = x - y;
        else c = String(x ?? '').localeCompare(String(y ?? ''));
        return c ? c * mul : a.i - b.i;
      });
      view = keyed.map((k) => k.r);
    }
  }
  const body = h('div', { class: 'gbody', attrs: { role: 'rowgroup' } });
  const frag = document.createDocumentFragment();
  const cellCls = cols.map((c) => 'gc ' + (c.cls || ''));
  for (const r of view) {
    const kept = rowCache && rowCache.get(r);
    if (kept) {
      frag.appendChild(kept);
      continue;
    }
    const tr = h('div', rowProps ? rowProps(r) : null);
    tr.classList.add('gr');
    tr.setAttribute('role', 'row');
    for (let ci = 0; ci < cols.length; ci++) {
      const c = cols[ci];
      const td = document.createElement('div');
      td.className = cellCls[ci];
      td.setAttribute('role', 'cell');
      const v = c.cell(r);
      if (v instanceof Node) td.appendChild(v);
      else if (v !== null && v !== undefined) td.textContent = String(v);
      if (c.tdTitle) { const t = c.tdTitle(r); if (t) td.title = t; }
      tr.appendChild(td);
    }
    if (rowCache) rowCache.set(r, tr);
    frag.appendChild(tr);
  }
  body.appendChild(frag);
  table.appendChild(body);
  if (!rows.length && emptyText) {
    body.appendChild(h('div', { class: 'empty', text: emptyText, testid: 'empty' }));
  }
  return table;
}

function parseSort(params) {
  const s = params.get('sort');
  if (!s) return null;
  const dir = params.get('dir') === 'asc' ? 'asc' : 'desc';
  return { key: s, dir };
}

function tokenCols(cls) {
  return [
    { key: 'in', label: 'In', w: '76px', cls: 'num ' + (cls || ''), title: 'Input tokens (sort)', value: (r) => r.input_tokens || 0, cell: (r) => fmtInt(r.input_tokens) },
    { key: 'cached', label: 'Cached', w: '70px', cls: 'num muted-cell ' + (cls || ''), title: 'Cached input tokens (sort)', value: (r) => r.cached_input_tokens || 0, cell: (r) => fmtInt(r.cached_input_tokens) },
    { key: 'reasoning', label: 'Reas.', w: '60px', cls: 'num muted-cell ' + (cls || ''), title: 'Reasoning tokens (sort)', value: (r) => r.reasoning_tokens || 0, cell: (r) => fmtInt(r.reasoning_tokens) },
    { key: 'out', label: 'Out', w: '70px', cls: 'num ' + (cls || ''), title: 'Output tokens (sort)', value: (r) => r.output_tokens || 0, cell: (r) => fmtInt(r.output_tokens) },
  ];
}

function errorsCell(n) {
  if (!n) return h('span', { class: 'muted', text: '0' });
  return h('span', { class: 'badge err', text: String(n) });
}

function traceSummaryCols(opts) {
  const cols = [
    { key: 'start', label: 'Start', w: '92px', cls: 'nowrap', value: (r) => r.start_ms, cell: (r) => fmtTime(r.start_ms), tdTitle: (r) => fmtFull(r.start_ms) },
  ];
  if (opts && opts.offsetFrom !== undefined) {
    cols.push({ key: 'offset', label: '+Time', w: '92px', cls: 'num nowrap muted-cell', title: 'Time since the session began', value: (r) => r.start_ms, cell: (r) => r.start_ms - opts.offsetFrom > 0 ? '+' + fmtDur(r.start_ms - opts.offsetFrom) : '0' });
  }
  cols.push(
    { key: 'name', label: 'Root name / model', w: 'minmax(200px, 1fr)', cls: 'namecol', value: (r) => r.root_name || '', cell: (r) => {
      // the models, unless the root span's name already says it ("chat gpt-4o-mini")
      const models = (r.models || []).filter((m) => !(r.root_name || '').endsWith(' ' + m));
      return h('div', { class: 'namecell' },
        h('a', { href: '/ui/traces/' + encodeURIComponent(r.trace_id), class: 'rootname', text: r.root_name || '(unnamed)', testid: 'trace-link' }),
        models.length ? h('span', { class: 'models', text: models.join(', '), title: (r.models || []).join(', ') }) : null);
    } },
    { key: 'duration', label: 'Duration', w: '90px', cls: 'num', value: (r) => r.duration_ms || 0, cell: (r) => fmtDur(r.duration_ms) },
    { key: 'spans', label: 'Spans', w: '66px', cls: 'num', value: (r) => r.spans || 0, cell: (r) => fmtInt(r.spans) },
    { key: 'errors', label: 'Err', w: '54px', cls: 'num', title: 'Failed spans (sort)', value: (r) => r.errors || 0, cell: (r) => errorsCell(r.errors) },
    ...tokenCols(),
    { key: 'cost', label: 'Cost', w: '100px', cls: 'num', value: (r) => costNum(r.cost_usd), cell: (r) => fmtCost(r.cost_usd), tdTitle: (r) => r.cost_usd === null ? 'no call in this trace was priced' : '' },
    { key: 'feature', label: 'Feature', w: 'minmax(90px, 150px)', cls: 'tag', value: (r) => r.feature || '', cell: (r) => r.feature ?? '—', tdTitle: (r) => r.feature || '' },
    { key: 'user', label: 'User', w: 'minmax(70px, 110px)', cls: 'tag', value: (r) => r.user || '', cell: (r) => r.user ?? '—', tdTitle: (r) => r.user || '' },
  );
  if (!opts || !opts.noSession) {
    cols.push({ key: 'session', label: 'Session', w: 'minmax(70px, 110px)', cls: 'tag', value: (r) => r.session || '', cell: (r) => r.session
      ? h('a', { href: '/ui/sessions/' + encodeURIComponent(r.session), text: r.session, title: 'Open session ' + r.session })
      : '—' });
  }
  return cols;
}

function traceRowProps(r) {
  return {
    class: 'clickable' + (r.errors ? ' has-err' : ''),
    testid: 'trace-row',
    data: { traceId: r.trace_id, feature: r.feature || '' },
    on: { click: (e) => {
      if (e.target.closest('a, button')) return;
      if (e.metaKey || e.ctrlKey) { window.open('/ui/traces/' + encodeURIComponent(r.trace_id)); return; }
      navigate('/ui/traces/' + encodeURIComponent(r.trace_id));
    } },
  };
}

// ---------------------------------------------------------------------------------------------
// Trace list

const TRACE_FILTERS = [
  // [url/api key, label, kind, placeholder, width]
  ['window', 'Window', 'window'],
  ['feature', 'Feature', 'text', 'support_agent', 'w-m'],
  ['user', 'User', 'text', 'u_123', 'w-s'],
  ['session', 'Session', 'text', 's_9', 'w-s'],
  ['model', 'Model', 'text', 'gpt-4o-mini', 'w-m'],
  ['provider', 'Provider', 'text', 'openai', 'w-s'],
  ['min_cost_usd', 'Min $', 'text', '0.01', 'w-xs'],
  ['min_duration_ms', 'Min ms', 'text', '1000', 'w-xs'],
  ['q', 'Text', 'text', 'search names & content', 'w-l'],
];
const WINDOWS = [['', 'any time'], ['15m', '15 min'], ['1h', '1 hour'], ['6h', '6 hours'], ['24h', '24 hours'], ['7d', '7 days'], ['30d', '30 days']];
const PAGE_SIZE = 100;
// Tree levels indented in the trace view; deeper ones are drawn at this one, with their depth.
const MAX_INDENT = 8;

function pageTraces(gen, params) {
  const st = { rows: [], next: null, loading: false, sort: parseSort(params), auto: false, timer: 0, updated: 0, built: new WeakMap() };
  const page = h('div', { class: 'page page-list' });
  main.appendChild(page);

  // Filters form: submitting writes the URL (so a filtered view is a link) and reloads.
  const inputs = {};
  const lists = {};
  const form = h('form', { class: 'filters', testid: 'filters', autocomplete: 'off' });
  for (const [key, label, kind, ph, w] of TRACE_FILTERS) {
    let input;
    if (kind === 'window') {
      input = h('select', { name: key, testid: 'filter-' + key }, WINDOWS.map(([v, t]) => h('option', { value: v, text: t })));
      input.addEventListener('change', () => form.requestSubmit());
    } else {
      const listId = 'dl-' + key;
      input = h('input', { type: 'text', name: key, placeholder: ph, class: w, testid: 'filter-' + key, spellcheck: false });
      if (['feature', 'user', 'session', 'model', 'provider'].includes(key)) {
        lists[key] = h('datalist', { id: listId });
        input.setAttribute('list', listId);
      }
    }
    input.value = params.get(key) || '';
    inputs[key] = input;
    form.appendChild(h('label', { class: 'field' }, h('span', { class: 'flabel', text: label }), input, lists[key] || null));
  }
  const errorsOnly = h('input', { type: 'checkbox', name: 'errors', testid: 'filter-errors', checked: params.get('status') === 'error' });
  errorsOnly.addEventListener('change', () => form.requestSubmit());
  form.appendChild(h('label', { class: 'field check' }, errorsOnly, h('span', { text: 'errors only' })));
  form.appendChild(h('div', { class: 'field buttons' },
    h('button', { type: 'submit', class: 'primary', text: 'Apply', testid: 'filter-apply' }),
    h('button', { type: 'button', text: 'Clear', testid: 'filter-clear', on: { click: () => navigate('/ui/traces') } })));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [key] of TRACE_FILTERS) {
      const v = inputs[key].value.trim();
      if (v) q.set(key, v);
    }
    if (errorsOnly.checked) q.set('status', 'error');
    if (st.sort) { q.set('sort', st.sort.key); q.set('dir', st.sort.dir); }
    const s = q.toString();
    navigate('/ui/traces' + (s ? '?' + s : ''));
  });
  page.appendChild(form);

  const autoBox = h('input', { type: 'checkbox', testid: 'auto-refresh' });
  const status = h('span', { class: 'muted status', testid: 'list-status' });
  const bar = h('div', { class: 'listbar' },
    h('span', { class: 'title', text: 'Traces' }), status, h('span', { class: 'spacer' }),
    h('label', { class: 'check', title: 'Reload the first page every 5 seconds' }, autoBox, h('span', { text: 'auto-refresh 5s' })),
    h('button', { type: 'button', text: 'Refresh', testid: 'refresh', on: { click: guard(() => refresh(), 'Refresh') } }));
  page.appendChild(bar);
  const msg = h('div');
  page.appendChild(msg);
  const tableWrap = h('div', { class: 'tablewrap' });
  page.appendChild(tableWrap);
  const more = h('button', { type: 'button', class: 'more', text: 'Load more', testid: 'load-more', hidden: true,
    on: { click: guard(() => loadPage(st.next), 'Load more') } });
  page.appendChild(h('div', { class: 'morebar' }, more));

  function apiParams(cursor) {
    const p = { limit: PAGE_SIZE };
    for (const [key] of TRACE_FILTERS) {
      const v = params.get(key);
      if (v) p[key] = v;
    }
    if (params.get('status') === 'error') p.status = 'error';
    if (cursor) p.cursor = cursor;
    return p;
  }

  const hasFilter = TRACE_FILTERS.some(([k]) => params.get(k)) || params.get('status');

  function render() {
    clear(tableWrap);
    tableWrap.appendChild(sortTable({
      cols: traceSummaryCols(), rows: st.rows, sort: st.sort, testid: 'trace-table',
      rowProps: traceRowProps, rowCache: st.built,
      emptyText: hasFilter ? (st.next ? 'None found so far.' : 'No traces match these filters.') : 'No traces yet. Point an SDK at the gateway and make a call; it shows up here.',
      onSort: (s) => {
        st.sort = s;
        const q = new URLSearchParams(location.search);
        if (s) { q.set('sort', s.key); q.set('dir', s.dir); } else { q.delete('sort'); q.delete('dir'); }
        const qs = q.toString();
        history.replaceState(null, '', '/ui/traces' + (qs ? '?' + qs : ''));
        render();
      },
    }));
    more.hidden = !st.next;
    // A sort orders the loaded rows only: with more below, say so, and how to reach the rest.
    status.textContent = `${fmtInt(st.rows.length)} loaded${st.next ? ', more below' : ''}` +
      (st.sort && st.next ? ' · sorted among those loaded (filters such as min cost reach the rest)' : '') +
      (st.updated ? ` · updated ${timeFmt.format(new Date(st.updated))}` : '');
    // Suggestions for the text filters from what is loaded.
    const seen = { feature: new Set(), user: new Set(), session: new Set(), model: new Set(), provider: new Set() };
    for (const r of st.rows) {
      if (r.feature) seen.feature.add(r.feature);
      if (r.user) seen.user.add(r.user);
      if (r.session) seen.session.add(r.session);
      for (const m of r.models || []) seen.model.add(m);
      for (const p of r.providers || []) seen.provider.add(p);
    }
    for (const k in lists) {
      clear(lists[k]);
      for (const v of [...seen[k]].sort().slice(0, 200)) lists[k].appendChild(h('option', { value: v }));
    }
  }

  // A text search reads a bounded number of traces a page (the API says how far back it read
  // when it stopped before the page was full): say so, and that Load more goes on.
  function searchNote() {
    if (st.searchedTo == null) return;
    msg.appendChild(h('div', { class: 'notice', testid: 'search-partial',
      text: `The text search read traces back to ${fmtTime(st.searchedTo)} and stopped there to answer quickly. Load more searches further back.` }));
  }

  async function loadPage(cursor) {
    if (st.loading) return;
    st.loading = true;
    more.disabled = true;
    try {
      const body = await api('/api/traces', apiParams(cursor));
      if (!isCurrent(gen)) return;
      clear(msg);
      const got = body.traces || [];
      if (cursor) {
        const have = new Set(st.rows.map((r) => r.trace_id));
        for (const r of got) if (!have.has(r.trace_id)) st.rows.push(r);
      } else {
        st.rows = got;
      }
      st.next = body.next_cursor || null;
      st.searchedTo = body.searched_to_ms ?? null;
      st.updated = Date.now();
      searchNote();
      render();
    } catch (e) {
      if (!isCurrent(gen)) return;
      clear(msg);
      msg.appendChild(errorBox(e, 'Could not load traces'));
      if (!st.rows.length) render();
    } finally {
      st.loading = false;
      more.disabled = false;
    }
  }

  // Auto-refresh reloads the first page only; rows already loaded from later pages stay, those
  // on the first page are replaced (a trace grows while its spans arrive).
  async function refresh() {
    if (st.loading) return;
    st.loading = true;
    try {
      const body = await api('/api/traces', apiParams(null));
      if (!isCurrent(gen)) return;
      clear(msg);
      const fresh = body.traces || [];
      if (st.rows.length <= fresh.length || !st.next) {
        st.rows = fresh;
        st.next = body.next_cursor || null;
        st.searchedTo = body.searched_to_ms ?? null;
      } else {
        const ids = new Set(fresh.map((r) => r.trace_id));
        st.rows = fresh.concat(st.rows.filter((r) => !ids.has(r.trace_id)));
      }
      searchNote();
      st.updated = Date.now();
      render();
    } catch (e) {
      if (!isCurrent(gen)) return;
      clear(msg);
      msg.appendChild(errorBox(e, 'Could not refresh traces'));
    } finally {
      st.loading = false;
    }
  }

  autoBox.addEventListener('change', () => {
    clearInterval(st.timer);
    if (autoBox.checked) {
      st.timer = setInterval(() => { if (!document.hidden) refresh(); }, 5000);
    }
  });
  onCleanup(() => clearInterval(st.timer));

  render();
  status.textContent = 'loading…';
  loadPage(null);
}

// ---------------------------------------------------------------------------------------------
// Trace view: the tree model

const CONTENT_KEYS = ['gen_ai.system_instructions', 'gen_ai.input.messages', 'gen_ai.output.messages', 'gen_ai.tool.definitions'];

function attr(span, key) {
  const a = span.attributes;
  return a && Object.prototype.hasOwnProperty.call(a, key) ? a[key] : undefined;
}

function parseJsonAttr(span, key) {
  const v = attr(span, key);
  if (v === undefined || v === null) return { present: false };
  if (typeof v !== 'string') return { present: true, value: v };
  try {
    return { present: true, value: JSON.parse(v) };
  } catch (_) {
    return { present: true, raw: v };
  }
}

/** What kind of step a span is, for its icon and bar colour. */
function spanKind(span) {
  if (attr(span, 'gen_ai.evaluation.name') != null) return 'score';
  const op = attr(span, 'gen_ai.operation.name');
  if (op === 'execute_tool') return 'tool';
  if (op === 'embeddings') return 'embed';
  if (op) return 'llm';
  const n = (span.name || '').toLowerCase();
  // Whole words: `research_task` is no search, `storage` no RAG.
  if (/(^|[^a-z])(retriev\w*|search\w*|vector\w*|rag)($|[^a-z])/.test(n)) return 'retrieve';
  if (/tool/.test(n)) return 'tool';
  return 'app';
}

const KIND_LABEL = { llm: 'LLM', tool: 'TOOL', embed: 'EMB', retrieve: 'RET', app: 'APP', score: 'EVAL' };

/** A score's value and label, for its row: `0.9 · pass`. */
function scoreText(span) {
  const v = attr(span, 'gen_ai.evaluation.score.value');
  const l = attr(span, 'gen_ai.evaluation.score.label');
  return [v != null ? String(v) : null, l != null ? String(l) : null].filter((x) => x).join(' · ');
}

function isError(span) {
  return span.status && span.status.code === 'error';
}

/** Builds the tree once: order (depth first, children by start), depth, subtree end, self time,
 * and the per-node rollups (the API's when present). Linear apart from sorting siblings. */
function buildTree(spans) {
  const n = spans.length;
  const byId = new Map();
  for (let i = 0; i < n; i++) byId.set(spans[i].span_id, i);
  const kids = new Array(n);
  const roots = [];
  for (let i = 0; i < n; i++) {
    const p = spans[i].parent_span_id;
    const pi = p ? byId.get(p) : undefined;
    if (pi === undefined || pi === i) roots.push(i);
    else (kids[pi] || (kids[pi] = [])).push(i);
  }
  const byStart = (a, b) => (spans[a].start_ms - spans[b].start_ms) || (a - b);
  roots.sort(byStart);
  for (const k of kids) if (k) k.sort(byStart);

  const nodes = [];
  const stack = [];
  for (let r = roots.length - 1; r >= 0; r--) stack.push([roots[r], 0, -1]);
  const seen = new Uint8Array(n);
  while (stack.length) {
    const [si, depth, parent] = stack.pop();
    if (seen[si]) continue; // a cycle in broken data: show each span once
    seen[si] = 1;
    const idx = nodes.length;
    const s = spans[si];
    nodes.push({ idx, span: s, depth, parent, end: idx, children: [], kind: spanKind(s), error: isError(s), selfMs: 0, rollup: s.rollup || null, self: s.self || null });
    if (parent >= 0) nodes[parent].children.push(idx);
    const k = kids[si];
    if (k) for (let j = k.length - 1; j >= 0; j--) stack.push([k[j], depth + 1, idx]);
  }
  // Subtree ends, rollups when the API gave none, and self time, children before parents.
  const needRollup = nodes.some((x) => !x.rollup);
  const roll = needRollup ? nodes.map((x) => ({
    spans: 1, errors: x.error ? 1 : 0,
    input_tokens: num(x.self ? x.self.input_tokens : attr(x.span, 'gen_ai.usage.input_tokens')),
    cached_input_tokens: num(x.self ? x.self.cached_input_tokens : attr(x.span, 'gen_ai.usage.cache_read.input_tokens')),
    reasoning_tokens: num(x.self ? x.self.reasoning_tokens : attr(x.span, 'gen_ai.usage.reasoning.output_tokens')),
    output_tokens: num(x.self ? x.self.output_tokens : attr(x.span, 'gen_ai.usage.output_tokens')),
    cost: x.self && x.self.cost_usd != null ? parseFloat(x.self.cost_usd) : (typeof attr(x.span, 'cost.usd') === 'number' ? attr(x.span, 'cost.usd') : null),
  })) : null;
  for (let i = nodes.length - 1; i >= 0; i--) {
    const x = nodes[i];
    if (x.children.length) x.end = nodes[x.children[x.children.length - 1]].end;
    // self time: own duration minus the union of the children's intervals inside it
    const s0 = x.span.start_ms, s1 = x.span.end_ms;
    let covered = 0, curA = -Infinity, curB = -Infinity;
    for (const c of x.children) {
      const a = Math.max(s0, nodes[c].span.start_ms), b = Math.min(s1, nodes[c].span.end_ms);
      if (b <= a) continue;
      if (a > curB) { if (curB > curA) covered += curB - curA; curA = a; curB = b; } else if (b > curB) curB = b;
    }
    if (curB > curA) covered += curB - curA;
    x.selfMs = Math.max(0, (x.span.duration_ms ?? (s1 - s0)) - covered);
    if (roll && x.parent >= 0) {
      const p = roll[x.parent], c = roll[i];
      p.spans += c.spans; p.errors += c.errors;
      p.input_tokens += c.input_tokens; p.cached_input_tokens += c.cached_input_tokens;
      p.reasoning_tokens += c.reasoning_tokens; p.output_tokens += c.output_tokens;
      if (c.cost !== null) p.cost = (p.cost || 0) + c.cost;
    }
  }
  if (roll) {
    for (const x of nodes) {
      if (!x.rollup) {
        const r = roll[x.idx];
        x.rollup = { ...r, cost_usd: r.cost === null ? null : r.cost.toFixed(6) };
      }
    }
  }
  return nodes;
}

function num(v) {
  const x = Number(v);
  return Number.isFinite(x) ? x : 0;
}

// ---------------------------------------------------------------------------------------------
// Trace view: page

function pageTrace(gen, traceId, params) {
  const page = h('div', { class: 'page page-trace', testid: 'trace-page' });
  main.appendChild(page);
  page.appendChild(h('div', { class: 'loading', text: 'Loading trace ' + traceId + '…' }));
  api('/api/traces/' + encodeURIComponent(traceId)).then((body) => {
    if (!isCurrent(gen)) return;
    clear(page);
    renderTrace(gen, page, body, params);
  }, (e) => {
    if (!isCurrent(gen)) return;
    clear(page);
    page.classList.add('padded');
    const what = e.status === 404 ? 'No such trace' : 'Could not load the trace';
    page.appendChild(errorBox(e, what));
    page.appendChild(h('p', null, h('a', { href: '/ui/traces', text: '← back to the traces' })));
  }).catch((e) => showToast('Trace view', e));
}

function renderTrace(gen, page, body, params) {
  const t = body.trace || {};
  const spans = body.spans || [];
  const nodes = buildTree(spans);
  const n = nodes.length;
  const traceId = t.trace_id || (spans[0] && spans[0].trace_id) || '';
  let t0 = Infinity, t1 = -Infinity;
  for (const x of nodes) { t0 = Math.min(t0, x.span.start_ms); t1 = Math.max(t1, x.span.end_ms); }
  if (!Number.isFinite(t0)) { t0 = t.start_ms || 0; t1 = t.end_ms || t0; }
  const total = Math.max(t1 - t0, 0.001);

  // Marks: the slowest span by its own time, the most expensive by its own cost.
  let slowest = -1, priciest = -1, best = -1;
  for (const x of nodes) {
    if (slowest < 0 || x.selfMs > nodes[slowest].selfMs) slowest = x.idx;
    const c = x.self ? costNum(x.self.cost_usd) : -1;
    if (c > 0 && c > best) { best = c; priciest = x.idx; }
  }
  if (n < 2) slowest = -1;

  // Header
  const rootNode = nodes[0];
  const head = h('div', { class: 'trace-head', testid: 'trace-head' },
    h('div', { class: 'th-line1' },
      h('a', { href: '/ui/traces', class: 'back', text: '← Traces', title: 'Back to the trace list' }),
      h('span', { class: 'th-name', text: t.root_name || (rootNode && rootNode.span.name) || '(unnamed)' }),
      t.errors ? h('span', { class: 'badge err', text: t.errors + (t.errors === 1 ? ' error' : ' errors') }) : h('span', { class: 'badge ok', text: 'ok' }),
      idChip('trace', traceId, 'copy-trace-id'),
      h('span', { class: 'spacer' }),
      t.session ? h('a', { class: 'btn', href: '/ui/sessions/' + encodeURIComponent(t.session), text: 'Session ' + t.session, title: 'Session ' + t.session, testid: 'trace-session-link' }) : null,
      h('a', { class: 'btn', href: '/api/traces/' + encodeURIComponent(traceId) + '/otlp', download: 'trace-' + traceId + '.otlp.json', text: 'OTLP JSON', title: 'Download the trace as OTLP/JSON (loads in other OpenTelemetry tools)', testid: 'otlp-download', on: { click: (ev) => downloadWithToken(ev, traceId) } })),
    h('div', { class: 'th-stats' },
      stat('Started', fmtFull(t.start_ms ?? t0)),
      stat('Duration', fmtDur(t.duration_ms ?? total)),
      stat('Spans', fmtInt(t.spans ?? n)),
      stat('Cost', fmtCost(t.cost_usd), 'trace-cost'),
      stat('Tokens in', fmtInt(t.input_tokens) + (t.cached_input_tokens ? ` (${fmtInt(t.cached_input_tokens)} cached)` : '')),
      stat('Tokens out', fmtInt(t.output_tokens) + (t.reasoning_tokens ? ` (${fmtInt(t.reasoning_tokens)} reasoning)` : '')),
      t.feature ? stat('Feature', linkTo('/ui/traces?feature=' + encodeURIComponent(t.feature), t.feature)) : null,
      t.user ? stat('User', linkTo('/ui/traces?user=' + encodeURIComponent(t.user), t.user)) : null,
      (t.models && t.models.length) ? stat('Models', t.models.join(', ')) : null,
      (t.providers && t.providers.length) ? stat('Providers', t.providers.join(', ')) : null));
  page.appendChild(head);
  if (body.spans_unreadable) {
    page.appendChild(h('div', { class: 'notice', testid: 'spans-unreadable',
      text: `${fmtInt(body.spans_unreadable)} of this trace's spans could not be read back: their file in the store is gone or damaged (the gateway's log names it). The tree shows the rest.` }));
  }

  const split = h('div', { class: 'split' });
  page.appendChild(split);
  const left = h('section', { class: 'pane tree-pane', testid: 'tree-pane' });
  const handle = h('div', { class: 'splitter', title: 'Drag to resize', attrs: { role: 'separator' } });
  const right = h('section', { class: 'pane span-pane', testid: 'span-panel' });
  split.append(left, handle, right);
  makeSplitter(split, handle);

  // Tree toolbar
  const search = h('input', { type: 'search', placeholder: 'Search spans: name, attributes, content', title: 'Enter jumps to the next match, Escape clears', testid: 'tree-search', spellcheck: false });
  const onlyMatches = h('input', { type: 'checkbox', checked: true, testid: 'tree-search-filter' });
  const searchInfo = h('span', { class: 'muted small', testid: 'tree-search-info' });
  left.appendChild(h('div', { class: 'tree-tools' }, search,
    h('label', { class: 'check small', title: 'Hide spans that do not match (their ancestors stay)' }, onlyMatches, h('span', { text: 'only matches' })),
    searchInfo,
    h('span', { class: 'spacer' }),
    h('button', { type: 'button', class: 'small', text: 'Expand all', testid: 'expand-all', on: { click: () => { collapsed.clear(); syncToggles(); applyVisibility(); } } }),
    h('button', { type: 'button', class: 'small', text: 'Collapse all', testid: 'collapse-all', on: { click: () => { for (const x of nodes) if (x.children.length && x.depth > 0) collapsed.add(x.idx); syncToggles(); applyVisibility(); } } })));
  left.appendChild(h('div', { class: 'legend small muted' },
    legendItem('llm', 'LLM call'), legendItem('tool', 'tool'), legendItem('retrieve', 'retrieval'), legendItem('app', 'app'),
    h('span', { class: 'legend-item' }, h('span', { class: 'mark slow', text: 'slowest' }), 'own time'),
    h('span', { class: 'legend-item' }, h('span', { class: 'mark cost', text: 'top $' }), 'own cost'),
    h('span', { class: 'legend-item' }, h('span', { class: 'mark err', text: '!' }), 'error')));

  // Column header with the time axis
  const axis = h('div', { class: 'c-wf axis' });
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    axis.appendChild(h('span', { class: 'tick', style: { left: (f * 100) + '%' }, text: f ? fmtDur(total * f) : '0' }));
  }
  const treeHead = h('div', { class: 'trow thead' },
    h('div', { class: 'c-name', text: 'Span' }), h('div', { class: 'c-dur', text: 'Duration' }),
    h('div', { class: 'c-tok', text: 'Tok', title: 'Input + output tokens of the subtree' }),
    h('div', { class: 'c-cost', text: 'Cost', title: 'Cost of the subtree' }), axis);
  const treeBody = h('div', { class: 'tree', testid: 'span-tree', tabIndex: 0, attrs: { role: 'tree', 'aria-label': 'Spans' } });
  const treeScroll = h('div', { class: 'tree-scroll' }, treeHead, treeBody);
  left.appendChild(treeScroll);

  // Rows, built once.
  const rows = new Array(n);
  const toggles = new Array(n);
  const names = new Array(n);
  const frag = document.createDocumentFragment();
  for (const x of nodes) {
    const s = x.span;
    const r = x.rollup || {};
    const tok = (r.input_tokens || 0) + (r.output_tokens || 0);
    const toggle = x.children.length
      ? h('span', { class: 'twisty', text: '▾', title: 'Collapse / expand', testid: 'span-toggle' })
      : h('span', { class: 'twisty leaf' });
    toggles[x.idx] = toggle;
    // The name in full on hover: deep rows and long names are cut to the column.
    const nameEl = h('span', { class: 'sname', text: s.name || '(unnamed)', title: s.name || '' });
    names[x.idx] = nameEl;
    const marks = [];
    if (x.error) marks.push(h('span', { class: 'mark err', text: '!', title: 'error: ' + ((s.status && s.status.message) || 'failed') }));
    if (x.idx === slowest) marks.push(h('span', { class: 'mark slow', text: 'slowest', title: `slowest span: ${fmtDur(x.selfMs)} of its own time`, testid: 'mark-slowest' }));
    if (x.idx === priciest) marks.push(h('span', { class: 'mark cost', text: 'top $', title: 'most expensive span: ' + fmtCost(x.self.cost_usd), testid: 'mark-priciest' }));
    if (s.parent_missing) marks.push(h('span', { class: 'mark miss', text: '↰', title: 'its parent span is not in this trace' }));
    if (x.kind === 'score') marks.push(h('span', { class: 'mark score', text: scoreText(s), title: 'score of the span above (POST /api/scores)' + (attr(s, 'gen_ai.evaluation.explanation') ? ': ' + attr(s, 'gen_ai.evaluation.explanation') : ''), testid: 'mark-score' }));
    if (x.children.length) marks.push(h('span', { class: 'kids', text: String((r.spans || x.end - x.idx + 1) - 1), title: 'spans below' }));
    const left0 = ((s.start_ms - t0) / total) * 100;
    const width = Math.max(((s.end_ms - s.start_ms) / total) * 100, 0.15);
    const bar = h('div', { class: 'bar k-' + x.kind + (x.error ? ' e' : ''), style: { left: left0.toFixed(3) + '%', width: width.toFixed(3) + '%' } });
    // the duration beside its bar: after it, before it, or inside it when the bar is wide
    let labelPos;
    if (left0 + width <= 80) labelPos = { cls: 'barlabel', style: { left: (left0 + width).toFixed(3) + '%' } };
    else if (left0 >= 20) labelPos = { cls: 'barlabel', style: { right: (100 - left0).toFixed(3) + '%' } };
    else labelPos = { cls: 'barlabel inside', style: { right: Math.max(0, 100 - left0 - width).toFixed(3) + '%' } };
    const barLabel = h('span', { class: labelPos.cls, text: fmtDur(s.duration_ms), style: labelPos.style });
    const row = h('div', {
      class: 'trow' + (x.error ? ' err' : ''),
      testid: 'span-row',
      data: { idx: x.idx, spanId: s.span_id, depth: x.depth, name: s.name || '' },
      attrs: { role: 'treeitem', 'aria-level': x.depth + 1 },
    },
      // Indented 14 px a level up to MAX_INDENT levels, so that a deep tree keeps its names
      // readable; deeper rows say their depth.
      h('div', { class: 'c-name', style: { paddingLeft: (4 + Math.min(x.depth, MAX_INDENT) * 14) + 'px' } }, toggle,
        x.depth > MAX_INDENT ? h('span', { class: 'depth', text: String(x.depth), title: 'depth ' + x.depth }) : null,
        h('span', { class: 'kind k-' + x.kind, text: KIND_LABEL[x.kind] }), nameEl, marks),
      h('div', { class: 'c-dur', text: fmtDur(s.duration_ms) }),
      h('div', { class: 'c-tok', text: tok ? fmtCompact(tok) : '' }),
      h('div', { class: 'c-cost', text: r.cost_usd != null ? fmtCost(r.cost_usd) : '', title: r.cost_usd != null ? 'subtree cost ' + fmtCost(r.cost_usd) + (x.self && x.self.cost_usd != null ? ', own ' + fmtCost(x.self.cost_usd) : '') : '' }),
      h('div', { class: 'c-wf' }, bar, barLabel));
    rows[x.idx] = row;
    frag.appendChild(row);
  }
  treeBody.appendChild(frag);

  // Visibility: one linear pass; only rows whose state changes are touched.
  const collapsed = new Set();
  const shown = new Uint8Array(n).fill(1);
  let matches = null; // Uint8Array of direct matches while searching
  let keep = null; // matches plus their ancestors
  let matchList = [];
  let matchPos = -1;

  function syncToggles() {
    for (const x of nodes) {
      if (!x.children.length) continue;
      const c = collapsed.has(x.idx);
      toggles[x.idx].textContent = c ? '▸' : '▾';
      rows[x.idx].setAttribute('aria-expanded', c ? 'false' : 'true');
      rows[x.idx].classList.toggle('collapsed', c);
    }
  }

  function applyVisibility() {
    const filtering = keep && onlyMatches.checked;
    let i = 0;
    while (i < n) {
      const vis = filtering ? keep[i] === 1 : true;
      setShown(i, vis);
      if (!filtering && collapsed.has(i)) {
        const end = nodes[i].end;
        for (let j = i + 1; j <= end; j++) setShown(j, false);
        i = end + 1;
      } else {
        i++;
      }
    }
  }
  function setShown(i, v) {
    const b = v ? 1 : 0;
    if (shown[i] !== b) { shown[i] = b; rows[i].hidden = !v; }
  }

  function toggle(idx) {
    if (!nodes[idx].children.length) return;
    if (collapsed.has(idx)) collapsed.delete(idx); else collapsed.add(idx);
    const c = collapsed.has(idx);
    toggles[idx].textContent = c ? '▸' : '▾';
    rows[idx].setAttribute('aria-expanded', c ? 'false' : 'true');
    rows[idx].classList.toggle('collapsed', c);
    applyVisibility();
  }

  // Search over names and attribute text; the haystacks are made on first use.
  let hay = null;
  function haystacks() {
    if (!hay) {
      hay = nodes.map((x) => {
        let s = (x.span.name || '') + '\n' + x.span.span_id + '\n' + ((x.span.status && x.span.status.message) || '');
        const a = x.span.attributes || {};
        for (const k in a) s += '\n' + k + '=' + (typeof a[k] === 'string' ? a[k] : JSON.stringify(a[k]));
        return s.toLowerCase();
      });
    }
    return hay;
  }
  let searchTimer = 0;
  function runSearch() {
    const q = search.value.trim().toLowerCase();
    for (const i of matchList) { rows[i].classList.remove('match'); names[i].textContent = nodes[i].span.name || '(unnamed)'; }
    matchList = [];
    matchPos = -1;
    if (!q) {
      matches = keep = null;
      searchInfo.textContent = '';
      applyVisibility();
      return;
    }
    const hs = haystacks();
    matches = new Uint8Array(n);
    keep = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      if (hs[i].includes(q)) {
        matches[i] = 1;
        matchList.push(i);
        for (let p = i; p >= 0 && !keep[p]; p = nodes[p].parent) keep[p] = 1;
      }
    }
    for (const i of matchList) {
      rows[i].classList.add('match');
      highlight(names[i], nodes[i].span.name || '(unnamed)', q);
    }
    searchInfo.textContent = matchList.length ? `${matchList.length} of ${n} spans match` : 'no span matches';
    applyVisibility();
  }
  function highlight(el, text, q) {
    const at = text.toLowerCase().indexOf(q);
    if (at < 0) return;
    clear(el);
    el.append(text.slice(0, at), h('mark', { text: text.slice(at, at + q.length) }), text.slice(at + q.length));
  }
  search.addEventListener('input', () => { clearTimeout(searchTimer); searchTimer = setTimeout(runSearch, 120); });
  search.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      clearTimeout(searchTimer);
      runSearch();
      if (matchList.length) {
        matchPos = (matchPos + 1) % matchList.length;
        select(matchList[matchPos], true);
      }
    } else if (e.key === 'Escape') {
      search.value = '';
      runSearch();
    }
  });
  onlyMatches.addEventListener('change', applyVisibility);

  // Selection and the span panel.
  let selected = -1;
  function select(idx, scroll) {
    if (idx < 0 || idx >= n) return;
    if (selected >= 0) rows[selected].classList.remove('selected');
    selected = idx;
    rows[idx].classList.add('selected');
    // make sure it is visible (expand collapsed ancestors)
    let changed = false;
    for (let p = nodes[idx].parent; p >= 0; p = nodes[p].parent) {
      if (collapsed.has(p)) { collapsed.delete(p); changed = true; }
    }
    if (changed) { syncToggles(); applyVisibility(); }
    if (scroll) rows[idx].scrollIntoView({ block: 'nearest' });
    const q = new URLSearchParams(location.search);
    q.set('span', nodes[idx].span.span_id);
    history.replaceState(null, '', location.pathname + '?' + q.toString());
    try {
      renderSpanPanel(right, nodes, idx, traceId, ctx, select);
    } catch (e) {
      clear(right);
      right.appendChild(errorBox(e, 'Could not show this span'));
    }
  }
  const ctx = { toolIndex: null, spanById: null };

  treeBody.addEventListener('click', (e) => {
    const row = e.target.closest('.trow');
    if (!row) return;
    const idx = Number(row.dataset.idx);
    if (e.target.closest('.twisty')) { toggle(idx); return; }
    select(idx, false);
  });
  // token breakdowns as tooltips, made when first hovered (not 1,000 up front)
  treeBody.addEventListener('mouseover', (e) => {
    const cell = e.target.closest('.c-tok');
    if (!cell || cell.title) return;
    const row = cell.closest('.trow');
    if (row) cell.title = 'subtree tokens\n' + tokensTitle(nodes[Number(row.dataset.idx)].rollup);
  });
  treeBody.addEventListener('dblclick', (e) => {
    const row = e.target.closest('.trow');
    if (row && !e.target.closest('.twisty')) toggle(Number(row.dataset.idx));
  });
  treeBody.addEventListener('keydown', (e) => {
    if (selected < 0) { if (['ArrowDown', 'ArrowUp'].includes(e.key)) { select(0, true); e.preventDefault(); } return; }
    let i = selected;
    if (e.key === 'ArrowDown') { do { i++; } while (i < n && !shown[i]); if (i < n) select(i, true); }
    else if (e.key === 'ArrowUp') { do { i--; } while (i >= 0 && !shown[i]); if (i >= 0) select(i, true); }
    else if (e.key === 'ArrowLeft') { if (nodes[i].children.length && !collapsed.has(i)) toggle(i); else if (nodes[i].parent >= 0) select(nodes[i].parent, true); }
    else if (e.key === 'ArrowRight') { if (collapsed.has(i)) toggle(i); }
    else return;
    e.preventDefault();
  });

  // The span from the URL, else the first error, else the first LLM call, else the root.
  const want = params.get('span');
  let first = want ? nodes.findIndex((x) => x.span.span_id === want) : -1;
  if (first < 0) first = nodes.findIndex((x) => x.error && x.kind === 'llm');
  if (first < 0) first = nodes.findIndex((x) => x.kind === 'llm');
  if (first < 0) first = 0;
  if (n) select(first, true);
  else right.appendChild(h('div', { class: 'notice', text: 'This trace has no spans.' }));
}

function stat(label, value, testid) {
  return h('div', { class: 'stat', testid }, h('div', { class: 'stat-label', text: label }),
    h('div', { class: 'stat-value' }, value));
}

function linkTo(href, text) {
  return h('a', { href, text });
}

function legendItem(kind, label) {
  return h('span', { class: 'legend-item' }, h('span', { class: 'swatch k-' + kind }), label);
}

function makeSplitter(split, handle) {
  const saved = Number(localStorage.getItem('sidetrace.split') || 0);
  if (saved > 30 && saved < 80) split.style.setProperty('--left', saved + '%');
  handle.addEventListener('pointerdown', (e) => {
    e.preventDefault();
    handle.setPointerCapture(e.pointerId);
    const rect = split.getBoundingClientRect();
    const move = (ev) => {
      const pct = Math.min(78, Math.max(32, ((ev.clientX - rect.left) / rect.width) * 100));
      split.style.setProperty('--left', pct.toFixed(1) + '%');
    };
    const up = () => {
      handle.removeEventListener('pointermove', move);
      handle.removeEventListener('pointerup', up);
      const v = parseFloat(split.style.getPropertyValue('--left'));
      if (v) localStorage.setItem('sidetrace.split', String(v));
    };
    handle.addEventListener('pointermove', move);
    handle.addEventListener('pointerup', up);
  });
}

// ---------------------------------------------------------------------------------------------
// Span panel

/** Tool results and execute_tool spans across the whole trace, by call id (built once). */
function toolIndex(nodes, ctx) {
  if (ctx.toolIndex) return ctx.toolIndex;
  const results = new Map(); // id -> {response, spanIdx}
  const toolSpans = new Map(); // id -> node idx of the execute_tool span
  const calls = new Map(); // id -> {name, arguments, spanIdx}
  const idBySig = new Map(); // name + arguments -> id, for calls stored without their id
  for (const x of nodes) {
    const callId = attr(x.span, 'gen_ai.tool.call.id');
    if (callId) toolSpans.set(String(callId), x.idx);
    for (const key of ['gen_ai.input.messages', 'gen_ai.output.messages']) {
      const v = attr(x.span, key);
      if (typeof v !== 'string' || !v.includes('tool_call')) continue;
      const p = parseJsonAttr(x.span, key);
      if (!Array.isArray(p.value)) continue;
      for (const m of p.value) {
        for (const part of (m && Array.isArray(m.parts) ? m.parts : [])) {
          if (!part || part.id == null) continue;
          const id = String(part.id);
          if (part.type === 'tool_call_response' && !results.has(id)) results.set(id, { response: part.response, spanIdx: x.idx });
          if (part.type === 'tool_call' && !calls.has(id)) {
            calls.set(id, { name: part.name, arguments: part.arguments, spanIdx: x.idx });
            idBySig.set(callSig(part), id);
          }
        }
      }
    }
  }
  ctx.toolIndex = { results, toolSpans, calls, idBySig };
  return ctx.toolIndex;
}

/** A tool call's name and arguments, the same whether the arguments came as JSON text or as an
 * object. The gateway records each tool call's id; spans stored by an earlier version (or an
 * app's spans) may lack it, and the next request's history carries the same call with it. */
function callSig(part) {
  let args = part.arguments;
  if (typeof args === 'string') { try { args = JSON.parse(args); } catch (_) { /* keep the text */ } }
  return String(part.name) + '\u0000' + JSON.stringify(args ?? null);
}

function renderSpanPanel(panel, nodes, idx, traceId, ctx, select) {
  const x = nodes[idx];
  const s = x.span;
  const a = s.attributes || {};
  clear(panel);
  panel.scrollTop = 0;
  const level = attr(s, 'sidetrace.content.level');
  const outcome = attr(s, 'sidetrace.outcome');
  const op = attr(s, 'gen_ai.operation.name');

  // Head
  const statusBadge = s.status && s.status.code === 'error'
    ? h('span', { class: 'badge err', text: 'error' })
    : s.status && s.status.code === 'ok' ? h('span', { class: 'badge ok', text: 'ok' }) : h('span', { class: 'badge', text: 'unset' });
  panel.appendChild(h('div', { class: 'sp-head' },
    h('div', { class: 'sp-title' },
      h('span', { class: 'kind k-' + x.kind, text: KIND_LABEL[x.kind] }),
      h('span', { class: 'sp-name', text: s.name || '(unnamed)', testid: 'span-name' }),
      statusBadge,
      // `completed` says the provider answered; beside an error it is no success.
      outcome ? h('span', {
        class: 'badge ' + (outcome !== 'completed' ? 'err' : s.status && s.status.code === 'error' ? '' : 'ok'),
        text: outcome,
        title: 'sidetrace.outcome: how the call ended' + (outcome === 'completed' ? ' (the provider answered)' : ''),
      }) : null),
    h('div', { class: 'sp-sub' },
      h('span', { text: fmtDur(s.duration_ms) }),
      h('span', { class: 'muted', text: fmtFull(s.start_ms), title: 'start ' + (s.start_unix_nanos || '') + ' ns' }),
      h('span', { class: 'muted', text: `${s.kind || ''}${s.service ? ' · ' + s.service : ''}${s.scope && s.scope !== s.service ? ' / ' + s.scope : ''}` }),
      x.parent >= 0 ? h('a', { href: '#', class: 'small', text: '↑ parent', on: { click: (e) => { e.preventDefault(); select(x.parent, true); } } }) : null),
    h('div', { class: 'sp-ids' }, idChip('span', s.span_id, 'copy-span-id'), idChip('trace', traceId, 'copy-span-trace-id'))));

  if (s.status && s.status.code === 'error') {
    panel.appendChild(h('div', { class: 'error-box', testid: 'span-error' },
      h('div', { class: 'error-head', text: 'Error' + (a['error.type'] ? ': ' + a['error.type'] : '') }),
      h('div', { class: 'error-msg', text: (s.status.message || 'the span failed') + (Number(a['http.response.status_code']) >= 400 ? ` (HTTP ${a['http.response.status_code']})` : '') })));
  }

  // Facts: model, usage, cost, grouping
  const facts = [];
  const fact = (label, value, testid) => { if (value !== undefined && value !== null && value !== '') facts.push(h('div', { class: 'fact', testid }, h('span', { class: 'flabel', text: label }), h('span', { class: 'fval' }, value))); };
  const reqModel = a['gen_ai.request.model'], respModel = a['gen_ai.response.model'];
  fact('Model', reqModel ? (respModel && respModel !== reqModel ? `${reqModel} → ${respModel}` : reqModel) : respModel);
  fact('Provider', a['gen_ai.provider.name'] || a['sidetrace.provider']);
  fact('Operation', op);
  const output = parseJsonAttr(s, 'gen_ai.output.messages');
  let finish = a['gen_ai.response.finish_reasons'];
  if (Array.isArray(finish)) finish = finish.join(', ');
  if (!finish && Array.isArray(output.value)) finish = output.value.map((m) => m && m.finish_reason).filter(Boolean).join(', ');
  fact('Finish', finish, 'span-finish');
  if (a['gen_ai.tool.name']) fact('Tool', a['gen_ai.tool.name'] + (a['gen_ai.tool.call.id'] ? ' (' + a['gen_ai.tool.call.id'] + ')' : ''));
  // A score sits at the end of the span it scores; its event says when it was posted.
  const evaluation = x.kind === 'score' && (s.events || []).find((e) => e.name === 'gen_ai.evaluation.result');
  if (evaluation) fact('Posted', fmtFull(evaluation.time_ms), 'span-score-posted');
  const self = x.self;
  const inTok = self ? self.input_tokens : a['gen_ai.usage.input_tokens'];
  const outTok = self ? self.output_tokens : a['gen_ai.usage.output_tokens'];
  if (op && op !== 'execute_tool' || (self && (self.input_tokens || self.output_tokens))) {
    const cached = self ? self.cached_input_tokens : a['gen_ai.usage.cache_read.input_tokens'];
    const reas = self ? self.reasoning_tokens : a['gen_ai.usage.reasoning.output_tokens'];
    const cw = a['gen_ai.usage.cache_creation.input_tokens'];
    fact('Usage', h('span', { testid: 'span-usage' },
      `in ${fmtInt(inTok)} (cached ${fmtInt(cached || 0)}${cw ? ', cache write ' + fmtInt(cw) : ''})  ·  out ${fmtInt(outTok)} (reasoning ${fmtInt(reas || 0)})`));
  }
  const ownCost = self ? self.cost_usd : (typeof a['cost.usd'] === 'number' ? String(a['cost.usd']) : null);
  if (op && op !== 'execute_tool' || ownCost != null) {
    fact('Cost', h('span', { testid: 'span-cost' }, ownCost != null ? fmtCost(ownCost) : 'not priced',
      a['sidetrace.price.model'] ? h('span', { class: 'muted', text: '  priced as ' + a['sidetrace.price.model'] }) : null));
  }
  if (x.children.length && x.rollup) {
    const r = x.rollup;
    fact('Subtree', `${fmtInt(r.spans)} spans · ${fmtCost(r.cost_usd)} · in ${fmtInt(r.input_tokens)} / out ${fmtInt(r.output_tokens)}${r.errors ? ' · ' + r.errors + ' errors' : ''}`);
  }
  if (a['gen_ai.response.time_to_first_chunk'] != null) fact('First chunk', fmtDur(Number(a['gen_ai.response.time_to_first_chunk']) * 1000));
  if (a['gen_ai.request.stream']) fact('Stream', 'yes');
  const params = ['temperature', 'top_p', 'max_tokens', 'seed'].filter((k) => a['gen_ai.request.' + k] != null).map((k) => `${k}=${a['gen_ai.request.' + k]}`);
  if (params.length) fact('Params', params.join('  '));
  fact('Feature', a['feature.id'] ? linkTo('/ui/traces?feature=' + encodeURIComponent(a['feature.id']), a['feature.id']) : null);
  fact('User', a['user.id'] ? linkTo('/ui/traces?user=' + encodeURIComponent(a['user.id']), a['user.id']) : null);
  fact('Session', a['session.id'] ? linkTo('/ui/sessions/' + encodeURIComponent(a['session.id']), a['session.id'] + (a['session.path'] ? '  ' + a['session.path'] : '')) : null);
  const tmpl = a['prompt.template_id'] || a['prompt.template'];
  fact('Prompt', tmpl || a['prompt.version'] ? `${tmpl || '?'}${a['prompt.version'] ? ' @ ' + a['prompt.version'] : ''}` : null);
  if (level) fact('Capture', level);
  if (facts.length) panel.appendChild(h('div', { class: 'facts', testid: 'span-facts' }, facts));

  // Content
  const sys = parseJsonAttr(s, 'gen_ai.system_instructions');
  const input = parseJsonAttr(s, 'gen_ai.input.messages');
  const tools = parseJsonAttr(s, 'gen_ai.tool.definitions');
  const isLlm = x.kind === 'llm' || x.kind === 'embed';
  if (level === 'metadata') {
    const count = a['sidetrace.input.message_count'];
    const names = Array.isArray(tools.value) ? tools.value.map((t) => t && t.name).filter(Boolean) : [];
    panel.appendChild(h('div', { class: 'notice', testid: 'content-note' },
      h('b', { text: 'No message text: ' }),
      'this call was captured at level ', h('code', { text: 'metadata' }),
      ', which keeps counts and tool names only.',
      count != null ? ` ${count} input message${count === 1 ? '' : 's'}.` : '',
      names.length ? ` Tools offered: ${names.join(', ')}.` : ''));
  } else if (level === 'none' && isLlm) {
    panel.appendChild(h('div', { class: 'notice', testid: 'content-note' }, 'No content: this call was captured at level ', h('code', { text: 'none' }), '.'));
  } else if (isLlm && !input.present && !output.present && !sys.present) {
    panel.appendChild(h('div', { class: 'notice', testid: 'content-note', text: 'No message content was captured for this call' + (level ? ` (capture level ${level}).` : '.') }));
  }
  if (a['sidetrace.content.truncated']) {
    panel.appendChild(h('div', { class: 'notice warn', text: 'Some content was cut to fit the capture size limit.' }));
  }
  if (level === 'redacted' && (input.present || output.present)) {
    panel.appendChild(h('div', { class: 'small muted redacted-note', text: 'Capture level redacted: personal data in the text was replaced before it was stored.' }));
  }

  const tix = toolIndex(nodes, ctx);
  const chatCtx = { tix, nodes, select, shownCalls: new Set() };
  if (sys.present || input.present) {
    const sec = section('Input', 'span-input', true);
    if (sys.present) sec.body.appendChild(renderSystem(sys));
    if (input.present) sec.body.appendChild(renderMessages(input, chatCtx, 'input', Number(a['sidetrace.input.messages_omitted']) || 0));
    panel.appendChild(sec.el);
  }
  // A failed call's answer held no message: its empty assistant turn is not shown as a reply.
  const failed = s.status && s.status.code === 'error';
  const said = (m) => m && ((Array.isArray(m.parts) && m.parts.length) || m.finish_reason);
  const noReply = failed && Array.isArray(output.value) && !output.value.some(said);
  if (output.present && !noReply) {
    const sec = section('Output', 'span-output', true);
    sec.body.appendChild(renderMessages(output, chatCtx, 'output'));
    panel.appendChild(sec.el);
  }
  // An execute_tool span: its call and result, from the chat spans that carried them.
  const callId = a['gen_ai.tool.call.id'];
  if (callId && (tix.calls.has(String(callId)) || tix.results.has(String(callId)))) {
    const sec = section('Tool call', 'span-toolcall', true);
    const c = tix.calls.get(String(callId)) || { name: a['gen_ai.tool.name'] };
    sec.body.appendChild(renderToolCall({ type: 'tool_call', id: callId, name: c.name, arguments: c.arguments }, { ...chatCtx, hideToolSpanLink: true }));
    panel.appendChild(sec.el);
  }
  if (tools.present && level !== 'metadata') {
    const sec = section(`Tools offered (${Array.isArray(tools.value) ? tools.value.length : '?'})`, 'span-tools', false);
    if (Array.isArray(tools.value)) {
      for (const t of tools.value) {
        sec.body.appendChild(h('div', { class: 'tooldef' },
          h('div', null, h('b', { text: (t && t.name) || '?' }), t && t.description ? h('span', { class: 'muted', text: ' — ' + t.description }) : null),
          t && t.parameters ? h('pre', { class: 'json small', text: JSON.stringify(t.parameters, null, 2) }) : null));
      }
    } else {
      sec.body.appendChild(h('pre', { class: 'json', text: tools.raw || JSON.stringify(tools.value, null, 2) }));
    }
    panel.appendChild(sec.el);
  }

  // Every attribute.
  const keys = Object.keys(a).sort();
  const attrSec = section(`Attributes (${keys.length})`, 'span-attributes', true);
  const filter = h('input', { type: 'search', class: 'attr-filter', placeholder: 'filter attributes', spellcheck: false });
  const tbody = h('tbody');
  const trs = [];
  for (const k of keys) {
    const v = a[k];
    const text = typeof v === 'string' ? v : JSON.stringify(v);
    const isContent = CONTENT_KEYS.includes(k);
    const valCell = h('td', { class: 'aval' + (isContent ? ' content' : '') });
    if (isContent && text.length > 240) {
      valCell.appendChild(h('details', null, h('summary', { text: text.slice(0, 160) + '…  (' + fmtInt(text.length) + ' chars)' }), h('pre', { text: text })));
    } else {
      valCell.appendChild(h('span', { class: 'v-' + typeof v, text: text }));
    }
    const tr = h('tr', { data: { k: (k + '=' + text).toLowerCase().slice(0, 4000) } }, h('td', { class: 'akey', text: k }), valCell);
    trs.push(tr);
    tbody.appendChild(tr);
  }
  filter.addEventListener('input', () => {
    const q = filter.value.trim().toLowerCase();
    for (const tr of trs) tr.hidden = q ? !tr.dataset.k.includes(q) : false;
  });
  attrSec.body.append(filter, h('table', { class: 'attrs' }, tbody));
  panel.appendChild(attrSec.el);

  // Raw span JSON, built when opened.
  const rawPre = h('pre', { class: 'json raw', testid: 'span-raw-json' });
  const raw = h('details', { class: 'section raw-section', testid: 'span-raw' },
    h('summary', { class: 'sec-title' }, 'Raw span JSON'), rawPre);
  raw.addEventListener('toggle', () => { if (raw.open && !rawPre.textContent) rawPre.textContent = JSON.stringify(s, null, 2); });
  panel.appendChild(raw);
}

function section(title, testid, open) {
  const body = h('div', { class: 'sec-body' });
  const el = h('details', { class: 'section', open, testid }, h('summary', { class: 'sec-title', text: title }), body);
  return { el, body };
}

function renderSystem(sys) {
  const box = h('div', { class: 'msg role-system', testid: 'chat-message' },
    h('div', { class: 'msg-head' }, h('span', { class: 'role', text: 'system' })));
  const body = h('div', { class: 'msg-body' });
  if (sys.raw !== undefined) body.appendChild(h('pre', { class: 'text', text: sys.raw }));
  else if (typeof sys.value === 'string') body.appendChild(h('pre', { class: 'text', text: sys.value }));
  else if (Array.isArray(sys.value)) {
    for (const p of sys.value) {
      // Parts ({type, content}) per the GenAI conventions; tolerate messages ({role, parts}).
      if (p && Array.isArray(p.parts)) for (const q of p.parts) body.appendChild(renderPart(q, null));
      else body.appendChild(renderPart(p, null));
    }
  } else body.appendChild(h('pre', { class: 'json', text: JSON.stringify(sys.value, null, 2) }));
  box.appendChild(body);
  return box;
}

const SHOW_LAST = 8;

// `omitted`: input messages the gateway left out between the first and the latest to fit its
// capture size limit (`sidetrace.input.messages_omitted`); a note stands in their place.
function renderMessages(parsed, chatCtx, which, omitted = 0) {
  const wrap = h('div', { class: 'chat', testid: 'chat-' + which });
  if (parsed.raw !== undefined) {
    wrap.appendChild(h('div', { class: 'small muted', text: 'Not valid JSON; shown as stored:' }));
    wrap.appendChild(h('pre', { class: 'text', text: parsed.raw }));
    return wrap;
  }
  const msgs = Array.isArray(parsed.value) ? parsed.value : [parsed.value];
  // Appends message i (numbered as in the request: after the gap, past the omitted ones).
  const add = (into, m, i) => {
    into.appendChild(renderMessage(m, i > 0 ? i + omitted : i, chatCtx));
    if (i === 0 && omitted > 0) {
      into.appendChild(h('div', { class: 'notice omitted', testid: 'omitted-messages',
        text: `${omitted} message${omitted === 1 ? '' : 's'} between the first and the latest ${omitted === 1 ? 'was' : 'were'} not kept: the conversation was over the capture size limit ([capture] max_bytes).` }));
    }
  };
  if (which === 'input' && msgs.length > SHOW_LAST + 2) {
    // With messages left out, the first stays in sight with the note after it.
    const first = omitted > 0 ? 1 : 0;
    if (first) add(wrap, msgs[0], 0);
    const shownFrom = msgs.length - SHOW_LAST;
    const hiddenN = shownFrom - first;
    const earlier = h('div', { class: 'earlier', hidden: true });
    const btn = h('button', { type: 'button', class: 'small earlier-btn', text: `Show ${hiddenN} earlier messages`, testid: 'show-earlier' });
    btn.addEventListener('click', () => {
      if (!earlier.firstChild) msgs.slice(first, shownFrom).forEach((m, i) => add(earlier, m, first + i));
      earlier.hidden = !earlier.hidden;
      btn.textContent = earlier.hidden ? `Show ${hiddenN} earlier messages` : `Hide ${hiddenN} earlier messages`;
    });
    // calls shown only in the hidden part still match their results below
    wrap.append(btn, earlier);
    msgs.slice(shownFrom).forEach((m, i) => add(wrap, m, shownFrom + i));
  } else {
    msgs.forEach((m, i) => add(wrap, m, i));
  }
  if (!msgs.length) wrap.appendChild(h('div', { class: 'muted small', text: '(no messages)' }));
  return wrap;
}

function renderMessage(m, i, chatCtx) {
  if (!m || typeof m !== 'object') return h('pre', { class: 'json', text: JSON.stringify(m) });
  const role = String(m.role || 'unknown');
  const parts = Array.isArray(m.parts) ? m.parts : (m.content !== undefined ? [{ type: 'text', content: m.content }] : []);
  const onlyResults = parts.length > 0 && parts.every((p) => p && p.type === 'tool_call_response');
  const box = h('div', { class: 'msg role-' + role.replace(/[^a-z_]/gi, ''), testid: 'chat-message', data: { role } },
    h('div', { class: 'msg-head' },
      h('span', { class: 'role', text: role }),
      m.name ? h('span', { class: 'muted', text: m.name }) : null,
      h('span', { class: 'spacer' }),
      m.finish_reason ? h('span', { class: 'badge ' + (m.finish_reason === 'stop' || m.finish_reason === 'end_turn' ? 'ok' : ''), text: 'finish: ' + m.finish_reason, testid: 'finish-reason' }) : null,
      h('span', { class: 'msg-idx muted', text: '#' + (i + 1) })));
  const body = h('div', { class: 'msg-body' });
  for (const p of parts) body.appendChild(renderPart(p, chatCtx));
  if (!parts.length) body.appendChild(h('div', { class: 'muted small', text: '(empty)' }));
  box.appendChild(body);
  if (onlyResults) box.classList.add('tool-results');
  return box;
}

function renderPart(p, chatCtx) {
  if (p === null || p === undefined) return h('span');
  if (typeof p === 'string') return h('pre', { class: 'text', text: p });
  switch (p.type) {
    case 'text':
    case 'reasoning': {
      const c = typeof p.content === 'string' ? p.content : JSON.stringify(p.content, null, 2);
      return h('pre', { class: 'text' + (p.type === 'reasoning' ? ' reasoning' : ''), text: c ?? '' });
    }
    case 'tool_call':
      return renderToolCall(p, chatCtx);
    case 'tool_call_response':
      return renderToolResponse(p, chatCtx);
    case 'uri':
    case 'blob':
    case 'file':
      return h('div', { class: 'chip-part', text: `[${p.modality || p.type}${p.mime_type ? ' ' + p.mime_type : ''}] ${p.uri || ''}` });
    default:
      return h('pre', { class: 'json small', text: JSON.stringify(p, null, 2) });
  }
}

function prettyValue(v) {
  if (typeof v === 'string') {
    const t = v.trim();
    if ((t.startsWith('{') && t.endsWith('}')) || (t.startsWith('[') && t.endsWith(']'))) {
      try { return JSON.stringify(JSON.parse(t), null, 2); } catch (_) { /* not JSON: as is */ }
    }
    return v;
  }
  if (v === undefined) return '';
  return JSON.stringify(v, null, 2);
}

function oneLineArgs(v) {
  let obj = v;
  if (typeof v === 'string') { try { obj = JSON.parse(v); } catch (_) { return v.length > 80 ? v.slice(0, 80) + '…' : v; } }
  if (obj && typeof obj === 'object' && !Array.isArray(obj)) {
    const s = Object.entries(obj).map(([k, x]) => `${k}=${typeof x === 'string' ? JSON.stringify(x) : JSON.stringify(x)}`).join(', ');
    return s.length > 100 ? s.slice(0, 100) + '…' : s;
  }
  const s = JSON.stringify(obj);
  return s && s.length > 100 ? s.slice(0, 100) + '…' : (s || '');
}

function renderToolCall(p, chatCtx) {
  let id = p.id != null ? String(p.id) : '';
  let inferred = false;
  if (!id && chatCtx) {
    const found = chatCtx.tix.idBySig.get(callSig(p));
    if (found) { id = found; inferred = true; }
  }
  const box = h('div', { class: 'toolcall', testid: 'tool-call', data: { callId: id } });
  box.appendChild(h('div', { class: 'tc-head' },
    h('span', { class: 'tc-icon', text: 'ƒ' }),
    h('span', { class: 'tc-sig' }, h('b', { text: p.name || '(tool)' }), h('span', { class: 'muted', text: '(' + oneLineArgs(p.arguments) + ')' })),
    h('span', { class: 'spacer' }),
    id ? h('code', { class: 'muted small', text: id, title: inferred ? 'id from the same call in a later request (this span was stored without it)' : 'call id' }) : null));
  if (p.arguments !== undefined && p.arguments !== null && p.arguments !== '') {
    box.appendChild(h('details', { class: 'tc-args' }, h('summary', { class: 'small muted', text: 'arguments' }), h('pre', { class: 'json small', text: prettyValue(p.arguments) })));
  }
  if (!chatCtx) return box;
  chatCtx.shownCalls.add(id);
  const res = id ? chatCtx.tix.results.get(id) : undefined;
  const toolSpan = id ? chatCtx.tix.toolSpans.get(id) : undefined;
  const resBox = h('div', { class: 'tc-result' + (res ? '' : ' pending'), testid: 'tool-result' });
  if (res) {
    resBox.appendChild(h('div', { class: 'tc-result-head small' }, h('span', { text: '↳ result' }),
      res.spanIdx !== undefined && chatCtx.nodes[res.spanIdx] ? h('span', { class: 'muted', text: ' (sent in ' + (chatCtx.nodes[res.spanIdx].span.name || 'span') + ')' }) : null));
    resBox.appendChild(h('pre', { class: 'text small', text: prettyValue(res.response) }));
  } else {
    resBox.appendChild(h('div', { class: 'small muted', text: '↳ no result for this call in the trace' }));
  }
  if (toolSpan !== undefined && !chatCtx.hideToolSpanLink) {
    const ts = chatCtx.nodes[toolSpan].span;
    resBox.appendChild(h('a', { href: '#', class: 'small', text: `→ ${ts.name} span, ${fmtDur(ts.duration_ms)}`, testid: 'tool-span-link',
      on: { click: (e) => { e.preventDefault(); chatCtx.select(toolSpan, true); } } }));
  }
  box.appendChild(resBox);
  return box;
}

function renderToolResponse(p, chatCtx) {
  const id = p.id != null ? String(p.id) : '';
  const call = chatCtx && id ? chatCtx.tix.calls.get(id) : undefined;
  const label = call ? `result of ${call.name || 'tool'}` : 'tool result';
  if (chatCtx && chatCtx.shownCalls.has(id)) {
    // already shown under its call above: keep the chat short
    return h('div', { class: 'toolresp dup small muted', testid: 'tool-response' }, `↳ ${label} `, h('code', { text: id }), ' (shown with the call above)');
  }
  return h('div', { class: 'toolresp', testid: 'tool-response' },
    h('div', { class: 'small muted' }, `↳ ${label} `, id ? h('code', { text: id }) : null,
      call ? h('span', { text: '  args (' + oneLineArgs(call.arguments) + ')' }) : null),
    h('pre', { class: 'text small', text: prettyValue(p.response) }));
}

// ---------------------------------------------------------------------------------------------
// Sessions

function pageSessions(gen, params) {
  const st = { rows: [], next: null, sort: parseSort(params) };
  const page = h('div', { class: 'page page-list' });
  main.appendChild(page);
  const winSel = h('select', { testid: 'sessions-window' }, WINDOWS.map(([v, t]) => h('option', { value: v, text: t })));
  winSel.value = params.get('window') || '';
  const user = h('input', { type: 'text', placeholder: 'u_123', value: params.get('user') || '', class: 'w-s', testid: 'sessions-user' });
  const feature = h('input', { type: 'text', placeholder: 'support_agent', value: params.get('feature') || '', class: 'w-m', testid: 'sessions-feature' });
  const form = h('form', { class: 'filters' },
    h('label', { class: 'field' }, h('span', { class: 'flabel', text: 'Window' }), winSel),
    h('label', { class: 'field' }, h('span', { class: 'flabel', text: 'Feature' }), feature),
    h('label', { class: 'field' }, h('span', { class: 'flabel', text: 'User' }), user),
    h('div', { class: 'field buttons' }, h('button', { type: 'submit', class: 'primary', text: 'Apply' }),
      h('button', { type: 'button', text: 'Clear', on: { click: () => navigate('/ui/sessions') } })));
  winSel.addEventListener('change', () => form.requestSubmit());
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (winSel.value) q.set('window', winSel.value);
    if (feature.value.trim()) q.set('feature', feature.value.trim());
    if (user.value.trim()) q.set('user', user.value.trim());
    const s = q.toString();
    navigate('/ui/sessions' + (s ? '?' + s : ''));
  });
  page.appendChild(form);
  const status = h('span', { class: 'muted status' });
  page.appendChild(h('div', { class: 'listbar' }, h('span', { class: 'title', text: 'Sessions' }), status));
  const msg = h('div');
  const wrap = h('div', { class: 'tablewrap' });
  const more = h('button', { type: 'button', class: 'more', text: 'Load more', hidden: true, on: { click: guard(() => load(st.next), 'Load more') } });
  page.append(msg, wrap, h('div', { class: 'morebar' }, more));

  const cols = [
    { key: 'session', label: 'Session', w: 'minmax(160px, 1fr)', cls: 'namecol', value: (r) => r.session_id, cell: (r) => h('a', { href: '/ui/sessions/' + encodeURIComponent(r.session_id), class: 'rootname', text: r.session_id }) },
    { key: 'last', label: 'Last activity', w: '104px', cls: 'nowrap', value: (r) => r.last_ms, cell: (r) => fmtTime(r.last_ms), tdTitle: (r) => fmtFull(r.last_ms) + ' (' + fmtAgo(r.last_ms) + ')' },
    { key: 'first', label: 'First', w: '104px', cls: 'nowrap muted-cell', value: (r) => r.first_ms, cell: (r) => fmtTime(r.first_ms), tdTitle: (r) => fmtFull(r.first_ms) },
    { key: 'span', label: 'Length', w: '76px', cls: 'num', value: (r) => r.last_ms - r.first_ms, cell: (r) => fmtDur(r.last_ms - r.first_ms) },
    { key: 'traces', label: 'Traces', w: '60px', cls: 'num', value: (r) => r.traces || 0, cell: (r) => fmtInt(r.traces) },
    { key: 'spans', label: 'Spans', w: '56px', cls: 'num', value: (r) => r.spans || 0, cell: (r) => fmtInt(r.spans) },
    { key: 'errors', label: 'Err', w: '44px', cls: 'num', value: (r) => r.errors || 0, cell: (r) => errorsCell(r.errors) },
    ...tokenCols(),
    { key: 'cost', label: 'Cost', w: '100px', cls: 'num', value: (r) => costNum(r.cost_usd), cell: (r) => fmtCost(r.cost_usd) },
    { key: 'feature', label: 'Feature', w: 'minmax(90px, 150px)', cls: 'tag', value: (r) => r.feature || '', cell: (r) => r.feature ?? '—' },
    { key: 'user', label: 'User', w: 'minmax(70px, 110px)', cls: 'tag', value: (r) => r.user || '', cell: (r) => r.user ?? '—' },
  ];
  function render() {
    clear(wrap);
    wrap.appendChild(sortTable({ cols, rows: st.rows, sort: st.sort, testid: 'session-table',
      emptyText: 'No sessions. Calls join a session when they carry an x-sidetrace-session-id header.',
      rowProps: (r) => ({ class: 'clickable', testid: 'session-row', on: { click: (e) => { if (!e.target.closest('a')) navigate('/ui/sessions/' + encodeURIComponent(r.session_id)); } } }),
      onSort: (s) => { st.sort = s; render(); } }));
    more.hidden = !st.next;
    status.textContent = `${fmtInt(st.rows.length)} loaded${st.next ? ', more below' : ''}`;
  }
  async function load(cursor) {
    more.disabled = true;
    try {
      const body = await api('/api/sessions', { limit: PAGE_SIZE, cursor, window: params.get('window'), user: params.get('user'), feature: params.get('feature') });
      if (!isCurrent(gen)) return;
      clear(msg);
      st.rows = cursor ? st.rows.concat(body.sessions || []) : (body.sessions || []);
      st.next = body.next_cursor || null;
      render();
    } catch (e) {
      if (!isCurrent(gen)) return;
      clear(msg);
      msg.appendChild(errorBox(e, 'Could not load sessions'));
    } finally {
      more.disabled = false;
    }
  }
  status.textContent = 'loading…';
  load(null);
}

function pageSession(gen, id) {
  const page = h('div', { class: 'page page-list', testid: 'session-page' });
  main.appendChild(page);
  page.appendChild(h('div', { class: 'loading', text: 'Loading session ' + id + '…' }));
  api('/api/sessions/' + encodeURIComponent(id)).then((body) => {
    if (!isCurrent(gen)) return;
    clear(page);
    const s = body.session || {};
    const traces = (body.traces || []).slice().sort((a, b) => a.start_ms - b.start_ms);
    page.appendChild(h('div', { class: 'trace-head' },
      h('div', { class: 'th-line1' },
        h('a', { href: '/ui/sessions', class: 'back', text: '← Sessions' }),
        h('span', { class: 'th-name', text: 'Session ' + (s.session_id || id), testid: 'session-title' }),
        s.errors ? h('span', { class: 'badge err', text: s.errors + ' errors' }) : null,
        idChip('session', s.session_id || id, 'copy-session-id'),
        h('span', { class: 'spacer' }),
        h('a', { class: 'btn', href: '/ui/traces?session=' + encodeURIComponent(s.session_id || id), text: 'Filter the trace list' })),
      h('div', { class: 'th-stats', testid: 'session-totals' },
        stat('First', fmtFull(s.first_ms)), stat('Last', fmtFull(s.last_ms)), stat('Length', fmtDur(s.last_ms - s.first_ms)),
        stat('Traces', fmtInt(s.traces)), stat('Spans', fmtInt(s.spans)), stat('Errors', fmtInt(s.errors)),
        stat('Cost', fmtCost(s.cost_usd), 'session-cost'),
        stat('Tokens in', fmtInt(s.input_tokens) + (s.cached_input_tokens ? ` (${fmtInt(s.cached_input_tokens)} cached)` : '')),
        stat('Tokens out', fmtInt(s.output_tokens) + (s.reasoning_tokens ? ` (${fmtInt(s.reasoning_tokens)} reasoning)` : '')),
        s.feature ? stat('Feature', s.feature) : null, s.user ? stat('User', s.user) : null)));
    if (body.truncated) page.appendChild(h('div', { class: 'notice warn', text: 'This session has more traces than shown (the first 1000).' }));
    let sort = null;
    const wrap = h('div', { class: 'tablewrap' });
    const render = () => {
      clear(wrap);
      wrap.appendChild(sortTable({ cols: traceSummaryCols({ noSession: true, offsetFrom: traces.length ? traces[0].start_ms : 0 }), rows: traces, sort,
        testid: 'session-traces', rowProps: traceRowProps, emptyText: 'No traces in this session.',
        onSort: (x) => { sort = x; render(); } }));
    };
    render();
    page.appendChild(h('div', { class: 'listbar' }, h('span', { class: 'title', text: 'Traces, oldest first' })));
    page.appendChild(wrap);
  }, (e) => {
    if (!isCurrent(gen)) return;
    clear(page);
    page.appendChild(errorBox(e, e.status === 404 ? 'No such session' : 'Could not load the session'));
    page.appendChild(h('p', null, h('a', { href: '/ui/sessions', text: '← back to the sessions' })));
  }).catch((e) => showToast('Session view', e));
}

// ---------------------------------------------------------------------------------------------
// Costs

const GROUPS = [['feature', 'Feature'], ['user', 'User'], ['model', 'Model'], ['provider', 'Provider'], ['prompt_version', 'Prompt version']];
const COST_WINDOWS = [['1h', '1 hour'], ['6h', '6 hours'], ['24h', '24 hours'], ['7d', '7 days']];
const METRICS = [['cost', 'Cost (USD)'], ['tokens', 'Tokens (in + out)'], ['calls', 'Calls']];
const PALETTE = ['#3b82f6', '#f59e0b', '#10b981', '#ef4444', '#8b5cf6', '#06b6d4', '#ec4899', '#84cc16', '#f97316', '#64748b'];
const MAX_SERIES = 8;

function pageCosts(gen, params) {
  const groupBy = params.get('group_by') || 'feature';
  const win = params.get('window') || '7d';
  const metric = params.get('metric') || 'cost';
  const bucket = params.get('bucket') || (/^\d+h$/.test(win) ? '1h' : (parseInt(win, 10) > 7 ? '1d' : '1h'));
  const page = h('div', { class: 'page page-costs' });
  main.appendChild(page);

  const sel = (opts, v, testid) => {
    const s = h('select', { testid }, opts.map(([k, t]) => h('option', { value: k, text: t })));
    s.value = v;
    return s;
  };
  const gSel = sel(GROUPS, groupBy, 'cost-group-by');
  const wSel = sel(COST_WINDOWS.some(([k]) => k === win) ? COST_WINDOWS : COST_WINDOWS.concat([[win, win]]), win, 'cost-window');
  const bSel = sel([['1h', 'hourly'], ['1d', 'daily']], bucket, 'cost-bucket');
  const mSel = sel(METRICS, metric, 'cost-metric');
  const feature = h('input', { type: 'text', placeholder: 'any', value: params.get('feature') || '', class: 'w-m', testid: 'cost-feature' });
  const user = h('input', { type: 'text', placeholder: 'any', value: params.get('user') || '', class: 'w-s', testid: 'cost-user' });
  const form = h('form', { class: 'filters', testid: 'cost-controls' },
    h('label', { class: 'field' }, h('span', { class: 'flabel', text: 'Group by' }), gSel),
    h('label', { class: 'field' }, h('span', { class: 'flabel', text: 'Window' }), wSel),
    h('label', { class: 'field' }, h('span', { class: 'flabel', text: 'Buckets' }), bSel),
    h('label', { class: 'field' }, h('span', { class: 'flabel', text: 'Chart' }), mSel),
    h('label', { class: 'field' }, h('span', { class: 'flabel', text: 'Feature' }), feature),
    h('label', { class: 'field' }, h('span', { class: 'flabel', text: 'User' }), user),
    h('div', { class: 'field buttons' }, h('button', { type: 'submit', class: 'primary', text: 'Apply' })));
  const submit = () => {
    const q = new URLSearchParams();
    q.set('group_by', gSel.value);
    q.set('window', wSel.value);
    q.set('bucket', bSel.value);
    if (mSel.value !== 'cost') q.set('metric', mSel.value);
    if (feature.value.trim()) q.set('feature', feature.value.trim());
    if (user.value.trim()) q.set('user', user.value.trim());
    navigate('/ui/costs?' + q.toString());
  };
  for (const s of [gSel, wSel, bSel, mSel]) s.addEventListener('change', submit);
  form.addEventListener('submit', (e) => { e.preventDefault(); submit(); });
  page.appendChild(form);

  const totals = h('div', { class: 'th-stats cost-totals', testid: 'cost-totals' });
  const chartBox = h('div', { class: 'chart', testid: 'cost-chart' });
  const msg = h('div');
  const tableWrap = h('div', { class: 'tablewrap' });
  page.append(msg, totals, h('div', { class: 'listbar' }, h('span', { class: 'title', text: METRICS.find(([k]) => k === metric)?.[1] + ' by ' + GROUPS.find(([k]) => k === groupBy)?.[1].toLowerCase() })), chartBox,
    h('div', { class: 'listbar' }, h('span', { class: 'title', text: 'Totals over the window' })), tableWrap);
  chartBox.appendChild(h('div', { class: 'loading', text: 'Loading…' }));

  let plot = null;
  onCleanup(() => { if (plot) plot.destroy(); window.removeEventListener('resize', onResize); });
  let resizeTimer = 0;
  function onResize() {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (plot) plot.setSize({ width: chartWidth(), height: 300 }); }, 100);
  }
  window.addEventListener('resize', onResize);
  function chartWidth() { return Math.max(300, chartBox.clientWidth - 2); }

  api('/api/costs', { group_by: groupBy, window: win, bucket, feature: params.get('feature'), user: params.get('user') }).then((body) => {
    if (!isCurrent(gen)) return;
    const rows = body.rows || [];
    const t = body.total || {};
    append(totals, [
      stat('Window', `${dateFmt.format(new Date((body.from || 0) * 1000))} → ${dateFmt.format(new Date((body.to || 0) * 1000))}`),
      stat('Cost', fmtCost(t.cost_usd), 'cost-total'),
      stat('Calls', fmtInt(t.calls) + (t.unpriced_calls ? ` (${fmtInt(t.unpriced_calls)} unpriced)` : '')),
      stat('Tokens in', fmtInt(t.input_tokens) + (t.cached_input_tokens ? ` (${fmtInt(t.cached_input_tokens)} cached)` : '')),
      stat('Tokens out', fmtInt(t.output_tokens) + (t.reasoning_tokens ? ` (${fmtInt(t.reasoning_tokens)} reasoning)` : '')),
      stat('Groups', fmtInt(rows.length)),
    ]);
    clear(chartBox);
    try {
      plot = drawCostChart(chartBox, body, metric, bucket, chartWidth());
    } catch (e) {
      chartBox.appendChild(errorBox(e, 'Could not draw the chart'));
    }
    const totalCost = costNum(t.cost_usd);
    let sort = { key: 'cost', dir: 'desc' };
    const linkable = { feature: 'feature', user: 'user', model: 'model', provider: 'provider' }[groupBy];
    const cols = [
      { key: 'key', label: GROUPS.find(([k]) => k === groupBy)?.[1] || groupBy, w: 'minmax(180px, 1fr)', cls: 'namecol', value: (r) => r.key, cell: (r) => {
        const sw = h('span', { class: 'swatch', style: { background: colorFor(body, r.key) } });
        const label = r.key === '' || r.key == null ? '(none)' : r.key;
        return h('span', { class: 'namecell-inline' }, sw, linkable && r.key ? h('a', { href: '/ui/traces?' + linkable + '=' + encodeURIComponent(r.key), text: label, title: 'Traces with this ' + linkable }) : label);
      } },
      { key: 'calls', label: 'Calls', w: '72px', cls: 'num', value: (r) => r.calls || 0, cell: (r) => fmtInt(r.calls) },
      { key: 'unpriced', label: 'Unpriced', w: '84px', cls: 'num muted-cell', value: (r) => r.unpriced_calls || 0, cell: (r) => fmtInt(r.unpriced_calls), title: 'Calls with no price (unknown model or usage)' },
      { key: 'cost', label: 'Cost', w: '110px', cls: 'num', value: (r) => costNum(r.cost_usd), cell: (r) => fmtCost(r.cost_usd) },
      { key: 'share', label: 'Share', w: '150px', cls: 'num', value: (r) => costNum(r.cost_usd), cell: (r) => {
        const c = costNum(r.cost_usd);
        const pct = totalCost > 0 && c > 0 ? (c / totalCost) * 100 : 0;
        return h('span', { class: 'share' }, h('span', { class: 'sharebar', style: { width: Math.min(100, pct).toFixed(1) + '%' } }), h('span', { text: pct.toFixed(1) + '%' }));
      } },
      ...tokenCols(),
      { key: 'cw', label: 'Cache write', w: '96px', cls: 'num muted-cell', value: (r) => r.cache_creation_input_tokens || 0, cell: (r) => fmtInt(r.cache_creation_input_tokens) },
    ];
    const render = () => {
      clear(tableWrap);
      tableWrap.appendChild(sortTable({ cols, rows, sort, testid: 'cost-table', emptyText: 'No calls through this gateway in this window (spans received over OTLP are not counted here).',
        rowProps: () => ({ testid: 'cost-row' }), onSort: (s) => { sort = s; render(); } }));
    };
    render();
  }, (e) => {
    if (!isCurrent(gen)) return;
    clear(chartBox);
    msg.appendChild(errorBox(e, 'Could not load costs'));
  }).catch((e) => showToast('Cost page', e));
}

/** The series to chart: the biggest groups by cost, the rest summed as "other". */
function chartGroups(body) {
  if (body._groups) return body._groups;
  const series = body.series || [];
  const total = new Map();
  for (const s of series) {
    let c = 0;
    for (const p of s.points || []) c += parseFloat(p.cost_usd) || 0;
    total.set(s.key, c + (s.points || []).reduce((a, p) => a + (p.input_tokens || 0) + (p.output_tokens || 0), 0) * 1e-12);
  }
  const keys = series.map((s) => s.key).sort((a, b) => total.get(b) - total.get(a));
  const top = keys.slice(0, MAX_SERIES);
  // The API sends series for its costliest groups and the rest summed (series_other).
  const rest = ((body.series_other || {}).points || []).length > 0;
  body._groups = { top, other: keys.length > MAX_SERIES || rest, colors: new Map(top.map((k, i) => [k, PALETTE[i % PALETTE.length]])) };
  return body._groups;
}

function colorFor(body, key) {
  const g = chartGroups(body);
  return g.colors.get(key) || PALETTE[PALETTE.length - 1];
}

/** Stacked bars per bucket, the biggest group on top. uPlot draws series in order and bars are
 * opaque, so each series is drawn as the sum of itself and the groups after it: the first is
 * the whole stack, the last only itself. The legend shows each group's own value. */
function drawCostChart(box, body, metric, bucket, width) {
  if (typeof window.uPlot !== 'function') throw new Error('the chart library (uPlot) did not load');
  const step = bucket === '1d' ? 86400 : 3600;
  const from = Math.floor((body.from || 0) / step) * step;
  const to = body.to || from + step;
  const xs = [];
  for (let t = from; t < to; t += step) xs.push(t);
  if (!xs.length) xs.push(from);
  const pos = new Map(xs.map((t, i) => [t, i]));
  const g = chartGroups(body);
  const valueOf = (p) => metric === 'calls' ? (p.calls || 0) : metric === 'tokens' ? (p.input_tokens || 0) + (p.output_tokens || 0) : (parseFloat(p.cost_usd) || 0);
  const byKey = new Map((body.series || []).map((s) => [s.key, s]));
  const raw = [];
  for (const k of g.top) {
    const arr = new Array(xs.length).fill(0);
    for (const p of byKey.get(k).points || []) {
      const i = pos.get(Math.floor(p.t / step) * step);
      if (i !== undefined) arr[i] += valueOf(p); // a point outside [from, to) is not drawn
    }
    raw.push(arr);
  }
  const labels = g.top.map((k) => (k === '' || k == null ? '(none)' : String(k)));
  const colors = g.top.map((k) => g.colors.get(k));
  if (g.other) {
    const other = new Array(xs.length).fill(0);
    const restSeries = [...body.series.filter((s) => !g.top.includes(s.key)), body.series_other || {}];
    for (const s of restSeries) {
      for (const p of s.points || []) { const i = pos.get(Math.floor(p.t / step) * step); if (i !== undefined) other[i] += valueOf(p); }
    }
    raw.push(other);
    labels.push('other');
    colors.push('#94a3b8');
  }
  const stacked = raw.map((arr) => arr.slice());
  for (let k = stacked.length - 2; k >= 0; k--) {
    for (let i = 0; i < xs.length; i++) stacked[k][i] += stacked[k + 1][i];
  }
  if (!(body.series || []).length) {
    box.appendChild(h('div', { class: 'chart-empty muted', text: 'No calls through this gateway in this window.' }));
  }
  const css = getComputedStyle(document.documentElement);
  const fg = css.getPropertyValue('--muted').trim() || '#666';
  const grid = css.getPropertyValue('--grid').trim() || '#eee';
  const fmtY = (v) => metric === 'cost' ? '$' + (v === 0 ? '0' : v >= 1 ? v.toFixed(2) : v >= 0.01 ? v.toFixed(3) : v.toPrecision(2)) : fmtCompact(Math.round(v));
  const fmtV = (v) => metric === 'cost' ? '$' + v.toFixed(6).replace(/0+$/, '').replace(/\.$/, '') : fmtInt(v);
  const bars = window.uPlot.paths && window.uPlot.paths.bars ? window.uPlot.paths.bars({ size: [0.8, 48], gap: 1 }) : undefined;
  const series = [{ label: 'time', value: (u, v) => v == null ? '' : dateFmt.format(new Date(v * 1000)) }];
  labels.forEach((label, k) => series.push({
    label, stroke: colors[k], fill: colors[k], width: 0, paths: bars, points: { show: false },
    value: (u, v, sidx, idx) => idx == null ? '—' : fmtV(raw[sidx - 1][idx]),
  }));
  const opts = {
    width, height: 300,
    series,
    scales: { x: { time: true, range: (u, min, max) => [from - step / 2, Math.max(max, from) + step / 2] }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] } },
    axes: [
      { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
      { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 64, values: (u, vals) => vals.map(fmtY) },
    ],
    legend: { live: true },
    cursor: { points: { show: false }, drag: { x: true, y: false } },
  };
  return new window.uPlot(opts, [xs, ...stacked], box);
}

// ---------------------------------------------------------------------------------------------

window.addEventListener('unhandledrejection', (e) => {
  // Anything not caught where it happened still reaches the user, not only the console.
  e.preventDefault();
  showToast('Unexpected error', e.reason);
});

route();
