// A product's jobs, and the form that starts one, with a preview of the
// devices it would reach counted through the device list API.

import { api, count, listAll, path } from './api.js';
import { productHead } from './products.js';
import { badge, card, errorText, field, h, link, notice, replace, route, table, timeCell } from './ui.js';

export async function jobsPage(main, { signal, args: [pid] }) {
  document.title = `${pid} jobs · otad`;
  const [head, jobs] = await Promise.all([productHead(pid, 'jobs', signal), listAll(path('products', pid, 'jobs'), {}, { signal, max: 5000 })]);
  const items = jobs.items.slice().reverse();
  replace(main, head,
    h('div', { class: 'page-head' }, h('h2', null, 'Jobs'), h('div', { class: 'actions' }, link(route('products', pid, 'jobs', 'new'), 'New job', { class: 'btn primary', id: 'new-job' }))),
    card(null, table(['Job', 'Firmware', 'Status', ['Targets', 'wide'], ['Phases', 'wide'], 'Created', ['Ended', 'wide']], items.map(j => [
      link(route('products', pid, 'jobs', j.id), j.id, { class: 'mono' }),
      h('span', { class: 'mono' }, j.firmware_version),
      badge(j.status),
      targetsText(j.targets) + (j.continuous ? ' (continuous)' : ''),
      j.phases && j.phases.length ? String(j.phases.length) : '—',
      timeCell(j.created_at),
      timeCell(j.completed_at),
    ]), { empty: 'No jobs yet.' })));
}

export function targetsText(t) {
  if (!t) return '';
  if (t.all) return 'all devices';
  if (t.versions) return 'devices on ' + t.versions.join(', ');
  if (t.devices) return t.devices.length <= 3 ? t.devices.join(', ') : `${t.devices.length} devices`;
  return '';
}

const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];

