// A product's firmware: the list, upload with a progress bar, delete.

import { api, path, upload } from './api.js';
import { productHead } from './products.js';
import { card, errorText, field, fmtBytes, h, notice, progress, replace, table, timeCell } from './ui.js';

export async function firmwarePage(main, { signal, args: [pid] }) {
  document.title = `${pid} firmware · otad`;
  const [head, page] = await Promise.all([productHead(pid, 'firmware', signal), api('GET', path('products', pid, 'firmware'), { signal, query: { limit: 1000 } })]);

  const file = h('input', { type: 'file', id: 'fw-file', name: 'file', required: true });
  const version = h('input', { id: 'fw-version', name: 'version', required: true, maxlength: 32, class: 'mono', placeholder: '1.2.0' });
  const description = h('input', { id: 'fw-description', name: 'description', maxlength: 1024 });
  const submit = h('button', { type: 'submit', class: 'btn primary', id: 'fw-upload' }, 'Upload');
  const cancel = h('button', { type: 'button', class: 'btn ghost', hidden: true }, 'Cancel');
  const bar = progress(0);
  const barText = h('span', { class: 'muted', id: 'fw-progress-text' });
  const barBox = h('div', { class: 'upload-progress', hidden: true }, bar, barText);
  const status = h('div', { id: 'fw-status', 'aria-live': 'polite' });
  const form = h('form', { class: 'inline-form', novalidate: true },
    field('Image', file), field('Version', version, '1 to 32 characters, no spaces'), field('Description', description),
    h('div', { class: 'actions' }, submit, cancel));
  file.addEventListener('change', () => {
    // Suggest the version from a file name such as fw-1.2.0.bin.
    const m = file.files[0] && file.files[0].name.match(/(\d+\.\d+(?:\.\d+)*(?:[-+][\w.]+)?)/);
    if (m && !version.value) version.value = m[1].replace(/\.(bin|img|hex)$/, '');
  });
  form.addEventListener('submit', async e => {
    e.preventDefault();
    const f = file.files[0];
    if (!f) { replace(status, notice('Choose an image file.')); return; }
    if (!version.value.trim()) { replace(status, notice('Give the version this image installs.')); return; }
    submit.disabled = true;
    cancel.hidden = false;
    barBox.hidden = false;
    replace(status);
    const started = performance.now();
    const fields = { version: version.value.trim() };
    if (description.value.trim()) fields.description = description.value.trim();
    const up = upload(pid, f, fields, (sent, total) => {
      const p = total ? Math.round(100 * sent / total) : 0;
      bar.firstChild.style.width = p + '%';
      bar.setAttribute('aria-valuenow', p);
      const secs = (performance.now() - started) / 1000;
      replace(barText, `${p}% · ${fmtBytes(sent)} of ${fmtBytes(total)}` + (secs > 0.2 ? ` · ${fmtBytes(sent / secs)}/s` : ''));
    });
    cancel.onclick = () => up.abort();
    signal.addEventListener('abort', () => up.abort(), { once: true });
    try {
      const fw = await up.done;
      bar.firstChild.style.width = '100%';
      bar.setAttribute('aria-valuenow', 100);
      replace(barText, `100% · ${fmtBytes(fw.size)} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
      replace(status, notice(`Uploaded ${fw.version}: ${fmtBytes(fw.size)}, MD5 ${fw.md5}.`, 'ok'));
      form.reset();
      items.push(fw);
      items.sort((a, b) => (a.version < b.version ? -1 : a.version > b.version ? 1 : 0));
      list.replaceWith(list = firmwareTable(pid, items, signal));
    } catch (err) {
      replace(status, notice(`Upload failed: ${errorText(err)}`));
    } finally {
      submit.disabled = false;
      cancel.hidden = true;
    }
  });

  const items = page.items;
  let list = firmwareTable(pid, items, signal);
  replace(main, head, card('Upload firmware', form, barBox, status), card('Firmware', list));
}

function firmwareTable(pid, items, signal) {
  return table(['Version', 'Size', ['MD5', 'wide'], ['SHA-256', 'wide'], ['Description', 'wide'], 'Uploaded', ''], items.map(f => ({
    attrs: { dataset: { version: f.version } },
    cells: [h('strong', { class: 'mono' }, f.version), fmtBytes(f.size), h('span', { class: 'mono small' }, f.md5),
      h('span', { class: 'mono small', title: f.sha256 }, f.sha256.slice(0, 16) + '…'), f.description, timeCell(f.created_at), deleteButton(pid, f, signal)],
  })), { empty: 'No firmware uploaded yet.' });
}

// deleteButton asks once more before it deletes: a second click confirms.
function deleteButton(pid, f, signal) {
  const b = h('button', { type: 'button', class: 'btn small danger-ghost' }, 'Delete');
  let armed = false;
  b.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      b.textContent = `Delete ${f.version}?`;
      return;
    }
    b.disabled = true;
    try {
      await api('DELETE', path('products', pid, 'firmware', f.version), { signal });
      b.closest('tr').remove();
    } catch (err) {
      b.replaceWith(h('span', { class: 'error-text' }, errorText(err)));
    }
  });
  b.addEventListener('blur', () => { armed = false; b.textContent = 'Delete'; });
  return b;
}
