// The live job page: counts, phases, each device's progress and a
// timeline, kept current by the event stream of the job (GET
// /v1/events/stream?job_id=…); the operator's actions are the API's.

import { api, path, query, refused } from './api.js';
import { productHead } from './products.js';
import { targetsText } from './jobs.js';
import { follow } from './sse.js';
import { ACTIVE_JOB, EXEC_STATES, badge, card, errorText, fact, fmtTime, h, label, link, notice, progress, replace, route, stacked, table, timeCell } from './ui.js';

const TIMELINE_TYPES = ['job.*', 'execution.failed', 'execution.timed_out', 'execution.rolled_back'];
const TIMELINE_MAX = 300;
const BAD = new Set(['failed', 'timed_out', 'rolled_back']);
const ACTIONS = [
  ['pause', 'Pause', j => j.status === 'running' || j.status === 'scheduled'],
  ['resume', 'Resume', j => j.status === 'paused'],
  ['advance', 'Advance phase', j => (j.status === 'running' || j.status === 'paused') && j.phases && j.current_phase < j.phases.length - 1],
  ['retry', 'Retry failed', j => j.status !== 'scheduled' && j.status !== 'canceled' && (j.counts.failed || 0) + (j.counts.timed_out || 0) > 0],
  ['cancel', 'Cancel job', j => ACTIVE_JOB.has(j.status)],
];

