// One device: its version, presence, current upgrade, and its history.

import { api, path } from './api.js';
import { productHead } from './products.js';
import { addRows, badge, card, errorText, fact, fmtTime, h, notice, onlineDot, progress, replace, table, timeCell } from './ui.js';

export async function devicePage(main, { signal, args: [pid, name] }) {
  document.title = `${name} · otad`;
  const [head, d] = await Promise.all([productHead(pid, 'devices', signal), api('GET', path('products', pid, 'devices', name), { signal })]);
  const status = h('div', { 'aria-live': 'polite' });
  const toggle = h('button', { type: 'button', class: 'btn', id: 'device-toggle' }, d.disabled ? 'Enable' : 'Disable');
  toggle.addEventListener('click', async () => {
    toggle.disabled = true;
    try {
      await api('PATCH', path('products', pid, 'devices', name), { signal, body: { disabled: !d.disabled } });
      await devicePage(main, { signal, args: [pid, name] });
    } catch (err) {
      replace(status, notice(errorText(err)));
      toggle.disabled = false;
    }
  });
  const u = d.upgrade;
  const facts = h('dl', { class: 'facts' },
    fact('Version', h('span', { class: 'mono' }, d.version || '—')),
    fact('Presence', onlineDot(d.online)),
    fact('Last seen', h('span', null, fmtTime(d.last_seen_at), ' ', h('span', { class: 'muted' }, '(', timeCell(d.last_seen_at), ')'))),
    fact('Status', d.disabled ? h('span', { class: 'badge s-canceled' }, 'disabled') : 'enabled'),
    fact('Registered', fmtTime(d.created_at)));
  const upgrade = u
    ? h('div', { class: 'upgrade-box' },
      h('div', { class: 'row' }, badge(u.state), h('span', { class: 'mono' }, `→ ${u.version}`), h('span', { class: 'muted' }, timeCell(u.updated_at))),
      progress(u.state === 'done' ? 100 : u.percent, u.state === 'done' ? 'ok' : u.state === 'failed' ? 'bad' : ''),
      u.result_code ? h('p', null, h('strong', null, u.result_name || `code ${u.result_code}`), ` (${u.result_code}) `, h('span', { class: 'muted' }, u.result_msg)) : null)
    : h('p', { class: 'muted' }, 'No upgrade reported.');

  const more = h('div', { class: 'actions' });
  let history = null;
  const historySlot = h('div');
  const load = async cursor => {
    const page = await api('GET', path('products', pid, 'devices', name, 'events'), { signal, query: { limit: 50, cursor } });
    const rows = page.items.map(e => [timeCell(e.created_at), h('span', { class: 'mono' }, e.type), eventText(e)]);
    if (history) addRows(history, rows);
    else historySlot.append(history = table(['When', 'Event', 'Detail'], rows, { empty: 'No history yet.' }));
    replace(more, page.next_cursor ? h('button', { type: 'button', class: 'btn', onclick: () => load(page.next_cursor).catch(() => {}) }, 'Load older') : null);
  };
  replace(main, head,
    h('div', { class: 'page-head' }, h('h2', { class: 'mono' }, d.name), h('div', { class: 'actions' }, toggle)),
    status,
    h('div', { class: 'grid two' }, card('Device', facts), card('Current upgrade', upgrade)),
    card('History', historySlot, more));
  await load();
}

function eventText(e) {
  switch (e.type) {
    case 'report_version': return `reported version ${e.version}`;
    case 'report_progress': {
      const parts = [e.state];
      if (e.state === 'downloading' || e.percent) parts.push(`${e.percent}%`);
      if (e.result_code) parts.push(`code ${e.result_code}`);
      if (e.result_msg) parts.push(`“${e.result_msg}”`);
      if (e.version) parts.push(`of ${e.version}`);
      return parts.join(' ');
    }
    case 'connected': return 'connected';
    case 'disconnected': return 'disconnected';
    default: return '';
  }
}
