// The Sluice dashboard: plain DOM, no framework, no build. Reads the admin API of the job that
// serves it with the token given in the URL fragment (#token=...) or typed in; the token stays in
// this tab's sessionStorage and is sent as a bearer header, never in a URL.

const SVG = 'http://www.w3.org/2000/svg';
const state = {
  token: sessionStorage.getItem('sluice-token') ?? '',
  view: 'topology',
  tick: undefined, // last live-feed snapshot
  status: undefined,
  history: undefined,
  timer: undefined,
  browse: { stream: '', from: '', fromTime: '', subject: '', contains: '', limit: '50', dead: false },
};

// ---- helpers ----

/** An element with attributes and children; text is always set as text, never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith('svg:') ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'className') el.setAttribute('class', v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function table(head, rows, numeric = []) {
  return h(
    'table',
    {},
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        head.map((t, i) => h('th', { className: numeric.includes(i) ? 'num' : undefined }, t)),
      ),
    ),
    h(
      'tbody',
      {},
      rows.length === 0
        ? h('tr', {}, h('td', { colspan: head.length, className: 'muted' }, '(none)'))
        : rows.map((r) =>
            r instanceof Node
              ? r
              : h(
                  'tr',
                  {},
                  r.map((c, i) => h('td', { className: numeric.includes(i) ? 'num' : undefined }, c)),
                ),
          ),
    ),
  );
}

function flash(text, error = false) {
  const el = document.getElementById('flash');
  el.textContent = text;
  el.className = error ? 'flash error' : 'flash';
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => (el.hidden = true), 4000);
}

function ms(n) {
  if (n < 1000) return `${n} ms`;
  if (n < 60_000) return `${(n / 1000).toFixed(1)} s`;
  return `${Math.floor(n / 60_000)} min ${Math.floor((n % 60_000) / 1000)} s`;
}

function when(t) {
  return t > 0 ? new Date(t).toISOString().replace('T', ' ').slice(0, 23) : '';
}

/** A sparkline of [time, value] points. */
function spark(points = [], width = 120, height = 24) {
  const svg = h('svg:svg', { width, height, className: 'spark', viewBox: `0 0 ${width} ${height}` });
  if (points.length < 2) return svg;
  const max = Math.max(1, ...points.map((p) => p[1]));
  const step = width / (points.length - 1);
  const coords = points.map(
    (p, i) => `${(i * step).toFixed(1)},${(height - 2 - (p[1] / max) * (height - 4)).toFixed(1)}`,
  );
  svg.append(h('svg:polyline', { points: coords.join(' ') }), h('svg:title', {}, `max ${max}`));
  return svg;
}

// ---- the API ----

class Refused extends Error {}

async function api(path, body) {
  const init = { headers: {} };
  if (state.token !== '') init.headers.authorization = `Bearer ${state.token}`;
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) {
    showLogin(data.error?.message ?? 'the token was refused');
    throw new Refused(data.error?.message);
  }
  if (!res.ok) throw new Error(data.error?.message ?? `${res.status}`);
  return data;
}

async function act(path, body, done) {
  try {
    const r = await api(path, body);
    flash(done(r));
    await render();
  } catch (error) {
    if (!(error instanceof Refused)) flash(error.message, true);
  }
}

function showLogin(message) {
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = message ?? '';
}

