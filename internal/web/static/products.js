// Products, and one product's devices with the device list's filters.

import { api, listAll, path } from './api.js';
import { addRows, badge, card, errorText, field, h, link, notice, onlineDot, progress, replace, route, table, timeCell } from './ui.js';

export async function productsPage(main, { signal }) {
  document.title = 'Products · otad';
  const { items, more } = await listAll('/v1/products', {}, { signal, max: 1000 });
  const status = h('div', { 'aria-live': 'polite' });
  const id = h('input', { name: 'id', placeholder: 'generated when empty', maxlength: 10, pattern: '[A-Z0-9]{10}', class: 'mono' });
  const name = h('input', { name: 'name', required: true, maxlength: 128 });
  const description = h('input', { name: 'description', maxlength: 1024 });
  const form = h('form', { class: 'inline-form', novalidate: true },
    field('Name', name), field('ID', id, '10 characters A-Z 0-9'), field('Description', description),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn primary' }, 'Register product')));
  form.addEventListener('submit', async e => {
    e.preventDefault();
    const body = { name: name.value.trim() };
    if (id.value.trim()) body.id = id.value.trim();
    if (description.value.trim()) body.description = description.value.trim();
    try {
      const p = await api('POST', '/v1/products', { body, signal });
      location.hash = route('products', p.id);
    } catch (err) {
      replace(status, notice(errorText(err)));
    }
  });
  replace(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Products')),
    card(null, table(['ID', 'Name', ['Description', 'wide'], 'Registered'], items.map(p => [
      link(route('products', p.id), p.id, { class: 'mono' }), link(route('products', p.id), p.name), p.description || '', timeCell(p.created_at)]),
    { empty: 'No products yet.' }), more ? notice('Showing the first 1000 products.', 'info') : null),
    card('Register a product', form, status));
}

// productHead is the heading and tabs every page of a product shows.
export async function productHead(pid, tab, signal) {
  const p = await api('GET', path('products', pid), { signal });
  const tabs = [['devices', 'Devices', route('products', pid)], ['firmware', 'Firmware', route('products', pid, 'firmware')], ['jobs', 'Jobs', route('products', pid, 'jobs')]];
  return h('div', { class: 'product-head' },
    h('div', { class: 'crumbs' }, link('/products', 'Products'), ' / ', h('span', { class: 'mono' }, p.id)),
    h('h1', null, p.name),
    p.description ? h('p', { class: 'muted' }, p.description) : null,
    h('nav', { class: 'tabs' }, tabs.map(([key, text, r]) => link(r, text, { class: key === tab ? 'active' : '' }))));
}

export async function productPage(main, { signal, args: [pid], params }) {
  document.title = `${pid} devices · otad`;
  const head = await productHead(pid, 'devices', signal);
  const version = h('input', { name: 'version', value: params.get('version') || '', placeholder: 'any', class: 'mono', list: 'versions' });
  const online = h('select', { name: 'online' },
    [['', 'any'], ['true', 'online'], ['false', 'offline']].map(([v, t]) => h('option', { value: v, selected: (params.get('online') || '') === v }, t)));
  const filters = h('form', { class: 'filters', role: 'search' },
    field('Version', version), field('Presence', online),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn' }, 'Filter')));
  filters.addEventListener('submit', e => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (version.value.trim()) q.set('version', version.value.trim());
    if (online.value) q.set('online', online.value);
    location.hash = route('products', pid) + (q.toString() ? '?' + q : '');
  });
  online.addEventListener('change', () => filters.requestSubmit());

  const name = h('input', { name: 'name', placeholder: 'device name', class: 'mono', required: true });
  const findStatus = h('span', { 'aria-live': 'polite' });
  const find = h('form', { class: 'filters', role: 'search' }, field('Open a device', name),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn' }, 'Open')), findStatus);
  find.addEventListener('submit', async e => {
    e.preventDefault();
    const n = name.value.trim();
    if (!n) return;
    try {
      await api('GET', path('products', pid, 'devices', n), { signal });
      location.hash = route('products', pid, 'devices', n);
    } catch (err) {
      replace(findStatus, notice(err.status === 404 ? `No device named ${n}.` : errorText(err)));
    }
  });

  let devices = null;
  const rows = h('div');
  const count = h('span', { class: 'muted' });
  const more = h('div', { class: 'actions' });
  const q = { version: params.get('version') || undefined, online: params.get('online') || undefined };
  let shown = 0;
  const load = async cursor => {
    const page = await api('GET', path('products', pid, 'devices'), { signal, query: { ...q, limit: 100, cursor } });
    shown += page.items.length;
    if (devices) addRows(devices, deviceRows(pid, page.items));
    else rows.append(devices = table(['Name', 'Version', 'Presence', ['Last seen', 'wide'], 'Upgrade', ['', 'wide']], deviceRows(pid, page.items), { empty: 'No devices match.' }));
    replace(count, `${shown}${page.next_cursor ? '+' : ''} devices`);
    replace(more, page.next_cursor ? h('button', { type: 'button', class: 'btn', onclick: () => load(page.next_cursor) }, 'Load more') : null);
  };
  const versions = h('datalist', { id: 'versions' });
  replace(main, head, card(null, h('div', { class: 'toolbar' }, filters, find), versions),
    card(null, h('div', { class: 'row' }, h('h2', null, 'Devices'), count), rows, more));
  await load();
  api('GET', path('products', pid, 'firmware'), { signal, query: { limit: 1000 } })
    .then(fw => replace(versions, fw.items.map(f => h('option', { value: f.version })))).catch(() => {});
}

function deviceRows(pid, items) {
  return items.map(d => [
    link(route('products', pid, 'devices', d.name), d.name, { class: 'mono' }),
    h('span', { class: 'mono' }, d.version || '—'),
    onlineDot(d.online),
    timeCell(d.last_seen_at),
    d.upgrade ? h('span', { class: 'upgrade' }, badge(d.upgrade.state), ` → ${d.upgrade.version} `, d.upgrade.state === 'downloading' ? progress(d.upgrade.percent, 'small') : null) : h('span', { class: 'muted' }, '—'),
    d.disabled ? h('span', { class: 'badge s-canceled' }, 'disabled') : '',
  ]);
}