export async function jobPage(main, { signal, args: [pid, id], params }) {
  document.title = `Job ${id} · otad`;
  const jobURL = path('products', pid, 'jobs', id);
  let state = params.get('state') || '';
  let limit = 100;
  const devicesOf = () => api('GET', jobURL + '/devices', { signal, query: { state: state || undefined, limit } });
  let [head, job, devices] = await Promise.all([productHead(pid, 'jobs', signal), api('GET', jobURL, { signal }), devicesOf()]);

  const streamState = h('span', { class: 'pill', id: 'stream-state' }, 'connecting…');
  const title = h('div', { class: 'page-head' });
  const actionStatus = h('div', { 'aria-live': 'polite', id: 'action-status' });
  const summary = h('section', { class: 'card', id: 'job-summary' });
  const phasesCard = h('section', { class: 'card', id: 'job-phases' });
  const filter = h('select', { id: 'exec-state', 'aria-label': 'Show devices in state' });
  filter.addEventListener('change', () => { state = filter.value; limit = 100; refresh(); });
  const devicesSlot = h('div', { id: 'job-devices' });
  const moreSlot = h('div', { class: 'actions' });
  const timelineList = h('ol', { class: 'timeline', id: 'timeline' });
  const timeline = new Map(); // seq → event

  let headKey = '';
  function drawHead() {
    // Redrawn only when something in it changed, so a button is not
    // swapped under the pointer.
    const key = JSON.stringify([job.status, job.total, job.current_phase, ACTIONS.map(([, , ok]) => ok(job))]);
    if (key === headKey) return;
    headKey = key;
    const buttons = ACTIONS.filter(([, , ok]) => ok(job)).map(([action, text]) => {
      const b = h('button', { type: 'button', class: 'btn' + (action === 'cancel' ? ' danger' : ''), id: 'action-' + action }, text);
      b.addEventListener('click', () => act(action, b));
      return b;
    });
    replace(title,
      h('div', null,
        h('h2', null, 'Job ', h('span', { class: 'mono' }, job.id), ' ', h('span', { id: 'job-status' }, badge(job.status)), ' ', streamState),
        h('p', { class: 'muted' }, `Installs ${job.firmware_version} on ${targetsText(job.targets)}${job.continuous ? ', continuously' : ''} · ${job.total} devices`)),
      h('div', { class: 'actions' }, buttons));
  }

  async function act(action, button) {
    button.disabled = true;
    try {
      job = await api('POST', path('products', pid, 'jobs', id, action), { signal });
      replace(actionStatus);
      draw();
    } catch (err) {
      if (signal.aborted) return;
      replace(actionStatus, notice(`${label(action)}: ${errorText(err)}`));
      button.disabled = false;
    }
  }

  function drawSummary() {
    const c = job.counts;
    replace(summary,
      h('h2', null, 'Progress'),
      job.status_reason ? notice(job.status_reason, job.status === 'paused' || job.status === 'canceled' ? 'warn' : 'info') : null,
      stacked(c, job.total),
      h('div', { class: 'counts' }, EXEC_STATES.map(s => h('button', {
        type: 'button', class: 'count' + (state === s ? ' active' : '') + (c[s] ? '' : ' zero'), dataset: { state: s }, id: 'count-' + s,
        onclick: () => { state = state === s ? '' : s; limit = 100; refresh(); },
      }, h('span', { class: 'count-n' }, h('span', { class: 'swatch s-' + s }), h('strong', null, String(c[s] || 0))), h('span', { class: 'count-label' }, label(s))))),
      h('dl', { class: 'facts inline' },
        fact('Created', fmtTime(job.created_at)),
        job.start_at ? fact('Starts', fmtTime(job.start_at)) : null,
        job.end_at ? fact('Ends by', fmtTime(job.end_at)) : null,
        fact('Ended', job.completed_at ? fmtTime(job.completed_at) : '—'),
        fact('Pacing', pacingText(job)),
        fact('Attempts', `timeout ${job.timeout_seconds} s, ${job.max_retries} retries, backoff ${job.retry_backoff_seconds} s`),
        job.maintenance_windows && job.maintenance_windows.length ? fact('Windows', job.maintenance_windows.map(windowText).join('; ')) : null));
  }

  function drawPhases() {
    phasesCard.hidden = !(job.phases && job.phases.length);
    if (phasesCard.hidden) return;
    replace(phasesCard, h('h2', null, 'Phases'), table(['Phase', 'State', ['Devices', 'wide'], 'Progress', ['Started', 'wide'], ['Soak until', 'wide'], ['Ended', 'wide']], job.phases.map(p => ({
      attrs: { class: p.index === job.current_phase ? 'current' : '', dataset: { phase: p.index } },
      cells: [
        h('span', null, h('strong', null, `${p.index + 1}`), ' ', h('span', { class: 'muted' }, phaseSize(p, job.phases.length))),
        badge(p.state),
        String(p.size),
        h('div', { class: 'phase-progress' }, stacked(p.counts, p.size), h('span', { class: 'muted small' }, `${p.counts.done || 0} done` + failedText(p.counts))),
        timeCell(p.started_at),
        p.soak_until ? timeCell(p.soak_until) : (p.soak_seconds ? `${p.soak_seconds} s soak` : '—'),
        p.ended_at ? h('span', null, timeCell(p.ended_at), p.result ? ` (${p.result})` : '') : '—',
      ],
    }))));
  }

  function drawFilter() {
    replace(filter, h('option', { value: '' }, `all states (${job.total})`),
      EXEC_STATES.map(s => h('option', { value: s, selected: s === state }, `${label(s)} (${job.counts[s] || 0})`)));
    filter.value = state;
  }

  function drawDevices() {
    const rows = devices.items.map(x => ({
      attrs: { dataset: { device: x.device_name, state: x.state } },
      cells: [
        link(route('products', pid, 'devices', x.device_name), x.device_name, { class: 'mono' }),
        job.phases && job.phases.length ? String(x.phase + 1) : '—',
        badge(x.state),
        x.state === 'done' ? progress(100, 'small ok') : progress(x.percent, 'small' + (BAD.has(x.state) ? ' bad' : '')),
        String(x.attempts),
        x.result_name ? h('strong', { class: 'result-name' }, x.result_name) : (x.result_code ? `code ${x.result_code}` : ''),
        h('span', { class: 'muted' }, x.result_msg),
        timeCell(x.updated_at),
      ],
    }));
    replace(devicesSlot, table(['Device', ['Phase', 'wide'], 'State', 'Progress', ['Attempts', 'wide'], 'Failure', ['Message', 'wide'], ['Updated', 'wide']], rows,
      { empty: state ? `No device is ${label(state)}.` : 'No devices.' }));
    replace(moreSlot, devices.next_cursor && limit < 1000
      ? h('button', { type: 'button', class: 'btn', onclick: () => { limit = Math.min(1000, limit * 4); refresh(); } }, 'Show more')
      : devices.next_cursor ? h('span', { class: 'muted' }, 'The first 1000 are shown: pick a state to narrow them.') : null);
  }

  function addTimeline(ev) {
    if (timeline.has(ev.seq)) return;
    timeline.set(ev.seq, ev);
    const li = h('li', { class: 'ev ' + ev.type.replace(/\./g, '-'), dataset: { seq: ev.seq, type: ev.type } },
      h('time', { datetime: ev.created_at, title: ev.created_at }, fmtTime(ev.created_at)), eventText(ev));
    const after = [...timelineList.children].find(el => Number(el.dataset.seq) < ev.seq);
    timelineList.insertBefore(li, after || null);
    while (timelineList.children.length > TIMELINE_MAX) timelineList.lastChild.remove();
  }

  function draw() {
    drawHead();
    drawSummary();
    drawPhases();
    drawFilter();
    drawDevices();
  }

  // refresh reads the job and its devices again; calls while one runs
  // fold into one more.
  let running = null, again = false;
  async function refresh() {
    if (running) { again = true; return running; }
    running = (async () => {
      do {
        again = false;
        const [j, d] = await Promise.all([api('GET', jobURL, { signal }), devicesOf()]);
        job = j;
        devices = d;
        draw();
      } while (again && !signal.aborted);
    })().catch(e => {
      if (!signal.aborted) replace(actionStatus, notice(`Could not refresh: ${errorText(e)}`));
    }).finally(() => { running = null; });
    return running;
  }

  async function loadTimeline() {
    let after = 0;
    for (;;) {
      const page = await api('GET', '/v1/events', { signal, query: { job_id: id, type: TIMELINE_TYPES.join(','), after, limit: 1000 } });
      page.items.forEach(addTimeline);
      after = page.last_seq;
      if (page.items.length < 1000) return;
    }
  }

  const inTimeline = t => t.startsWith('job.') || TIMELINE_TYPES.includes(t);
  let timer = 0;
  const stream = follow('/v1/events/stream' + query({ job_id: id }), {
    onEvent(ev) {
      let e;
      try { e = JSON.parse(ev.data); } catch { return; }
      if (inTimeline(e.type)) addTimeline(e);
      // Events come in bursts: one refresh for each burst.
      clearTimeout(timer);
      timer = setTimeout(refresh, 150);
    },
    onState(s, err) {
      if (s === 'open') {
        replace(streamState, '● live');
        streamState.className = 'pill live';
        refresh();
        if (!timeline.size) loadTimeline().catch(e => { if (!signal.aborted) timelineList.append(h('li', null, notice(errorText(e)))); });
      } else if (s === 'reconnecting') {
        replace(streamState, 'reconnecting…');
        streamState.className = 'pill warn';
      } else if (s === 'failed') {
        replace(streamState, 'not live');
        streamState.className = 'pill error';
        if (err.status === 401) refused(err);
        else replace(actionStatus, notice(`Live updates stopped: ${errorText(err)}`));
      }
    },
  });
  signal.addEventListener('abort', () => { stream.close(); clearTimeout(timer); });

  draw();
  replace(main, head, title, actionStatus, summary, phasesCard,
    card(null, h('div', { class: 'row' }, h('h2', null, 'Devices'), filter), devicesSlot, moreSlot),
    card('Timeline', h('p', { class: 'hint' }, 'Job changes and device failures, newest first.'), timelineList));
}

