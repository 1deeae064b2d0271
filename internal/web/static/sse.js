// Server-Sent Events over fetch(): EventSource cannot send an
// Authorization header, so the stream is read with a ReadableStream reader
// and parsed here, as the HTML standard describes the format. A dropped
// stream is opened again after the server's retry delay, with
// Last-Event-ID, so no event is lost or repeated.

import { ApiError, token } from './api.js';

// Parser turns the text of an event stream, in chunks of any size, into
// events { id, type, data }.
export class Parser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buf = '';
    this.data = [];
    this.type = '';
    this.pendingId = null;
    this.lastId = ''; // the id of the last event dispatched, as Last-Event-ID
    this.retry = 0;
  }

  feed(chunk) {
    this.buf += chunk;
    let start = 0;
    for (let i = 0; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (c !== '\n' && c !== '\r') continue;
      // A CR at the end of the chunk may be half of a CRLF: wait for more.
      if (c === '\r' && i + 1 === this.buf.length) break;
      this.line(this.buf.slice(start, i));
      if (c === '\r' && this.buf[i + 1] === '\n') i++;
      start = i + 1;
    }
    this.buf = this.buf.slice(start);
  }

  line(l) {
    if (l === '') {
      if (this.pendingId !== null) this.lastId = this.pendingId;
      this.pendingId = null;
      if (this.data.length > 0) {
        this.onEvent({ id: this.lastId, type: this.type || 'message', data: this.data.join('\n') });
      }
      this.data = [];
      this.type = '';
      return;
    }
    if (l[0] === ':') return; // a comment: keep-alive
    const colon = l.indexOf(':');
    const field = colon < 0 ? l : l.slice(0, colon);
    let value = colon < 0 ? '' : l.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    switch (field) {
      case 'data': this.data.push(value); break;
      case 'event': this.type = value; break;
      case 'id': if (!value.includes('\0')) this.pendingId = value; break;
      case 'retry': if (/^[0-9]+$/.test(value)) this.retry = Number(value); break;
    }
  }
}

// follow reads the stream at url until close() is called. onEvent gets
// each event; onState gets 'open' (with { resumed }), 'reconnecting' (with
// the error) and 'failed' (with an ApiError: the server refused the
// stream, as for a bad token, and it is not tried again).
export function follow(url, { onEvent, onState = () => {}, fetchFn = fetch, retry = 2000 } = {}) {
  const ctl = new AbortController();
  let lastId = '';
  let closed = false;

  async function once() {
    const headers = { Accept: 'text/event-stream', Authorization: 'Bearer ' + token() };
    if (lastId) headers['Last-Event-ID'] = lastId;
    const res = await fetchFn(url, { headers, signal: ctl.signal, cache: 'no-store' });
    if (!res.ok) {
      let problem = {};
      try { problem = await res.json(); } catch { /* not problem+json */ }
      throw new ApiError(res.status, problem);
    }
    onState('open', { resumed: lastId !== '' });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new Parser(ev => { lastId = ev.id || lastId; onEvent(ev); });
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        parser.feed(value);
        if (parser.retry > 0) retry = parser.retry;
        lastId = parser.lastId || lastId;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  (async () => {
    while (!closed) {
      let err = new Error('the stream ended');
      try {
        await once();
      } catch (e) {
        err = e;
      }
      if (closed) return;
      if (err instanceof ApiError && err.status >= 400 && err.status < 500) {
        onState('failed', err);
        return;
      }
      onState('reconnecting', err);
      await new Promise(resolve => {
        const t = setTimeout(resolve, retry);
        ctl.signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
      });
    }
  })();

  return {
    close() { closed = true; ctl.abort(); },
    get lastId() { return lastId; },
  };
}
