// Fleet overview: per product, its devices by version with how many are
// online, and its active jobs with their progress.

import { api, listAll, path } from './api.js';
import { ACTIVE_JOB, badge, card, h, link, notice, pct, replace, route, stacked } from './ui.js';

export async function overviewPage(main, { signal }) {
  document.title = 'Overview · otad';
  const { items: products, more } = await listAll('/v1/products', {}, { signal, max: 200 });
  const body = h('div', { class: 'grid' });
  replace(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Fleet overview'),
      h('div', { class: 'actions' }, link('/products', 'All products', { class: 'btn' }))),
    products.length ? body : card(null, h('p', null, 'No products yet. ', link('/products', 'Register one'), ' to start.')),
    more ? notice('Showing the first 200 products.', 'info') : null);
  for (const p of products) {
    const slot = h('section', { class: 'card product-card' }, h('h2', null, link(route('products', p.id), p.name), ' ', h('span', { class: 'muted mono' }, p.id)), h('p', { class: 'muted' }, 'Loading…'));
    body.append(slot);
    productSummary(p, signal).then(parts => replace(slot, ...parts)).catch(e => {
      if (!signal.aborted) slot.append(notice(e.message));
    });
  }
}

async function productSummary(p, signal) {
  const [devs, jobs] = await Promise.all([
    listAll(path('products', p.id, 'devices'), {}, { signal, max: 20000 }),
    listAll(path('products', p.id, 'jobs'), {}, { signal, max: 5000 }),
  ]);
  const byVersion = new Map();
  let online = 0;
  for (const d of devs.items) {
    const v = byVersion.get(d.version) || { total: 0, online: 0 };
    v.total++;
    if (d.online) { v.online++; online++; }
    byVersion.set(d.version, v);
  }
  const total = devs.items.length;
  const versions = [...byVersion.entries()].sort((a, b) => b[1].total - a[1].total);
  const active = jobs.items.filter(j => ACTIVE_JOB.has(j.status)).reverse();
  const details = await Promise.all(active.slice(0, 10).map(j => api('GET', path('products', p.id, 'jobs', j.id), { signal })));
  return [
    h('h2', null, link(route('products', p.id), p.name), ' ', h('span', { class: 'muted mono' }, p.id)),
    h('div', { class: 'stats' },
      stat(devs.more ? `${total}+` : total, 'devices'),
      stat(online, 'online', `${pct(online, total)}%`),
      stat(active.length, 'active jobs')),
    h('h3', null, 'Versions'),
    versions.length
      ? h('ul', { class: 'versions' }, versions.map(([v, c]) => {
        const bar = h('span', { class: 'vbar' }, h('span', { class: 'vbar-online' }), h('span', { class: 'vbar-offline' }));
        bar.children[0].style.width = (100 * c.online / Math.max(total, 1)) + '%';
        bar.children[1].style.width = (100 * (c.total - c.online) / Math.max(total, 1)) + '%';
        return h('li', null,
          link(route('products', p.id) + '?version=' + encodeURIComponent(v), v || '(unknown)', { class: 'mono' }),
          bar,
          h('span', { class: 'vcount' }, `${c.total}`, h('span', { class: 'muted' }, ` · ${c.online} online`)));
      }))
      : h('p', { class: 'muted' }, 'No devices.'),
    h('h3', null, 'Active jobs'),
    details.length
      ? h('ul', { class: 'jobs-mini' }, details.map(j => h('li', null,
        h('div', { class: 'row' }, link(route('products', p.id, 'jobs', j.id), `→ ${j.firmware_version}`, { class: 'mono' }), badge(j.status),
          h('span', { class: 'muted' }, `${j.counts.done || 0} of ${j.total} done`)),
        stacked(j.counts, j.total))))
      : h('p', { class: 'muted' }, 'None. ', link(route('products', p.id, 'jobs', 'new'), 'Start a job'), '.'),
  ];
}

function stat(value, what, extra) {
  return h('div', { class: 'stat' }, h('strong', null, String(value)), h('span', null, what), extra ? h('small', { class: 'muted' }, extra) : null);
}