function failedText(c) {
  const bad = (c.failed || 0) + (c.timed_out || 0) + (c.rolled_back || 0);
  return bad ? `, ${bad} failed` : '';
}

function phaseSize(p, n) {
  if (p.index === n - 1) return 'the rest';
  if (p.count) return `${p.count} devices`;
  if (p.percent) return `${p.percent}%`;
  return '';
}

function pacingText(j) {
  const parts = [];
  if (j.max_concurrent) parts.push(`${j.max_concurrent} at once`);
  if (j.max_per_minute) parts.push(`${j.max_per_minute}/min`);
  if (j.rate) parts.push(`from ${j.rate.base_per_minute}/min ×${j.rate.increment_factor} every ${j.rate.increment_every} ${j.rate.increment_on || 'notified'}`);
  return parts.join(', ') || 'no limit';
}

function windowText(w) {
  return `${w.days && w.days.length ? w.days.join(',') : 'daily'} ${w.start} for ${w.duration_minutes} min ${w.time_zone || 'UTC'}`;
}

function eventText(e) {
  const d = e.data || {};
  const why = d.reason ? ` — ${d.reason}` : '';
  switch (e.type) {
    case 'job.created': return h('span', null, 'Job created');
    case 'job.closed': return h('span', null, 'Job closed: its last device ended');
    case 'job.phase_started':
      return h('span', null, h('strong', null, `Phase ${Number(d.phase) + 1} started`), d.result ? ` (phase ${Number(d.from) + 1} ${d.result})` : '');
  }
  if (e.type.startsWith('job.')) return h('span', null, 'Job ', badge(e.type.slice(4)), why);
  if (e.type.startsWith('execution.')) {
    return h('span', null, h('span', { class: 'mono' }, e.device_name), ' ', badge(e.type.slice(10)),
      d.result_name ? h('strong', { class: 'result-name' }, ' ' + d.result_name) : '', d.result_msg ? h('span', { class: 'muted' }, ` “${d.result_msg}”`) : '',
      d.attempts ? h('span', { class: 'muted' }, ` · attempt ${d.attempts}`) : '');
  }
  return h('span', null, e.type);
}
