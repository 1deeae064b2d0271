// The console's only way to otad: the public /v1 API with the bearer token
// the user signed in with. The token lives in sessionStorage (this tab),
// or in localStorage when the user chose "remember"; never in a URL.

const KEY = 'otad.token';

export function token() {
  return sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || '';
}

export function setToken(t, remember) {
  clearToken();
  (remember ? localStorage : sessionStorage).setItem(KEY, t);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
}

// ApiError is a refusal from otad (its problem+json) or a failure to reach it.
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || '';
    this.extra = problem.extra;
  }
}

// unauthorized is called when a stored token is refused (it was revoked,
// or the server's tokens changed): the app signs the user out.
let unauthorized = () => {};
export function onUnauthorized(fn) { unauthorized = fn; }
// refused reports a refusal that came some other way (an event stream).
export function refused(err) { unauthorized(err); }

function problemOf(status, text) {
  try {
    const p = JSON.parse(text);
    if (p && typeof p === 'object') return p;
  } catch { /* not JSON */ }
  return { detail: text ? `HTTP ${status}: ${text.slice(0, 200)}` : `HTTP ${status}` };
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? '?' + s : '';
}

// path builds /v1/... from segments, each percent-encoded.
export function path(...segments) {
  return '/v1/' + segments.map(s => encodeURIComponent(s)).join('/');
}

// api calls otad and returns the decoded JSON (null for 204). opts: body
// (sent as JSON), query, signal, token (instead of the stored one, for
// signing in; a refusal then does not sign out).
export async function api(method, url, opts = {}) {
  const t = opts.token ?? token();
  const headers = { Accept: 'application/json', Authorization: 'Bearer ' + t };
  let body;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(url + query(opts.query), { method, headers, body, signal: opts.signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { code: 'unavailable', detail: 'otad cannot be reached: ' + e.message });
  }
  const text = await res.text();
  if (!res.ok) {
    const err = new ApiError(res.status, problemOf(res.status, text));
    if (res.status === 401 && opts.token === undefined) unauthorized(err);
    throw err;
  }
  return text ? JSON.parse(text) : null;
}

// listAll follows next_cursor and returns every item, at most max; the
// result says whether there were more.
export async function listAll(url, params = {}, { signal, max = 50000 } = {}) {
  const items = [];
  let cursor;
  for (;;) {
    const page = await api('GET', url, { signal, query: { ...params, limit: 1000, cursor } });
    items.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) return { items, more: false };
    if (items.length >= max) return { items, more: true };
  }
}

// count counts the items of a list, following its pages.
export async function count(url, params, opts) {
  return (await listAll(url, params, opts)).items.length;
}

// upload sends a firmware image as the raw request body, reporting
// progress (bytes sent, total) as it goes; XMLHttpRequest, because fetch
// does not report upload progress. It returns { done: Promise, abort }.
export function upload(pid, file, fields, onProgress) {
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    xhr.open('POST', path('products', pid, 'firmware') + query(fields));
    xhr.setRequestHeader('Authorization', 'Bearer ' + token());
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.onprogress = e => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(JSON.parse(xhr.responseText));
        return;
      }
      const err = new ApiError(xhr.status, problemOf(xhr.status, xhr.responseText));
      if (xhr.status === 401) unauthorized(err);
      reject(err);
    };
    xhr.onerror = () => reject(new ApiError(0, { code: 'unavailable', detail: 'the upload was cut off: otad cannot be reached' }));
    xhr.onabort = () => reject(new ApiError(0, { code: 'canceled', detail: 'upload canceled' }));
    xhr.send(file);
  });
  return { done, abort: () => xhr.abort() };
}