export async function jobFormPage(main, { signal, args: [pid], params }) {
  document.title = `New job · ${pid} · otad`;
  const [head, fw, devs] = await Promise.all([
    productHead(pid, 'jobs', signal),
    api('GET', path('products', pid, 'firmware'), { signal, query: { limit: 1000 } }),
    listAll(path('products', pid, 'devices'), {}, { signal, max: 20000 }),
  ]);
  if (!fw.items.length) {
    replace(main, head, card('New job', h('p', null, 'Upload firmware first: a job installs one of the product’s firmware versions. ',
      link(route('products', pid, 'firmware'), 'Upload firmware'), '.')));
    return;
  }
  const byName = new Map(devs.items.map(d => [d.name, d]));
  const fleetVersions = [...new Set(devs.items.map(d => d.version).filter(Boolean))].sort();

  // Firmware and targets.
  const firmware = h('select', { id: 'job-firmware', name: 'firmware_version' },
    fw.items.slice().reverse().map(f => h('option', { value: f.version, selected: params.get('version') === f.version }, f.version)));
  const radio = (value, text) => h('label', { class: 'check' }, h('input', { type: 'radio', name: 'targets', value, id: 't-' + value, checked: value === 'all' }), ' ', text);
  const versions = h('input', { id: 'job-versions', class: 'mono', placeholder: '1.0.0, 1.0.1' });
  const chips = h('div', { class: 'chips' }, fleetVersions.map(v => h('button', { type: 'button', class: 'chip mono', onclick: () => {
    const have = splitList(versions.value);
    if (!have.includes(v)) versions.value = [...have, v].join(', ');
    pick('versions');
  } }, v)));
  const names = h('textarea', { id: 'job-devices', class: 'mono', rows: 3, placeholder: 'device names, separated by commas, spaces or lines' });
  const versionsBox = h('div', { class: 'sub', hidden: true }, field('Versions the devices run now', versions), fleetVersions.length ? h('div', null, h('span', { class: 'hint' }, 'In the fleet: '), chips) : null);
  const namesBox = h('div', { class: 'sub', hidden: true }, field('Device names', names));
  const continuous = h('input', { type: 'checkbox', id: 'job-continuous' });
  const targetsSet = h('fieldset', null, h('legend', null, 'Targets'),
    h('div', { class: 'radios' }, radio('all', 'All devices'), radio('versions', 'Devices on versions'), radio('devices', 'Named devices')),
    versionsBox, namesBox,
    h('label', { class: 'check' }, continuous, ' Continuous: keep adding devices that come to match (new devices, devices reporting a targeted version) until canceled or end_at'));
  const kind = () => targetsSet.querySelector('input[name=targets]:checked').value;
  function pick(k) {
    targetsSet.querySelector(`#t-${k}`).checked = true;
    sync();
  }
  function sync() {
    versionsBox.hidden = kind() !== 'versions';
    namesBox.hidden = kind() !== 'devices';
    continuous.disabled = kind() === 'devices';
    if (continuous.disabled) continuous.checked = false;
  }

  // Phases: rows of percent or count, soak and success threshold; the
  // last phase takes every device left.
  const phaseRows = h('div', { class: 'rows', id: 'phases' });
  const phases = [];
  function phaseRow() {
    const sizeKind = h('select', { class: 'phase-kind' }, h('option', { value: 'percent' }, '% of devices'), h('option', { value: 'count' }, 'devices'));
    const size = h('input', { type: 'number', class: 'phase-size', min: 0, step: 'any', value: 10 });
    const soak = h('input', { type: 'number', class: 'phase-soak', min: 0, placeholder: '0' });
    const threshold = h('input', { type: 'number', class: 'phase-threshold', min: 0, max: 100, step: 'any', placeholder: '100' });
    const row = { sizeKind, size, soak, threshold };
    row.el = h('div', { class: 'row-item phase' },
      h('span', { class: 'row-index' }),
      field('Size', h('span', { class: 'pair' }, size, sizeKind)),
      field('Soak (s)', soak), field('Success %', threshold),
      h('button', { type: 'button', class: 'btn small ghost', 'aria-label': 'Remove phase', onclick: () => {
        phases.splice(phases.indexOf(row), 1);
        drawPhases();
      } }, 'Remove'));
    return row;
  }
  const lastPhase = h('div', { class: 'row-item phase last' }, h('span', { class: 'row-index' }), h('span', { class: 'muted' }, 'Every device left'));
  function drawPhases() {
    replace(phaseRows, phases.map(p => p.el), phases.length ? lastPhase : h('p', { class: 'muted' }, 'No phases: every targeted device may be upgraded from the start, as pacing allows.'));
    [...phaseRows.querySelectorAll('.row-index')].forEach((el, i) => replace(el, `Phase ${i + 1}`));
    schedulePreview();
  }
  const addPhase = h('button', { type: 'button', class: 'btn small', id: 'add-phase', onclick: () => { phases.push(phaseRow()); drawPhases(); } }, 'Add phase');
  const phasesSet = h('fieldset', null, h('legend', null, 'Phases'),
    h('p', { class: 'hint' }, 'Each phase’s devices are drawn at random. The next phase starts once the current one has no device upgrading, its soak has passed and its success share is met; otherwise the job pauses.'),
    phaseRows, h('div', { class: 'actions' }, addPhase));

  // Pacing.
  const num = (id, placeholder, attrs = {}) => h('input', { type: 'number', id, min: 0, placeholder, ...attrs });
  const maxConcurrent = num('job-max-concurrent', 'no limit');
  const maxPerMinute = num('job-max-per-minute', 'no limit');
  const rateOn = h('input', { type: 'checkbox', id: 'job-rate' });
  const rateBase = num('rate-base', '10', { min: 1 });
  const rateFactor = num('rate-factor', '2', { min: 1.1, max: 5, step: 0.1 });
  const rateEvery = num('rate-every', '100', { min: 1 });
  const rateWhen = h('select', { id: 'rate-on' }, h('option', { value: 'notified' }, 'notified'), h('option', { value: 'succeeded' }, 'upgraded'));
  const rateBox = h('div', { class: 'sub fields', hidden: true },
    field('Start at, per minute', rateBase), field('Multiply by', rateFactor), field('Every … devices', rateEvery), field('Counting devices', rateWhen));
  rateOn.addEventListener('change', () => { rateBox.hidden = !rateOn.checked; });
  const pacingSet = h('fieldset', null, h('legend', null, 'Pacing'),
    h('div', { class: 'fields' }, field('Most upgrading at once', maxConcurrent), field('Most notified per minute', maxPerMinute)),
    h('label', { class: 'check' }, rateOn, ' Exponential rate: start slow, speed up as devices are notified or upgraded'), rateBox);

  // Attempts and time.
  const timeout = num('job-timeout', '1800', { min: 1 });
  const retries = num('job-retries', '2');
  const backoff = num('job-backoff', '30');
  const startAt = h('input', { type: 'datetime-local', id: 'job-start-at' });
  const endAt = h('input', { type: 'datetime-local', id: 'job-end-at' });
  const windowRows = h('div', { class: 'rows', id: 'windows' });
  const windows = [];
  const zones = h('datalist', { id: 'zones' }, (Intl.supportedValuesOf ? Intl.supportedValuesOf('timeZone') : []).map(z => h('option', { value: z })));
  function windowRow() {
    const days = DAYS.map(d => h('input', { type: 'checkbox', value: d }));
    const start = h('input', { type: 'time', class: 'window-start', value: '01:00', required: true });
    const duration = h('input', { type: 'number', class: 'window-duration', min: 1, max: 10080, value: 240 });
    const zone = h('input', { class: 'window-zone', list: 'zones', placeholder: 'UTC', value: Intl.DateTimeFormat().resolvedOptions().timeZone || '' });
    const row = { days, start, duration, zone };
    row.el = h('div', { class: 'row-item window' },
      h('div', { class: 'days', role: 'group', 'aria-label': 'Days (none: every day)' }, days.map((c, i) => h('label', { class: 'day' }, c, DAYS[i]))),
      field('Opens', start), field('For (min)', duration), field('Time zone', zone),
      h('button', { type: 'button', class: 'btn small ghost', 'aria-label': 'Remove window', onclick: () => {
        windows.splice(windows.indexOf(row), 1);
        drawWindows();
      } }, 'Remove'));
    return row;
  }
  function drawWindows() {
    replace(windowRows, windows.length ? windows.map(w => w.el) : h('p', { class: 'muted' }, 'No windows: devices are notified at any time.'));
  }
  const addWindow = h('button', { type: 'button', class: 'btn small', id: 'add-window', onclick: () => { windows.push(windowRow()); drawWindows(); } }, 'Add window');
  const timeSet = h('fieldset', null, h('legend', null, 'Attempts and time'),
    h('div', { class: 'fields' }, field('Timeout per attempt (s)', timeout), field('Retries', retries), field('Retry backoff (s)', backoff),
      field('Start at', startAt, 'empty: now'), field('End at', endAt, 'then queued devices are canceled')),
    h('h3', null, 'Maintenance windows'), windowRows, h('div', { class: 'actions' }, addWindow), zones);

  // Preview and submit.
  const preview = h('div', { class: 'preview', id: 'job-preview', 'aria-live': 'polite' });
  const status = h('div', { id: 'job-status', 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit', class: 'btn primary', id: 'job-create' }, 'Start job');
  const form = h('form', { class: 'job-form', novalidate: true },
    h('fieldset', null, h('legend', null, 'Firmware'), h('div', { class: 'narrow' }, field('Install version', firmware))),
    targetsSet, phasesSet, pacingSet, timeSet,
    h('div', { class: 'submit-bar' }, preview, status, h('div', { class: 'actions' }, link(route('products', pid, 'jobs'), 'Cancel', { class: 'btn ghost' }), submit)));

  const counted = new Map(); // device list filters → count, so a preview asks once
  const countDevices = q => {
    const key = JSON.stringify(q);
    if (!counted.has(key)) counted.set(key, count(path('products', pid, 'devices'), q, { signal }));
    return counted.get(key);
  };
  let previewTimer = 0;
  let previewRun = 0;
  function schedulePreview() {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(() => drawPreview(++previewRun).catch(e => { if (!signal.aborted) replace(preview, notice(errorText(e))); }), 250);
  }
  async function drawPreview(run) {
    const fwv = firmware.value;
    let total = 0, already = 0, online = null, unknown = [];
    if (kind() === 'all') {
      [total, already, online] = await Promise.all([countDevices({}), countDevices({ version: fwv }), countDevices({ online: true })]);
    } else if (kind() === 'versions') {
      const vs = [...new Set(splitList(versions.value))];
      const [totals, onlines] = await Promise.all([Promise.all(vs.map(v => countDevices({ version: v }))), Promise.all(vs.map(v => countDevices({ version: v, online: true })))]);
      total = totals.reduce((a, b) => a + b, 0);
      online = onlines.reduce((a, b) => a + b, 0);
      already = vs.includes(fwv) ? totals[vs.indexOf(fwv)] : 0;
    } else {
      const ns = [...new Set(splitList(names.value))];
      const known = ns.filter(n => byName.has(n));
      unknown = ns.filter(n => !byName.has(n));
      total = known.length;
      online = known.filter(n => byName.get(n).online).length;
      already = known.filter(n => byName.get(n).version === fwv).length;
    }
    if (run !== previewRun) return;
    const left = total - already;
    let next = 0;
    const sizes = phases.map(p => {
      const v = Number(p.size.value) || 0;
      const s = Math.min(left - next, p.sizeKind.value === 'count' ? Math.floor(v) : Math.ceil(v * left / 100));
      next += Math.max(s, 0);
      return Math.max(s, 0);
    });
    if (phases.length) sizes.push(left - next + already);
    replace(preview,
      h('p', null, h('strong', { id: 'preview-count' }, `${total} device${total === 1 ? '' : 's'}`), ' targeted',
        online !== null ? `, ${online} online now` : '',
        already ? `; ${already} already on ${fwv} (done at once)` : '', continuous.checked ? ', and devices that come to match later' : '', '.'),
      sizes.length ? h('p', { class: 'muted' }, 'Phases: ', sizes.map((s, i) => `${i + 1}: ${s}`).join(' · ')) : null,
      unknown.length ? notice(`Unknown device names: ${unknown.slice(0, 20).join(', ')}${unknown.length > 20 ? '…' : ''}`, 'warn') : null,
      devs.more && kind() === 'devices' ? notice('Names are checked against the first 20000 devices only.', 'info') : null);
  }
  form.addEventListener('input', schedulePreview);
  form.addEventListener('change', () => { sync(); schedulePreview(); });

  form.addEventListener('submit', async e => {
    e.preventDefault();
    let body;
    try {
      body = jobBody();
    } catch (err) {
      replace(status, notice(err.message));
      return;
    }
    submit.disabled = true;
    replace(status, h('p', { class: 'muted' }, 'Starting…'));
    try {
      const j = await api('POST', path('products', pid, 'jobs'), { signal, body });
      location.hash = route('products', pid, 'jobs', j.id);
    } catch (err) {
      const conflicting = err.extra && Array.isArray(err.extra.devices) ? err.extra.devices : null;
      replace(status, notice(errorText(err) + (conflicting ? `: ${conflicting.slice(0, 20).join(', ')}${conflicting.length > 20 ? '…' : ''}` : '')));
      submit.disabled = false;
    }
  });

  function jobBody() {
    const body = { firmware_version: firmware.value, targets: {} };
    if (kind() === 'all') body.targets.all = true;
    if (kind() === 'versions') {
      body.targets.versions = [...new Set(splitList(versions.value))];
      if (!body.targets.versions.length) throw new Error('Name at least one version.');
    }
    if (kind() === 'devices') {
      body.targets.devices = [...new Set(splitList(names.value))];
      if (!body.targets.devices.length) throw new Error('Name at least one device.');
    }
    if (continuous.checked) body.continuous = true;
    const int = (input, key, to = body) => { if (input.value !== '') to[key] = Math.trunc(Number(input.value)); };
    const real = (input, key, to) => { if (input.value !== '') to[key] = Number(input.value); };
    int(timeout, 'timeout_seconds');
    int(retries, 'max_retries');
    int(backoff, 'retry_backoff_seconds');
    int(maxConcurrent, 'max_concurrent');
    int(maxPerMinute, 'max_per_minute');
    if (startAt.value) body.start_at = new Date(startAt.value).toISOString();
    if (endAt.value) body.end_at = new Date(endAt.value).toISOString();
    if (phases.length) {
      body.phases = phases.map(p => {
        const ph = {};
        if (p.sizeKind.value === 'count') int(p.size, 'count', ph); else real(p.size, 'percent', ph);
        int(p.soak, 'soak_seconds', ph);
        real(p.threshold, 'success_threshold', ph);
        return ph;
      });
      body.phases.push({});
    }
    if (rateOn.checked) {
      body.rate = { increment_on: rateWhen.value };
      int(rateBase, 'base_per_minute', body.rate);
      real(rateFactor, 'increment_factor', body.rate);
      int(rateEvery, 'increment_every', body.rate);
    }
    if (windows.length) {
      body.maintenance_windows = windows.map(w => {
        const mw = { start: w.start.value, duration_minutes: Math.trunc(Number(w.duration.value)) };
        const days = w.days.filter(c => c.checked).map(c => c.value);
        if (days.length) mw.days = days;
        if (w.zone.value.trim()) mw.time_zone = w.zone.value.trim();
        return mw;
      });
    }
    return body;
  }

  drawPhases();
  drawWindows();
  sync();
  replace(main, head, h('div', { class: 'page-head' }, h('h2', null, 'New job')), card(null, form));
  schedulePreview();
}

function splitList(s) {
  return s.split(/[\s,]+/).map(x => x.trim()).filter(Boolean);
}
