// DOM helpers and formatting shared by the pages. Text always goes in as
// text nodes, never as HTML: nothing a device or a user named can run.

// h builds an element: h('a', { href: '#/', class: 'x', onclick: fn }, 'text', child…).
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked' || k === 'disabled' || k === 'selected' || k === 'hidden' || k === 'required') el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// replace puts children in place of el's content.
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// The states of a device in a job, in the order of the upgrade.
export const EXEC_STATES = ['queued', 'notified', 'downloading', 'burning', 'done', 'failed', 'timed_out', 'rolled_back', 'canceled'];
export const ACTIVE_JOB = new Set(['scheduled', 'running', 'paused']);

export function label(s) { return String(s).replace(/_/g, ' '); }

export function badge(state) {
  return h('span', { class: 'badge s-' + state }, label(state));
}

export function onlineDot(online) {
  return h('span', { class: 'dot ' + (online ? 'on' : 'off'), title: online ? 'online' : 'offline' }, online ? 'online' : 'offline');
}

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function timeCell(iso) {
  return h('time', { datetime: iso || '', title: iso || '' }, fmtAgo(iso));
}

export function fmtAgo(iso) {
  if (!iso) return '—';
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (Number.isNaN(s)) return iso;
  const future = s < 0;
  const a = Math.abs(s);
  const text = a < 45 ? `${Math.round(a)} s` : a < 5400 ? `${Math.round(a / 60)} min` : a < 129600 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} d`;
  return future ? 'in ' + text : text + ' ago';
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n, i = -1;
  do { v /= 1024; i++; } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function pct(n, total) { return total > 0 ? Math.round((100 * n) / total) : 0; }

// stacked draws counts per state as one bar, in EXEC_STATES order.
export function stacked(counts, total) {
  const bar = h('div', { class: 'stack', role: 'img', 'aria-label': EXEC_STATES.filter(s => counts[s]).map(s => `${counts[s]} ${label(s)}`).join(', ') || 'no devices' });
  for (const s of EXEC_STATES) {
    const n = counts[s] || 0;
    if (!n) continue;
    const seg = h('span', { class: 'seg s-' + s, title: `${label(s)}: ${n}` });
    seg.style.width = (100 * n / Math.max(total, 1)) + '%';
    bar.append(seg);
  }
  return bar;
}

export function progress(percent, cls = '') {
  const bar = h('div', { class: 'progress ' + cls, role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': percent });
  const fill = h('span');
  fill.style.width = Math.max(0, Math.min(100, percent)) + '%';
  bar.append(fill);
  return bar;
}

// table builds a table from column titles and rows of cells; wide tables
// scroll sideways on a phone instead of squeezing.
// A column is its title, or [title, class] (such as 'wide': shown only
// on a wide screen). A row is an array of cells, or { cells, attrs }.
// addRows appends more rows to a table that table() built.
export function table(columns, rows, { empty = 'Nothing here yet.', cls = '' } = {}) {
  const classes = columns.map(c => (Array.isArray(c) ? c[1] : null));
  const head = h('tr', null, columns.map((c, i) => h('th', { scope: 'col', class: classes[i] }, Array.isArray(c) ? c[0] : c)));
  const body = rows.length ? tableRows(rows, classes) : [h('tr', null, h('td', { colspan: columns.length, class: 'empty' }, empty))];
  const wrap = h('div', { class: 'table-wrap ' + cls }, h('table', null, h('thead', null, head), h('tbody', null, body)));
  wrap.columnClasses = classes;
  return wrap;
}

export function addRows(wrap, rows) {
  const body = wrap.querySelector('tbody');
  if (rows.length && body.querySelector('td.empty')) body.replaceChildren();
  body.append(...tableRows(rows, wrap.columnClasses));
}

function tableRows(rows, classes) {
  return rows.map(r => h('tr', r.attrs || null, (r.cells || r).map((c, i) => h('td', { class: classes[i] }, c))));
}

export function notice(text, kind = 'error') {
  return h('p', { class: 'notice ' + kind, role: kind === 'error' ? 'alert' : 'status' }, text);
}

export function field(labelText, input, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'field-label' }, labelText), input, hint ? h('span', { class: 'hint' }, hint) : null);
}

// fact is one term of a <dl class="facts">.
export function fact(k, v) {
  return h('div', null, h('dt', null, k), h('dd', null, v));
}

export function card(title, ...children) {
  return h('section', { class: 'card' }, title ? h('h2', null, title) : null, children);
}

export function errorText(e) {
  if (!e) return '';
  return e.code ? `${e.message} (${e.code})` : e.message;
}

// link to a console route.
export function link(route, text, attrs = {}) {
  return h('a', { href: '#' + route, ...attrs }, text);
}

// route builds a console route from segments, each percent-encoded.
export function route(...segments) {
  return '/' + segments.map(s => encodeURIComponent(s)).join('/');
}