/** The live feed: Server-Sent Events read with fetch, so the token goes in a header. */
async function feed() {
  const live = document.getElementById('live');
  for (;;) {
    try {
      const res = await fetch('/api/events', {
        headers: state.token ? { authorization: `Bearer ${state.token}` } : {},
      });
      if (res.status === 401) {
        showLogin('the token was refused');
        return;
      }
      if (!res.ok) throw new Error(String(res.status));
      live.textContent = 'live';
      live.className = 'live on';
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffered = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let end = buffered.indexOf('\n\n');
        while (end >= 0) {
          onEvent(buffered.slice(0, end));
          buffered = buffered.slice(end + 2);
          end = buffered.indexOf('\n\n');
        }
      }
    } catch {
      // Reconnects below.
    }
    live.textContent = 'offline';
    live.className = 'live off';
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function onEvent(frame) {
  let event = 'message';
  let data = '';
  for (const line of frame.split('\n')) {
    if (line.startsWith('event: ')) event = line.slice(7);
    else if (line.startsWith('data: ')) data += line.slice(6);
  }
  if (data === '') return;
  const payload = JSON.parse(data);
  if (event === 'tick') {
    state.tick = payload;
    document.getElementById('dl-count').textContent =
      payload.deadLetters.kept > 0 ? String(payload.deadLetters.kept) : '';
    if (state.view === 'topology') updateTopology();
    if (state.view === 'lag' || state.view === 'timeline') updateSources();
  } else if (event === 'deadletter' && state.view === 'deadletters') {
    void render();
  }
}

// ---- views ----

const views = {
  topology: viewTopology,
  streams: viewStreams,
  lag: viewLag,
  messages: viewMessages,
  windows: viewWindows,
  checkpoints: viewCheckpoints,
  deadletters: viewDeadLetters,
  state: viewState,
  timeline: viewTimeline,
  audit: viewAudit,
};

/** Views that refresh on their own every few seconds (the others on demand, so forms keep their input). */
const refreshing = new Set(['streams', 'lag', 'windows', 'checkpoints', 'deadletters', 'timeline', 'audit']);

async function render() {
  const main = document.getElementById('view');
  try {
    state.status = await api('/api/status');
    renderHeader();
    const content = await views[state.view]();
    main.replaceChildren(content);
  } catch (error) {
    if (!(error instanceof Refused)) main.replaceChildren(h('p', { className: 'error' }, error.message));
  }
}

function renderHeader() {
  const s = state.status;
  document.getElementById('summary').textContent =
    `${s.actors.total} actors, ${s.streams} streams, up ${ms(s.uptimeMs)}; ${s.totals.delivered} delivered, ${s.totals.deadLettered} dead-lettered`;
  const badges = document.getElementById('badges');
  badges.replaceChildren(
    ...[
      s.readOnly ? h('span', { className: 'badge' }, 'read-only') : null,
      s.stopped ? h('span', { className: 'badge' }, 'stopping') : null,
    ].filter(Boolean),
  );
  document.getElementById('dl-count').textContent = s.deadLetters.kept > 0 ? String(s.deadLetters.kept) : '';
}

const readOnly = () => state.status?.readOnly === true;

// Topology: streams and subjects on the left, actors in layers by how far they are from a source.

function matches(pattern, subject) {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return s.length > i;
    if (i >= s.length || (p[i] !== '*' && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}

async function viewTopology() {
  const [actors, streams, history] = await Promise.all([api('/api/actors'), api('/api/streams'), api('/api/history')]);
  state.history = history;
  const nodes = new Map(); // id -> { id, kind, label, layer, x, y }
  const edges = [];
  const deliver = new Map(); // delivery subject -> stream node id
  for (const s of streams) {
    nodes.set(`stream:${s.name}`, {
      id: `stream:${s.name}`,
      kind: 'stream',
      label: s.name,
      sub: s.subjects.join(', '),
      layer: 0,
    });
    for (const c of s.consumers) deliver.set(`$SLUICE.deliver.${s.name}.${c.name}`, `stream:${s.name}`);
  }
  const subjectNode = (subject) => {
    const id = `subject:${subject}`;
    if (!nodes.has(id)) nodes.set(id, { id, kind: 'subject', label: subject, layer: 0 });
    return id;
  };
  for (const a of actors)
    nodes.set(`actor:${a.name}`, { id: `actor:${a.name}`, kind: 'actor', label: a.name, actor: a, layer: 1 });
  for (const a of actors) {
    for (const input of a.inputs) {
      const stream = deliver.get(input);
      if (stream !== undefined) edges.push([stream, `actor:${a.name}`]);
      // A subject another actor writes is drawn as that actor's edge (below); others as a node.
      else if (!actors.some((w) => w.output !== undefined && matches(input, w.output))) {
        edges.push([subjectNode(input), `actor:${a.name}`]);
      }
    }
  }
  for (const a of actors) {
    if (a.output === undefined) continue;
    // An output goes to the actors that subscribe to it, or to the stream that captures it.
    const readers = actors.filter((b) => b.inputs.some((i) => !deliver.has(i) && matches(i, a.output)));
    const stream = streams.find((s) => s.subjects.some((p) => matches(p, a.output)));
    for (const b of readers) edges.push([`actor:${a.name}`, `actor:${b.name}`]);
    if (stream !== undefined) edges.push([`actor:${a.name}`, `stream:${stream.name}`]);
    if (readers.length === 0 && stream === undefined) edges.push([`actor:${a.name}`, subjectNode(a.output)]);
  }
  // Layers: a node is one further than the furthest node that feeds it (cycles stop at 8).
  for (let round = 0; round < 8; round++) {
    for (const [from, to] of edges) {
      const f = nodes.get(from);
      const t = nodes.get(to);
      if (t.kind === 'stream' && t.layer === 0 && f.kind === 'actor') continue;
      if (t.layer <= f.layer) t.layer = Math.min(f.layer + 1, 8);
    }
  }
  // Subjects that are only outputs sit right of their actor; subjects nobody writes stay at 0.
  const byLayer = new Map();
  for (const n of nodes.values()) {
    if (!byLayer.has(n.layer)) byLayer.set(n.layer, []);
    byLayer.get(n.layer).push(n);
  }
  const W = 210;
  const H = 74;
  const GAP_X = 70;
  const GAP_Y = 22;
  let maxRows = 0;
  for (const [layer, list] of byLayer) {
    list.forEach((n, i) => {
      n.x = 20 + layer * (W + GAP_X);
      n.y = 20 + i * (H + GAP_Y);
    });
    maxRows = Math.max(maxRows, list.length);
  }
  const layers = Math.max(...byLayer.keys()) + 1;
  const svg = h('svg:svg', {
    className: 'topology',
    width: 40 + layers * (W + GAP_X) - GAP_X,
    height: 40 + maxRows * (H + GAP_Y) - GAP_Y,
    'data-testid': 'topology',
  });
  for (const [from, to] of edges) {
    const f = nodes.get(from);
    const t = nodes.get(to);
    const x1 = f.x + W;
    const y1 = f.y + H / 2;
    const x2 = t.x;
    const y2 = t.y + H / 2;
    const back = x2 <= x1;
    const d = back
      ? `M${x1},${y1} C${x1 + 40},${y1 + 60} ${x2 - 40},${y2 + 60} ${x2},${y2}`
      : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
    svg.append(h('svg:path', { d, 'marker-end': 'url(#arrow)' }));
  }
  svg.prepend(
    h(
      'svg:defs',
      {},
      h(
        'svg:marker',
        { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: 'auto' },
        h('svg:path', { d: 'M0,0 L10,5 L0,10 z', fill: '#adb5bd' }),
      ),
    ),
  );
  for (const n of nodes.values()) {
    const g = h('svg:g', { className: n.kind, transform: `translate(${n.x},${n.y})` });
    g.append(h('svg:rect', { width: W, height: H, rx: 6 }));
    g.append(
      h(
        'svg:text',
        { x: 10, y: 18, className: 'title' },
        n.kind === 'actor' ? n.label : `${n.kind === 'stream' ? 'stream ' : ''}${n.label}`,
      ),
    );
    if (n.kind === 'actor') {
      g.setAttribute('data-actor', n.label);
      g.append(h('svg:text', { x: 10, y: 36, className: 'small', 'data-field': 'rates' }));
      g.append(h('svg:text', { x: 10, y: 52, className: 'small', 'data-field': 'depth' }));
      g.append(h('svg:text', { x: 10, y: 68, className: 'small', 'data-field': 'bp' }));
    } else if (n.kind === 'stream') {
      g.append(h('svg:text', { x: 10, y: 36, className: 'small' }, n.sub));
      const s = streams.find((x) => `stream:${x.name}` === n.id);
      g.append(
        h('svg:text', { x: 10, y: 52, className: 'small' }, `${s.messages} messages, ${s.consumers.length} consumers`),
      );
    }
    svg.append(g);
  }
  const rows = actors.map((a) =>
    h(
      'tr',
      { 'data-actor-row': a.name },
      h('td', {}, a.name),
      h('td', {}, a.paused ? 'paused' : a.state),
      h('td', { className: 'num', 'data-field': 'rateIn' }, a.rateIn),
      h('td', {}, spark(history.rateIn[a.name])),
      h('td', { className: 'num', 'data-field': 'rateOut' }, a.rateOut),
      h('td', { className: 'num' }, `${a.depth}/${a.capacity}`),
      h('td', { className: 'num' }, `${a.inFlight}/${a.maxInFlight}`),
      h('td', { className: `bp-${a.backpressure}` }, a.backpressure),
      h('td', { className: 'num' }, a.counters.acked),
      h('td', { className: 'num' }, a.counters.deadLettered),
      h('td', { className: 'num' }, a.restarts),
      h(
        'td',
        {},
        readOnly()
          ? ''
          : h(
              'button',
              {
                className: 'action',
                'data-pause': a.name,
                onclick: () =>
                  act(
                    `/api/actors/${a.paused ? 'resume' : 'pause'}`,
                    { actor: a.name },
                    (r) => `${r.actor} ${r.paused ? 'paused' : 'resumed'}`,
                  ),
              },
              a.paused ? 'Resume' : 'Pause',
            ),
      ),
    ),
  );
  const out = h(
    'div',
    {},
    svg,
    h('h2', {}, 'Actors'),
    table(
      [
        'actor',
        'state',
        'in/s',
        'in, last minutes',
        'out/s',
        'depth',
        'in flight',
        'backpressure',
        'acked',
        'dead-lettered',
        'restarts',
        '',
      ],
      rows,
      [2, 4, 5, 6, 8, 9, 10],
    ),
    h(
      'p',
      { className: 'muted' },
      'Backpressure from mailbox fill: OK up to 10%, LOW up to 50%, HIGH above (as Flink shows it).',
    ),
  );
  state.actors = actors;
  queueMicrotask(updateTopology);
  return out;
}

/** Live numbers from the feed, written into the topology without redrawing it. */
function updateTopology() {
  const t = state.tick;
  if (t === undefined) return;
  for (const a of t.actors) {
    const g = document.querySelector(`g[data-actor="${CSS.escape(a.name)}"]`);
    if (g !== null) {
      g.querySelector('[data-field="rates"]').textContent = `in ${a.rateIn}/s  out ${a.rateOut}/s`;
      g.querySelector('[data-field="depth"]').textContent = `depth ${a.depth}  in flight ${a.inFlight}`;
      g.querySelector('[data-field="bp"]').textContent = `backpressure ${a.backpressure}${a.paused ? ' (paused)' : ''}`;
      g.setAttribute('class', `actor bp-${a.backpressure}${a.paused ? ' paused' : ''}`);
    }
    const row = document.querySelector(`tr[data-actor-row="${CSS.escape(a.name)}"]`);
    if (row !== null) {
      row.querySelector('[data-field="rateIn"]').textContent = String(a.rateIn);
      row.querySelector('[data-field="rateOut"]').textContent = String(a.rateOut);
    }
  }
}

async function viewStreams() {
  const streams = await api('/api/streams');
  const retention = (r) =>
    [r.maxMessages && `${r.maxMessages} msgs`, r.maxBytes && `${r.maxBytes} B`, r.maxAgeMs && ms(r.maxAgeMs)]
      .filter(Boolean)
      .join(', ') || 'none';
  const subs = await api('/api/subscriptions');
  return h(
    'div',
    {},
    h('h2', {}, 'Streams'),
    table(
      ['stream', 'subjects', 'messages', 'first', 'last', 'bytes', 'retention', 'consumers'],
      streams.map((s) => [
        s.name,
        s.subjects.join(', '),
        s.messages,
        s.first,
        s.last,
        s.bytes ?? '-',
        retention(s.retention),
        s.consumers.map((c) => c.name).join(', ') || '-',
      ]),
      [2, 3, 4, 5],
    ),
    h('h2', {}, 'Subscriptions'),
    table(
      ['subject', 'queue group', 'depth', 'in flight'],
      subs.map((s) => [s.subject, s.queue ?? '-', s.depth, s.inFlight]),
      [2, 3],
    ),
  );
}

async function viewLag() {
  const [lag, history] = await Promise.all([api('/api/lag'), api('/api/history')]);
  const rows = lag.map((c) => {
    const seq = h('input', {
      type: 'text',
      size: 12,
      placeholder: 'seq or ISO time',
      'data-reset-input': `${c.stream}/${c.name}`,
    });
    const reset = () => {
      const v = seq.value.trim();
      if (v === '') return flash('give a sequence or a time', true);
      const body = { stream: c.stream, consumer: c.name, force: true };
      if (/^\d+$/.test(v)) body.seq = Number(v);
      else body.time = Date.parse(v);
      if (!confirm(`Move ${c.stream}/${c.name} to ${v}? What its actors hold may be handled twice.`)) return;
      void act('/api/consumers/reset', body, (r) => `${c.stream}/${c.name}: position ${r.before} -> ${r.position}`);
    };
    const replay = () => {
      if (!confirm(`Replay ${c.stream} from its first message into ${c.name}?`)) return;
      void act(
        '/api/consumers/reset',
        { stream: c.stream, consumer: c.name, seq: 0, force: true },
        (r) => `${c.stream}/${c.name}: replaying from ${r.position}`,
      );
    };
    return h(
      'tr',
      {},
      h('td', {}, c.stream),
      h('td', {}, c.name),
      h('td', { className: 'num' }, c.position),
      h('td', { className: 'num', 'data-lag': `${c.stream}/${c.name}` }, c.messages),
      h('td', {}, spark(history.lag[`${c.stream}/${c.name}`])),
      h('td', { className: 'num' }, ms(c.timeMs)),
      h('td', { className: 'num' }, c.ackPending),
      h('td', {}, c.actors.join(', ')),
      h(
        'td',
        {},
        readOnly()
          ? ''
          : h(
              'span',
              {},
              seq,
              ' ',
              h('button', { className: 'action', onclick: reset }, 'Reset'),
              ' ',
              h('button', { className: 'action', onclick: replay }, 'Replay all'),
            ),
      ),
    );
  });
  return h(
    'div',
    {},
    h('h2', {}, 'Consumer lag'),
    table(
      [
        'stream',
        'consumer',
        'position',
        'lag (messages)',
        'lag, last minutes',
        'behind (time)',
        'ack pending',
        'actors',
        '',
      ],
      rows,
      [2, 3, 5, 6],
    ),
    h('h2', {}, 'Connector sources'),
    sourcesTable(state.status.sources, history.sourceLag),
  );
}

/** Connector sources: connection state, lag now and over the last minutes, last error. */
function sourcesTable(sources, sourceLag) {
  return table(
    [
      'source',
      'kind',
      'connection',
      'since',
      'reconnects',
      'lag (messages)',
      'lag, last minutes',
      'behind (time)',
      'ack pending',
      'last error',
    ],
    sources.map((src) =>
      h(
        'tr',
        { 'data-source': src.name },
        h('td', {}, src.name),
        h('td', {}, src.kind),
        h(
          'td',
          {},
          h('span', { className: `conn conn-${src.connection}`, 'data-field': 'connection' }, src.connection),
        ),
        h('td', {}, when(src.since)),
        h('td', { className: 'num' }, src.reconnects),
        h('td', { className: 'num', 'data-field': 'lag' }, src.lag.messages),
        h('td', {}, spark(sourceLag?.[src.name])),
        h('td', { className: 'num', 'data-field': 'lagTime' }, ms(src.lag.timeMs)),
        h('td', { className: 'num' }, src.lag.ackPending),
        h(
          'td',
          { className: src.lastError ? 'error' : 'muted' },
          src.lastError ? `${when(src.lastError.time)}: ${src.lastError.message}` : '-',
        ),
      ),
    ),
    [4, 5, 7, 8],
  );
}

/** Live source numbers from the feed, written into the table without redrawing it. */
function updateSources() {
  const t = state.tick;
  if (t?.sources === undefined) return;
  for (const src of t.sources) {
    const row = document.querySelector(`tr[data-source="${CSS.escape(src.name)}"]`);
    if (row === null) continue;
    const conn = row.querySelector('[data-field="connection"]');
    conn.textContent = src.connection;
    conn.setAttribute('class', `conn conn-${src.connection}`);
    row.querySelector('[data-field="lag"]').textContent = String(src.messages);
    row.querySelector('[data-field="lagTime"]').textContent = ms(src.timeMs);
  }
}

function messageRows(messages, dead) {
  return messages.map((m) => {
    const replay =
      dead && !readOnly()
        ? h(
            'button',
            {
              className: 'action',
              'data-replay-letter': m.seq,
              onclick: () => act('/api/deadletters/replay', { ids: [m.seq] }, (r) => `replayed ${r.replayed}`),
            },
            'Replay',
          )
        : '';
    const headers = Object.entries(m.headers)
      .map(([k, v]) => `${k}: ${v}`)
      .join('\n');
    return h(
      'tr',
      { 'data-message': m.seq },
      h('td', { className: 'num' }, m.seq),
      h('td', {}, when(m.time)),
      h('td', {}, m.subject, m.key !== undefined ? h('div', { className: 'muted' }, `key ${m.key}`) : ''),
      h(
        'td',
        {},
        m.error
          ? h('span', { className: 'error' }, `corrupt: ${m.error}`)
          : h('pre', {}, typeof m.data === 'string' && m.truncated ? `${m.data}…` : JSON.stringify(m.data, null, 2)),
      ),
      h('td', {}, h('pre', { className: 'muted' }, headers)),
      h('td', {}, replay),
    );
  });
}

async function viewMessages() {
  const b = state.browse;
  const streams = await api('/api/streams');
  if (b.stream === '' && streams.length > 0) b.stream = streams[0].name;
  const field = (name, placeholder, size = 10) =>
    h('input', { name, placeholder, size, value: b[name], oninput: (e) => (b[name] = e.target.value) });
  const select = h(
    'select',
    { name: 'stream', onchange: (e) => (b.stream = e.target.value) },
    streams.map((s) => h('option', { value: s.name, selected: s.name === b.stream }, s.name)),
  );
  const form = h(
    'form',
    {
      className: 'inline',
      onsubmit: (e) => {
        e.preventDefault();
        void render();
      },
    },
    'stream ',
    select,
    field('from', 'from seq'),
    field('fromTime', 'from time (ISO)', 22),
    field('subject', 'subject filter'),
    field('contains', 'payload contains'),
    field('limit', 'limit', 4),
    h('button', { className: 'action', type: 'submit' }, 'Show'),
  );
  let page = { messages: [], next: undefined };
  if (b.stream !== '') {
    const q = new URLSearchParams({ stream: b.stream });
    for (const k of ['from', 'fromTime', 'subject', 'contains', 'limit']) if (b[k] !== '') q.set(k, b[k]);
    page = await api(`/api/messages?${q}`);
  }
  const next =
    page.next !== undefined
      ? h(
          'button',
          {
            className: 'action',
            onclick: () => {
              b.from = String(page.next);
              void render();
            },
          },
          `Next from ${page.next}`,
        )
      : '';
  const publish = readOnly() ? '' : publishForm();
  return h(
    'div',
    {},
    h('h2', {}, 'Message browser'),
    form,
    table(['seq', 'appended', 'subject', 'payload', 'headers', ''], messageRows(page.messages, false), [0]),
    h('p', {}, next, ` scanned ${page.scanned ?? 0}`),
    publish,
  );
}

function publishForm() {
  const subject = h('input', { placeholder: 'subject', size: 20, name: 'publish-subject' });
  const data = h('input', { placeholder: '{"json": "payload"}', size: 50, name: 'publish-data' });
  return h(
    'div',
    {},
    h('h2', {}, 'Publish a test message'),
    h(
      'form',
      {
        className: 'inline',
        onsubmit: (e) => {
          e.preventDefault();
          let parsed;
          try {
            parsed = JSON.parse(data.value);
          } catch (error) {
            return flash(`the payload is not JSON: ${error.message}`, true);
          }
          void act('/api/publish', { subject: subject.value, data: parsed }, () => `published to ${subject.value}`);
        },
      },
      subject,
      data,
      h('button', { className: 'action', type: 'submit' }, 'Publish'),
    ),
  );
}

async function viewWindows() {
  const [windows, actors] = await Promise.all([api('/api/windows'), api('/api/actors')]);
  const time = (t) => (t === null ? '-' : when(t));
  return h(
    'div',
    {},
    h('h2', {}, 'Watermarks per window operator'),
    table(
      ['actor', 'operator', 'kind', 'lane', 'watermark', 'open windows', 'keys', 'held inputs', 'next timer'],
      windows.map((w) =>
        h(
          'tr',
          { 'data-window': `${w.actor}/${w.operator}/${w.lane}` },
          h('td', {}, w.actor),
          h('td', {}, w.operator),
          h('td', {}, w.kind),
          h('td', { className: 'num' }, w.lane),
          h('td', { 'data-field': 'watermark' }, time(w.watermark)),
          h('td', { className: 'num', 'data-field': 'open' }, w.openWindows),
          h('td', { className: 'num' }, w.keys),
          h('td', { className: 'num' }, w.absorbed),
          h('td', {}, time(w.nextTimer)),
        ),
      ),
      [3, 5, 6, 7],
    ),
    h('h2', {}, 'Open windows per actor'),
    table(
      ['actor', 'window operators', 'open windows', 'absorbed (held by operators)', 'in flight'],
      actors.map((a) => {
        const own = windows.filter((w) => w.actor === a.name);
        return [a.name, own.length, own.reduce((n, w) => n + w.openWindows, 0), a.absorbed, a.inFlight];
      }),
      [1, 2, 3, 4],
    ),
  );
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

const positionsText = (positions) =>
  Object.entries(positions)
    .map(([k, v]) => `${k} @ ${v}`)
    .join(', ');

async function viewCheckpoints() {
  const cp = await api('/api/checkpoints');
  const recent = cp.actors
    .flatMap((a) => a.recent.map((c) => ({ ...c, actor: a.name })))
    .sort((x, y) => y.time - x.time)
    .slice(0, 100);
  return h(
    'div',
    {},
    h('h2', {}, 'Checkpoints per actor'),
    table(
      [
        'actor',
        'commits',
        'inputs',
        'mean commit',
        'written',
        'last size',
        'failures',
        'held',
        'pending writes',
        'positions',
      ],
      cp.actors.map((a) =>
        h(
          'tr',
          { 'data-checkpoint': a.name },
          h('td', {}, a.name),
          h('td', { className: 'num' }, a.commits),
          h('td', { className: 'num' }, a.inputs),
          h('td', { className: 'num' }, a.commits > 0 ? `${(a.commitMs / a.commits).toFixed(1)} ms` : '-'),
          h('td', { className: 'num', 'data-field': 'bytes' }, bytes(a.bytes)),
          h('td', { className: 'num' }, a.recent.length > 0 ? bytes(a.recent.at(-1).bytes) : '-'),
          h('td', { className: 'num' }, a.failures),
          h('td', { className: 'num' }, a.held),
          h('td', { className: 'num' }, a.pendingWrites),
          h('td', {}, positionsText(a.positions)),
        ),
      ),
    ),
    h('h2', {}, 'Size per commit'),
    h(
      'div',
      { className: 'charts' },
      cp.actors.map((a) =>
        h(
          'div',
          {},
          h('span', { className: 'muted' }, `${a.name} `),
          spark(
            a.recent.map((c) => [c.time, c.bytes]),
            240,
            32,
          ),
        ),
      ),
    ),
    h('h2', {}, 'Recent commits'),
    table(
      ['committed', 'actor', 'duration', 'size', 'inputs', 'positions committed'],
      recent.map((c) => [
        when(c.time),
        c.actor,
        `${c.durationMs} ms`,
        bytes(c.bytes),
        c.inputs,
        positionsText(c.positions),
      ]),
      [2, 3, 4],
    ),
  );
}

async function viewDeadLetters() {
  const dl = await api('/api/deadletters');
  const page = await api('/api/deadletters/messages?limit=100');
  const subjects = dl.subjects.map((s) =>
    h(
      'tr',
      { 'data-dlq-subject': s.subject },
      h('td', {}, s.subject),
      h('td', {}, s.actor ?? '-'),
      h('td', { className: 'num', 'data-field': 'received' }, s.received),
      h('td', { className: 'num', 'data-field': 'kept' }, s.kept),
      h('td', { className: 'num', 'data-field': 'replayed' }, s.replayed),
      h('td', { className: 'num', 'data-field': 'failedAgain' }, s.failedAgain),
      h('td', { className: 'num' }, s.purged),
      h(
        'td',
        {},
        h(
          'pre',
          {},
          Object.entries(s.reasons)
            .map(([r, n]) => `${n}x ${r}`)
            .join('\n'),
        ),
      ),
      h(
        'td',
        {},
        readOnly() || s.kept === 0
          ? ''
          : h(
              'span',
              {},
              h(
                'button',
                {
                  className: 'action',
                  'data-replay-subject': s.subject,
                  onclick: () =>
                    act(
                      '/api/deadletters/replay',
                      { subject: s.subject },
                      (r) => `replayed ${r.replayed} of ${r.total}`,
                    ),
                },
                'Replay all',
              ),
              ' ',
              h(
                'button',
                {
                  className: 'action danger',
                  'data-purge-subject': s.subject,
                  onclick: () =>
                    confirm(`Drop the ${s.kept} dead letters kept for ${s.subject}?`) &&
                    act('/api/deadletters/purge', { subject: s.subject }, (r) => `purged ${r.purged}`),
                },
                'Purge',
              ),
            ),
      ),
    ),
  );
  return h(
    'div',
    {},
    h('h2', {}, 'Dead letters per subject'),
    table(
      ['subject', 'actor', 'received', 'kept', 'replayed', 'failed again', 'purged', 'reasons', ''],
      subjects,
      [2, 3, 4, 5, 6],
    ),
    h(
      'p',
      { className: 'muted' },
      'Kept in memory by the admin API since it started (the oldest go past its bound). A replayed letter that fails again comes back here and counts as "failed again".',
    ),
    h('h2', {}, 'Kept letters'),
    table(['#', 'received', 'subject', 'payload', 'headers', ''], messageRows(page.messages, true), [0]),
  );
}

async function viewState() {
  const actors = (await api('/api/actors')).filter((a) => a.checkpoint !== undefined);
  const b =
    state.inspect ?? (state.inspect = { actor: actors[0]?.name ?? '', key: '', result: undefined, keys: undefined });
  const select = h(
    'select',
    {
      id: 'state-actor',
      onchange: (e) => {
        b.actor = e.target.value;
        b.keys = undefined;
        void render();
      },
    },
    actors.map((a) => h('option', { value: a.name, selected: a.name === b.actor }, a.name)),
  );
  const key = h('input', {
    id: 'state-key',
    placeholder: 'key',
    size: 30,
    value: b.key,
    oninput: (e) => (b.key = e.target.value),
  });
  const get = async (e) => {
    e?.preventDefault();
    try {
      b.result = await api(`/api/state?${new URLSearchParams({ actor: b.actor, key: b.key })}`);
    } catch (error) {
      b.result = { error: error.message };
    }
    void render();
  };
  if (b.actor !== '' && b.keys === undefined)
    b.keys = (await api(`/api/state/keys?${new URLSearchParams({ actor: b.actor, limit: '50' })}`)).keys;
  const result =
    b.result === undefined
      ? ''
      : b.result.error
        ? h('p', { className: 'error', id: 'state-result' }, b.result.error)
        : h(
            'div',
            { id: 'state-result' },
            h(
              'p',
              {},
              `${b.result.actor} / ${b.result.key}: `,
              b.result.found ? '' : h('span', { className: 'muted' }, '(no value)'),
            ),
            b.result.found ? h('pre', { 'data-state-value': '' }, JSON.stringify(b.result.data, null, 2)) : '',
          );
  return h(
    'div',
    {},
    h('h2', {}, 'State inspector'),
    actors.length === 0
      ? h('p', { className: 'muted' }, 'No actor keeps keyed state (an actor needs a checkpoint for ctx.state).')
      : '',
    h(
      'form',
      { className: 'inline', onsubmit: get },
      'actor ',
      select,
      ' key ',
      key,
      h('button', { className: 'action', type: 'submit', id: 'state-get' }, 'Get'),
    ),
    result,
    h('h2', {}, 'Committed keys'),
    h(
      'p',
      {},
      (b.keys ?? []).length === 0
        ? h('span', { className: 'muted' }, '(none committed yet)')
        : (b.keys ?? [])
            .map((k) =>
              h(
                'button',
                {
                  className: 'action',
                  'data-state-key': k,
                  onclick: () => {
                    b.key = k;
                    void get();
                  },
                },
                k,
              ),
            )
            .flatMap((x) => [x, ' ']),
    ),
  );
}

async function viewTimeline() {
  const [timeline, actors, history] = await Promise.all([
    api('/api/timeline'),
    api('/api/actors'),
    api('/api/history'),
  ]);
  return h(
    'div',
    {},
    h('h2', {}, 'Restarts and failures per actor'),
    table(
      ['actor', 'state', 'restarts (window)', 'restarts (total)', 'retried', 'dead-lettered', 'teardown errors'],
      actors.map((a) => [
        a.name,
        a.paused ? 'paused' : a.state,
        a.restarts,
        a.counters.restarts,
        a.counters.retried,
        a.counters.deadLettered,
        a.counters.teardownErrors,
      ]),
      [2, 3, 4, 5, 6],
    ),
    h('h2', {}, 'Timeline'),
    table(
      ['time', 'actor', 'what', 'detail'],
      timeline
        .slice(-200)
        .reverse()
        .map((e) => [when(e.time), e.actor, e.kind, e.detail]),
    ),
    h('h2', {}, 'Connector health'),
    sourcesTable(state.status.sources, history.sourceLag),
  );
}

async function viewAudit() {
  const audit = await api('/api/audit?limit=200');
  return h(
    'div',
    {},
    h('h2', {}, 'Audit log'),
    table(
      ['time', 'action', 'caller', 'from', 'target', 'outcome', 'detail'],
      audit.reverse().map((e) => [when(e.time), e.action, e.caller, e.remote, e.target, e.outcome, e.detail]),
    ),
  );
}

// ---- start ----

function select(view) {
  state.view = view;
  for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('active', b.dataset.view === view);
  void render();
}

function start() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has('token')) {
    state.token = hash.get('token');
    sessionStorage.setItem('sluice-token', state.token);
    // Out of the address bar and the history: a token must not end up in a screenshot or a shared link.
    history.replaceState(null, '', location.pathname);
  }
  for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => select(b.dataset.view));
  document.getElementById('login').addEventListener('submit', (e) => {
    e.preventDefault();
    state.token = document.getElementById('token').value.trim();
    sessionStorage.setItem('sluice-token', state.token);
    document.getElementById('login').hidden = true;
    void render();
    void feed();
  });
  void render();
  void feed();
  state.timer = setInterval(() => {
    if (refreshing.has(state.view) || state.view === 'topology') {
      // The topology's numbers come from the feed; the rest of it (and its sparklines) every 5 s.
      if (state.view !== 'topology' || Date.now() - (state.lastFull ?? 0) > 5000) {
        state.lastFull = Date.now();
        void render();
      }
    }
  }, 2000);
}

start();
