// The console's shell: sign-in, the header, and a router over the URL's
// fragment (#/products/…), so that every page is / on the server and no
// path of the console ever meets a firmware download token.

import { api, clearToken, onUnauthorized, setToken, token } from './api.js';
import { h, notice, replace } from './ui.js';
import { overviewPage } from './overview.js';
import { productsPage, productPage } from './products.js';
import { devicePage } from './device.js';
import { firmwarePage } from './firmware.js';
import { jobsPage, jobFormPage } from './jobs.js';
import { jobPage } from './job.js';

const main = document.getElementById('main');
let current = null; // the page's AbortController: aborted when it is left
let refusedMessage = '';
let next = '';

const routes = [
  [/^\/$/, () => overviewPage, 'overview'],
  [/^\/products$/, () => productsPage, 'products'],
  [/^\/products\/([^/]+)(?:\/devices)?$/, () => productPage, 'products'],
  [/^\/products\/([^/]+)\/devices\/([^/]+)$/, () => devicePage, 'products'],
  [/^\/products\/([^/]+)\/firmware$/, () => firmwarePage, 'products'],
  [/^\/products\/([^/]+)\/jobs$/, () => jobsPage, 'products'],
  [/^\/products\/([^/]+)\/jobs\/new$/, () => jobFormPage, 'products'],
  [/^\/products\/([^/]+)\/jobs\/([^/]+)$/, () => jobPage, 'products'],
];

export function go(route) {
  if (location.hash === '#' + route) render();
  else location.hash = route;
}

function render() {
  if (current) current.abort();
  current = new AbortController();
  const signal = current.signal;
  const [routePath, search] = (location.hash.slice(1) || '/').split('?');
  const params = new URLSearchParams(search || '');
  window.scrollTo(0, 0);
  if (!token()) {
    if (routePath !== '/signin') next = location.hash.slice(1);
    signInPage();
    return;
  }
  document.getElementById('nav').hidden = false;
  document.getElementById('session').hidden = false;
  if (routePath === '/signin') { go('/'); return; }
  for (const [re, page, nav] of routes) {
    const m = routePath.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === nav);
    const args = m.slice(1).map(decodeURIComponent);
    replace(main, h('p', { class: 'muted' }, 'Loading…'));
    page()(main, { signal, args, params }).catch(e => {
      if (signal.aborted || e.name === 'AbortError') return;
      replace(main, notice(`This page could not be loaded: ${e.message}`));
    });
    return;
  }
  replace(main, h('section', { class: 'card' }, h('h1', null, 'Not found'), h('p', null, 'There is no such page. ', h('a', { href: '#/' }, 'Back to the overview'), '.')));
}

function signInPage() {
  document.getElementById('nav').hidden = true;
  document.getElementById('session').hidden = true;
  document.title = 'Sign in · otad';
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true, placeholder: 'otad_…', spellcheck: 'false' });
  const remember = h('input', { type: 'checkbox', id: 'remember' });
  const status = h('div', { id: 'signin-status', 'aria-live': 'polite' }, refusedMessage ? notice(refusedMessage) : null);
  const button = h('button', { type: 'submit', class: 'btn primary', id: 'signin' }, 'Sign in');
  const form = h('form', { class: 'signin card', novalidate: true },
    h('h1', null, 'Sign in to otad'),
    h('p', { class: 'muted' }, 'Paste a console API token: one made with /v1/tokens, or the bootstrap token (printed on the first start, or set with OTAD_API_TOKEN). A read-scoped token can look but not change anything.'),
    h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'API token'), input),
    h('label', { class: 'check' }, remember, ' Remember on this device (kept in this browser until you sign out)'),
    status,
    h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async e => {
    e.preventDefault();
    const t = input.value.trim();
    if (!t) { replace(status, notice('Enter a token.')); return; }
    button.disabled = true;
    replace(status, h('p', { class: 'muted' }, 'Checking…'));
    try {
      await api('GET', '/v1/products', { token: t, query: { limit: 1 } });
      setToken(t, remember.checked);
      refusedMessage = '';
      const to = next && next !== '/signin' ? next : '/';
      next = '';
      go(to);
    } catch (err) {
      replace(status, notice(err.status === 401
        ? 'That token was refused: otad does not know it, or it was revoked or has expired. Check it and try again.'
        : `Could not sign in: ${err.message}`));
      button.disabled = false;
      input.select();
    }
  });
  replace(main, form);
  input.focus();
}

onUnauthorized(() => {
  clearToken();
  refusedMessage = 'Your token was refused (it may have been revoked). Sign in again.';
  if (!location.hash.startsWith('#/signin')) next = location.hash.slice(1);
  render();
});

document.getElementById('signout').addEventListener('click', () => {
  clearToken();
  refusedMessage = '';
  next = '';
  location.hash = '/signin';
  render();
});

window.addEventListener('hashchange', render);
render();
