/**
 * `sluice`: the command line of a running job's admin API (`runtime.serve`). Only Node built-ins:
 * it talks HTTP, so it runs without the runtime loaded. See docs/operations.md.
 */
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

export const DEFAULT_URL = 'http://127.0.0.1:7420';

export const USAGE = `usage: sluice <command> [options]

Talks to a running job's admin API (runtime.serve).

commands:
  status                               the runtime at a glance
  actors                               actors: state, depth, in flight, rates, backpressure
  streams                              streams: messages, bytes, retention, consumers
  lag                                  lag of stream consumers and connector sources; sources' connection
  windows                              window operators per actor: watermark, open windows, next timer
  checkpoints                          checkpoints per actor: commits, bytes, duration, positions (--limit N recent)
  peek <stream>                        messages of a stream (--from, --from-time, --subject, --contains, --limit)
  tail <subject>                       follows new messages on a subject a stream captures, or a dead-letter subject
  dlq list                             dead letters per subject, with reasons
  dlq peek [subject]                   dead letters kept by the API (--limit, --after)
  dlq replay [subject]                 replays dead letters to their subjects (--id N..., --reason TEXT, --all, --limit N)
                                         --stream NAME: from a stream that keeps them (--from-seq N; --id is a sequence)
  dlq purge <subject> | --all          drops dead letters kept by the API
  consumer reset <stream> <consumer>   moves a durable consumer (--seq N or --time T; --force);
                                       --follow draws its re-read until it caught up
  state get <actor> <key>              an actor's keyed state
  actor pause|resume <actor>           stops or restarts taking from its mailbox
  publish <subject> <json>             publishes a test message

options:
  --url URL        admin API (env SLUICE_URL; default ${DEFAULT_URL})
  --token TOKEN    bearer token (env SLUICE_TOKEN)
  --json           JSON output, for scripts
  --count N        tail: stop after N messages
  -h, --help       this help

exit codes: 0 ok, 1 failed, 2 usage, 3 unreachable, 4 refused (token)`;

/** Where the command writes, and what it reads from its environment. */
export interface Io {
  out(text: string): void;
  err(text: string): void;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Whether progress bars are drawn (stderr is a terminal). */
  readonly progress: boolean;
}

class CliError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number) {
    super(message);
    this.exitCode = exitCode;
  }
}

const options = {
  url: { type: 'string' },
  token: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  limit: { type: 'string' },
  from: { type: 'string' },
  'from-time': { type: 'string' },
  after: { type: 'string' },
  subject: { type: 'string' },
  contains: { type: 'string' },
  id: { type: 'string', multiple: true },
  reason: { type: 'string' },
  all: { type: 'boolean' },
  to: { type: 'string' },
  seq: { type: 'string' },
  time: { type: 'string' },
  force: { type: 'boolean' },
  follow: { type: 'boolean' },
  count: { type: 'string' },
  interval: { type: 'string' },
  stream: { type: 'string' },
  'from-seq': { type: 'string' },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof options; allowPositionals: true }>>['values'];

/** Runs one command; resolves with its exit code. */
export async function main(argv: readonly string[], io: Io = processIo()): Promise<number> {
  let values: Values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: [...argv], options, allowPositionals: true, strict: true }));
  } catch (error) {
    io.err(`sluice: ${(error as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  if (values.help === true || positionals.length === 0) {
    (values.help === true ? io.out : io.err)(`${USAGE}\n`);
    return values.help === true ? 0 : 2;
  }
  try {
    const api = new Api(values.url ?? io.env.SLUICE_URL ?? DEFAULT_URL, values.token ?? io.env.SLUICE_TOKEN);
    await run(api, positionals, values, io);
    return 0;
  } catch (error) {
    if (error instanceof CliError) {
      io.err(`sluice: ${printable(error.message)}\n`);
      return error.exitCode;
    }
    io.err(`sluice: ${printable((error as Error).message)}\n`);
    return 1;
  }
}

async function run(api: Api, args: string[], v: Values, io: Io): Promise<void> {
  const [command, sub, ...rest] = args;
  const json = v.json === true;
  const print = (data: unknown, table: () => string) =>
    io.out(json ? printable(`${JSON.stringify(data, null, 2)}\n`, true) : printable(table()));
  switch (command) {
    case 'status': {
      const s = await api.get<Status>('/api/status');
      return print(s, () => statusText(s));
    }
    case 'actors': {
      const rows = await api.get<ActorRow[]>('/api/actors');
      return print(rows, () =>
        table(
          ['ACTOR', 'STATE', 'DEPTH', 'IN FLIGHT', 'IN/S', 'OUT/S', 'BACKPRESSURE', 'ACKED', 'DEAD', 'RESTARTS'],
          rows.map((a) => [
            a.name,
            a.paused ? 'paused' : a.state,
            `${a.depth}/${a.capacity}`,
            `${a.inFlight}/${a.maxInFlight}`,
            a.rateIn,
            a.rateOut,
            a.backpressure,
            a.counters.acked,
            a.counters.deadLettered,
            a.restarts,
          ]),
        ),
      );
    }
    case 'streams': {
      const rows = await api.get<StreamRow[]>('/api/streams');
      return print(rows, () =>
        table(
          ['STREAM', 'SUBJECTS', 'MESSAGES', 'FIRST', 'LAST', 'BYTES', 'RETENTION', 'CONSUMERS'],
          rows.map((s) => [
            s.name,
            s.subjects.join(','),
            s.messages,
            s.first,
            s.last,
            s.bytes ?? '-',
            retentionText(s.retention),
            s.consumers.map((c) => c.name).join(',') || '-',
          ]),
        ),
      );
    }
    case 'lag': {
      const [consumers, sources] = await Promise.all([
        api.get<LagRow[]>('/api/lag'),
        api.get<SourceRow[]>('/api/sources'),
      ]);
      return print({ consumers, sources }, () => {
        const streams = table(
          ['STREAM', 'CONSUMER', 'POSITION', 'LAG', 'LAG TIME', 'ACK PENDING', 'ACKED', 'DEAD', 'ACTORS'],
          consumers.map((c) => [
            c.stream,
            c.name,
            c.position,
            c.messages,
            duration(c.timeMs),
            c.ackPending,
            c.acked,
            c.deadLettered,
            c.actors.join(',') || '-',
          ]),
        );
        if (sources.length === 0) return streams;
        return `${streams}\n${sourcesText(sources)}`;
      });
    }
    case 'windows': {
      const rows = await api.get<WindowRow[]>('/api/windows');
      return print(rows, () =>
        table(
          ['ACTOR', 'OPERATOR', 'KIND', 'LANE', 'WATERMARK', 'OPEN WINDOWS', 'KEYS', 'HELD INPUTS', 'NEXT TIMER'],
          rows.map((w) => [
            w.actor,
            w.operator,
            w.kind,
            w.lane,
            w.watermark === null ? '-' : new Date(w.watermark).toISOString(),
            w.openWindows,
            w.keys,
            w.absorbed,
            w.nextTimer === null ? '-' : new Date(w.nextTimer).toISOString(),
          ]),
        ),
      );
    }
    case 'checkpoints': {
      const r = await api.get<{ actors: CheckpointRow[] }>('/api/checkpoints');
      const recent = v.limit === undefined ? 5 : int('--limit', v.limit);
      return print(
        r,
        () =>
          r.actors
            .map(
              (a) =>
                `${a.name}: ${a.commits} commits, ${bytes(a.bytes)}, ${a.failures} failed, ${a.held} inputs held\n` +
                table(
                  ['COMMITTED', 'DURATION', 'BYTES', 'INPUTS', 'POSITIONS'],
                  a.recent.slice(-recent).map((c) => [
                    new Date(c.time).toISOString(),
                    `${c.durationMs} ms`,
                    c.bytes,
                    c.inputs,
                    Object.entries(c.positions)
                      .map(([k, p]) => `${k}@${p}`)
                      .join(' ') || '-',
                  ]),
                ),
            )
            .join('\n') || '(no actor has a checkpoint)\n',
      );
    }
    case 'peek': {
      if (sub === undefined) throw usage('peek needs a stream name: sluice peek <stream>');
      const page = await api.get<MessagePage>(
        `/api/messages?${query({ stream: sub, from: v.from, fromTime: v['from-time'], subject: v.subject, contains: v.contains, limit: v.limit })}`,
      );
      return print(
        page,
        () => messagesText(page.messages) + (page.next !== undefined ? `next: --from ${page.next}\n` : ''),
      );
    }
    case 'tail':
      if (sub === undefined) throw usage('tail needs a subject: sluice tail <subject>');
      return tail(api, sub, v, io);
    case 'dlq':
      return dlq(api, sub, rest, v, io, print);
    case 'consumer': {
      const [stream, consumer] = rest;
      if (sub !== 'reset' || stream === undefined || consumer === undefined) {
        throw usage('usage: sluice consumer reset <stream> <consumer> --seq N | --time T [--force]');
      }
      if ((v.seq === undefined) === (v.time === undefined))
        throw usage('consumer reset needs --seq N or --time T (epoch ms or ISO date)');
      const body: Record<string, unknown> = { stream, consumer, force: v.force === true };
      if (v.seq !== undefined) body.seq = int('--seq', v.seq);
      else body.time = time('--time', v.time as string);
      // Read before the reset: the consumer may re-read some before the first poll after it.
      const ackedBefore = v.follow === true ? (await lagOf(api, stream, consumer)).acked : 0;
      const r = await api.post<{ before: number; position: number }>('/api/consumers/reset', body);
      if (v.follow !== true)
        return print(r, () => `consumer ${stream}/${consumer}: position ${r.before} -> ${r.position}\n`);
      const interval = v.interval === undefined ? 200 : int('--interval', v.interval);
      const bar = io.progress && v.json !== true ? new ProgressBar(io, 're-read') : undefined;
      const reread = await followReread(api, stream, consumer, ackedBefore, interval, (done, total) =>
        bar?.update(done, total),
      );
      bar?.end();
      return print(
        { ...r, reread },
        () =>
          `consumer ${stream}/${consumer}: position ${r.before} -> ${r.position}; re-read ${reread} messages, caught up\n`,
      );
    }
    case 'state': {
      const [actor, key] = rest;
      if (sub !== 'get' || actor === undefined || key === undefined)
        throw usage('usage: sluice state get <actor> <key>');
      const r = await api.get<{ found: boolean; data: unknown }>(`/api/state?${query({ actor, key })}`);
      return print(r, () => (r.found ? `${JSON.stringify(r.data, null, 2)}\n` : `(no value for key '${key}')\n`));
    }
    case 'actor': {
      const [name] = rest;
      if ((sub !== 'pause' && sub !== 'resume') || name === undefined)
        throw usage('usage: sluice actor pause|resume <actor>');
      const r = await api.post<{ actor: string; paused: boolean }>(`/api/actors/${sub}`, { actor: name });
      return print(r, () => `actor ${r.actor}: ${r.paused ? 'paused' : 'running'}\n`);
    }
    case 'publish': {
      const [data] = rest;
      if (sub === undefined || data === undefined) throw usage('usage: sluice publish <subject> <json>');
      let parsed: unknown;
      try {
        parsed = JSON.parse(data);
      } catch (error) {
        throw usage(`publish: the message is not JSON: ${(error as Error).message}`);
      }
      const r = await api.post('/api/publish', { subject: sub, data: parsed });
      return print(r, () => `published to ${sub}\n`);
    }
    default:
      throw usage(`unknown command '${command}'`);
  }
}

async function dlq(
  api: Api,
  sub: string | undefined,
  rest: string[],
  v: Values,
  io: Io,
  print: (data: unknown, table: () => string) => void,
): Promise<void> {
  const subject = rest[0];
  switch (sub) {
    case 'list': {
      const r = await api.get<{ kept: number; subjects: DeadLetterRow[] }>('/api/deadletters');
      return print(r, () => {
        const rows = table(
          ['SUBJECT', 'ACTOR', 'RECEIVED', 'KEPT', 'REPLAYED', 'FAILED AGAIN', 'PURGED', 'TOP REASON'],
          r.subjects.map((s) => {
            const top = Object.entries(s.reasons).sort((a, b) => b[1] - a[1])[0];
            return [
              s.subject,
              s.actor ?? '-',
              s.received,
              s.kept,
              s.replayed,
              s.failedAgain,
              s.purged,
              top === undefined ? '-' : `${top[1]}x ${top[0]}`,
            ];
          }),
        );
        return rows;
      });
    }
    case 'peek': {
      const page = await api.get<{ messages: Message[]; next: number | undefined }>(
        `/api/deadletters/messages?${query({ subject, limit: v.limit, after: v.after, contains: v.contains })}`,
      );
      return print(
        page,
        () => messagesText(page.messages, true) + (page.next !== undefined ? `next: --after ${page.next}\n` : ''),
      );
    }
    case 'replay': {
      const body: Record<string, unknown> = {};
      if (subject !== undefined) body.subject = subject;
      if (v.id !== undefined) body.ids = v.id.map((id) => int('--id', id));
      if (v.reason !== undefined) body.reason = v.reason;
      if (v.all === true) body.all = true;
      if (v.limit !== undefined) body.limit = int('--limit', v.limit);
      if (v.to !== undefined) body.to = v.to;
      if (v['from-seq'] !== undefined) body.fromSeq = int('--from-seq', v['from-seq']);
      const selected = Object.keys(body).filter((k) => k !== 'limit' && k !== 'to').length > 0;
      if (!selected) throw usage('dlq replay needs a subject, --id, --reason, --from-seq or --all');
      if (v.stream !== undefined) body.stream = v.stream;
      const bar = io.progress && !(v.json === true) ? new ProgressBar(io) : undefined;
      const r = await api.replay(body, (done, total) => bar?.update(done, total));
      bar?.end();
      return print(
        r,
        () =>
          `replayed ${r.replayed} of ${r.total} dead letters${r.next !== undefined ? ` (next --from-seq ${r.next})` : ''}${r.failed.length > 0 ? `; failed:\n${r.failed.map((f) => `  #${f.n}: ${f.error}`).join('\n')}` : ''}\n`,
      );
    }
    case 'purge': {
      if (subject === undefined && v.all !== true) throw usage('dlq purge needs a subject or --all');
      const r = await api.post<{ purged: number }>(
        '/api/deadletters/purge',
        subject === undefined ? { all: true } : { subject },
      );
      return print(r, () => `purged ${r.purged} dead letters\n`);
    }
    default:
      throw usage('usage: sluice dlq list|peek|replay|purge');
  }
}

/** Follows a subject: new messages of the stream that captures it, or new dead letters. */
async function tail(api: Api, subject: string, v: Values, io: Io): Promise<void> {
  const count = v.count === undefined ? Number.POSITIVE_INFINITY : int('--count', v.count);
  const interval = v.interval === undefined ? 500 : int('--interval', v.interval);
  const json = v.json === true;
  let seen = 0;
  const show = (messages: Message[], dead: boolean) => {
    for (const m of messages) {
      if (seen >= count) return;
      seen++;
      io.out(json ? printable(`${JSON.stringify(m)}\n`, true) : printable(messagesText([m], dead)));
    }
  };
  if (subject.startsWith('$DLQ.') || subject.startsWith('$DEAD.')) {
    let after = 0;
    // The letters kept now are history: tail shows what comes next, as `tail -f` does.
    // A page may end before its limit (it reads a bounded number of letters): `next` says whether
    // there is more, and where it starts.
    for (;;) {
      const page = await api.get<{ messages: Message[]; next?: number }>(
        `/api/deadletters/messages?${query({ subject, after, limit: 500 })}`,
      );
      after = page.next ?? page.messages.at(-1)?.seq ?? after;
      if (page.next === undefined) break;
    }
    while (seen < count) {
      const page = await api.get<{ messages: Message[]; next?: number }>(
        `/api/deadletters/messages?${query({ subject, after, limit: 500 })}`,
      );
      show(page.messages, true);
      after = page.next ?? page.messages.at(-1)?.seq ?? after;
      if (page.next === undefined && page.messages.length === 0) await sleep(interval);
    }
    return;
  }
  const streams = await api.get<StreamRow[]>('/api/streams');
  const stream = streams.find((s) => s.subjects.some((p) => overlaps(p, subject)));
  if (stream === undefined) {
    throw new CliError(
      `no stream captures '${subject}' (streams: ${streams.map((s) => `${s.name} on ${s.subjects.join(',')}`).join('; ') || 'none'}); tail follows stored subjects and dead letters`,
      1,
    );
  }
  let from = stream.last + 1;
  while (seen < count) {
    const page = await api.get<MessagePage>(
      `/api/messages?${query({ stream: stream.name, from, subject, limit: 500 })}`,
    );
    show(page.messages, false);
    if (page.next !== undefined) from = page.next;
    else {
      from = Math.max(from, page.last + 1);
      await sleep(interval);
    }
  }
}

// ---- HTTP ----

class Api {
  readonly #base: string;
  readonly #token: string | undefined;
  constructor(base: string, token: string | undefined) {
    let url: URL;
    try {
      url = new URL(base);
    } catch {
      throw new CliError(`--url '${base}' is not a URL (like ${DEFAULT_URL})`, 2);
    }
    // The dashboard's link carries the token (`#token=`): given as --url, the token would be printed
    // in every error that names the URL, and the API's paths would go after the fragment.
    if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
      throw new CliError(
        `--url must be the address of the admin API alone (like ${DEFAULT_URL}), without a user, password, query or fragment: give ${url.protocol}//${url.host}${url.pathname.replace(/\/$/, '')} and the token with --token or SLUICE_TOKEN`,
        2,
      );
    }
    this.#base = url.href.replace(/\/$/, '');
    this.#token = token === '' ? undefined : token;
  }

  async #fetch(path: string, init: RequestInit = {}): Promise<Response> {
    const headers: Record<string, string> = { ...(init.headers as Record<string, string> | undefined) };
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    let res: Response;
    // The time limit covers reaching the job and its answer starting, not reading the answer: a
    // replay streams its progress for as long as it runs, and gave up after 30 s while the job
    // went on replaying.
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(new Error('no answer within 30 s')), 30_000);
    try {
      res = await fetch(`${this.#base}${path}`, { ...init, headers, signal: abort.signal });
    } catch (error) {
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      throw new CliError(
        `cannot reach the admin API at ${this.#base}: ${cause?.code ?? cause?.message ?? (error as Error).message} (is the job serving it? check --url or SLUICE_URL)`,
        3,
      );
    } finally {
      clearTimeout(timer);
    }
    if (res.ok) return res;
    const text = await res.text();
    let message = text;
    try {
      message = (JSON.parse(text) as { error: { message: string } }).error.message;
    } catch {
      // not JSON: the text as it is
    }
    if (res.status === 401) {
      throw new CliError(
        `${this.#token === undefined ? 'a token is required' : 'the token was refused'} by ${this.#base} (${message}); set --token or SLUICE_TOKEN`,
        4,
      );
    }
    if (res.status === 403) throw new CliError(`refused by ${this.#base}: ${message}`, 4);
    throw new CliError(`${res.status}: ${message}`, 1);
  }

  async get<T>(path: string): Promise<T> {
    return (await (await this.#fetch(path)).json()) as T;
  }

  async post<T>(path: string, body: unknown): Promise<T> {
    const res = await this.#fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return (await res.json()) as T;
  }

  /** A replay, reading its progress lines as they come. */
  async replay(body: unknown, progress: (done: number, total: number) => void): Promise<ReplayResult> {
    const res = await this.#fetch('/api/deadletters/replay', {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/x-ndjson' },
      body: JSON.stringify(body),
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let buffered = '';
    let last: Record<string, unknown> | undefined;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let nl = buffered.indexOf('\n');
      while (nl >= 0) {
        const line = JSON.parse(buffered.slice(0, nl)) as Record<string, unknown>;
        buffered = buffered.slice(nl + 1);
        if (typeof line.progress === 'number') progress(line.progress, line.total as number);
        else last = line;
        nl = buffered.indexOf('\n');
      }
    }
    if (buffered.trim() !== '') last = JSON.parse(buffered) as Record<string, unknown>;
    if (last === undefined) throw new CliError('the replay ended without a result', 1);
    if (last.error !== undefined) throw new CliError((last.error as { message: string }).message, 1);
    return last as unknown as ReplayResult;
  }
}

// ---- output ----

class ProgressBar {
  readonly #io: Io;
  readonly #verb: string;
  #drawn = false;
  constructor(io: Io, verb = 'replayed') {
    this.#io = io;
    this.#verb = verb;
  }
  update(done: number, total: number): void {
    const width = 30;
    const filled = total === 0 ? width : Math.round((done / total) * width);
    this.#io.err(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${this.#verb}`);
    this.#drawn = true;
  }
  end(): void {
    if (this.#drawn) this.#io.err('\n');
  }
}

/** Columns padded to their widest cell; numbers aligned right. */
export function table(head: string[], rows: (string | number)[][]): string {
  if (rows.length === 0) return `${head.join('  ')}\n(none)\n`;
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i] ?? '').length)));
  const line = (cells: (string | number)[]) =>
    cells
      .map((c, i) =>
        typeof c === 'number' ? String(c).padStart(widths[i] as number) : String(c).padEnd(widths[i] as number),
      )
      .join('  ')
      .trimEnd();
  return `${[line(head), ...rows.map(line)].join('\n')}\n`;
}

function statusText(s: Status): string {
  return [
    `sluice${s.stopped ? ' (stopping)' : ''}${s.readOnly ? ' (read-only API)' : ''}, up ${duration(s.uptimeMs)}`,
    `actors: ${s.actors.total} (${s.actors.running} running, ${s.actors.paused} paused, ${s.actors.restarting} restarting, ${s.actors.stopped} stopped)`,
    `streams: ${s.streams}, subscriptions: ${s.subscriptions}`,
    `messages: ${s.totals.published} published, ${s.totals.delivered} delivered, ${s.totals.acked} acked, ${s.totals.deadLettered} dead-lettered, ${s.totals.restarts} restarts`,
    `dead letters kept: ${s.deadLetters.kept} (${s.deadLetters.received} received)`,
    `consumers: ${s.consumers.length}, ${s.consumers.reduce((n, c) => n + c.messages, 0)} messages behind`,
    `windows: ${s.windows.reduce((n, a) => n + a.windows.reduce((m, w) => m + w.openWindows, 0), 0)} open in ${s.windows.length} actor(s)`,
    `sources: ${s.sources.length}${s.sources.length === 0 ? '' : ` (${countBy(s.sources.map((x) => x.connection))})`}`,
    ...s.sources.map(
      (x) =>
        `  ${x.name}: ${x.connection}, ${x.lag.messages} behind (${duration(x.lag.timeMs)})${x.lastError === undefined ? '' : `, last error: ${x.lastError.message}`}`,
    ),
    '',
  ].join('\n');
}

function sourcesText(sources: SourceRow[]): string {
  return table(
    ['SOURCE', 'KIND', 'CONNECTION', 'SINCE', 'RECONNECTS', 'LAG', 'LAG TIME', 'ACK PENDING', 'LAST ERROR'],
    sources.map((x) => [
      x.name,
      x.kind,
      x.connection,
      new Date(x.since).toISOString(),
      x.reconnects,
      x.lag.messages,
      duration(x.lag.timeMs),
      x.lag.ackPending,
      x.lastError === undefined ? '-' : x.lastError.message.slice(0, 80),
    ]),
  );
}

/** `3 connected, 1 reconnecting`. */
function countBy(values: string[]): string {
  const counts = new Map<string, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].map(([k, n]) => `${n} ${k}`).join(', ');
}

/**
 * Text from the job (subjects, keys, message data, error reasons) as a terminal shows it: control
 * characters other than line breaks and tabs written as `\xHH` (`\u00HH` in JSON, which stays
 * JSON). Subjects may hold ESC, and a message's text is anyone's: printed raw, it could move the
 * cursor, rewrite earlier lines or set the window title (JSON escapes C0 but not C1, such as the
 * one-byte CSI U+009B).
 */
function printable(text: string, json = false): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it finds
  return text.replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (c) => {
    const hex = c.charCodeAt(0).toString(16).padStart(2, '0');
    return json ? `\\u00${hex}` : `\\x${hex}`;
  });
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function messagesText(messages: Message[], dead = false): string {
  if (messages.length === 0) return '(no messages)\n';
  return messages
    .map((m) => {
      const when = m.time > 0 ? new Date(m.time).toISOString() : '';
      const head = `${dead ? '#' : 'seq '}${m.seq}  ${when}  ${m.subject}${m.key !== undefined ? `  key=${m.key}` : ''}`;
      if (m.error !== undefined) return `${head}\n  corrupt: ${m.error}\n`;
      const reason = m.headers['sluice-error'];
      const data = typeof m.data === 'string' && m.truncated ? `${m.data}...` : JSON.stringify(m.data);
      return `${head}\n${reason !== undefined ? `  error: ${reason}\n` : ''}  ${data}\n`;
    })
    .join('');
}

function retentionText(r: StreamRow['retention']): string {
  const parts: string[] = [];
  if (r.maxMessages !== undefined) parts.push(`${r.maxMessages} msgs`);
  if (r.maxBytes !== undefined) parts.push(`${r.maxBytes} B`);
  if (r.maxAgeMs !== undefined) parts.push(duration(r.maxAgeMs));
  return parts.join(', ') || 'none';
}

function duration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ${Math.floor((ms % 60_000) / 1000)} s`;
  return `${Math.floor(ms / 3_600_000)} h ${Math.floor((ms % 3_600_000) / 60_000)} min`;
}

// ---- helpers ----

function usage(message: string): CliError {
  return new CliError(message, 2);
}

function int(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw usage(`${name} must be an integer >= 0, got '${v}'`);
  return n;
}

function time(name: string, v: string): number {
  const n = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(n)) throw usage(`${name} must be epoch ms or an ISO 8601 date, got '${v}'`);
  return n;
}

function query(params: Record<string, string | number | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, String(v));
  return q.toString();
}

/** Whether a stream pattern captures a subject a tail names (which may hold wildcards too). */
function overlaps(pattern: string, subject: string): boolean {
  const a = pattern.split('.');
  const b = subject.split('.');
  for (let i = 0; ; i++) {
    const x = a[i];
    const y = b[i];
    if (x === '>' || y === '>') return x !== undefined && y !== undefined;
    if (x === undefined || y === undefined) return x === y;
    if (x !== '*' && y !== '*' && x !== y) return false;
  }
}

async function lagOf(api: Api, stream: string, consumer: string): Promise<LagRow> {
  const row = (await api.get<LagRow[]>('/api/lag')).find((c) => c.stream === stream && c.name === consumer);
  if (row === undefined) throw new CliError(`no consumer ${stream}/${consumer} (see sluice lag)`, 1);
  return row;
}

/**
 * Follows a consumer's re-read after a reset, by its lag: what it acknowledged since is done, and
 * what is behind or unacknowledged is left (the total grows when messages keep arriving). Resolves
 * with the messages acknowledged once nothing is behind and nothing waits for an ack.
 */
async function followReread(
  api: Api,
  stream: string,
  consumer: string,
  ackedBefore: number,
  intervalMs: number,
  progress: (done: number, total: number) => void,
): Promise<number> {
  for (;;) {
    const row = await lagOf(api, stream, consumer);
    const done = row.acked - ackedBefore;
    progress(done, done + row.messages + row.ackPending);
    if (row.messages === 0 && row.ackPending === 0) return done;
    await sleep(intervalMs);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function processIo(): Io {
  return {
    out: (text) => void process.stdout.write(text),
    err: (text) => void process.stderr.write(text),
    env: process.env,
    progress: process.stderr.isTTY === true,
  };
}

// ---- shapes of the API's answers ----

interface Status {
  uptimeMs: number;
  stopped: boolean;
  readOnly: boolean;
  actors: { total: number; running: number; paused: number; restarting: number; stopped: number };
  streams: number;
  subscriptions: number;
  totals: { published: number; delivered: number; acked: number; deadLettered: number; restarts: number };
  deadLetters: { kept: number; received: number };
  consumers: { messages: number }[];
  sources: SourceRow[];
  windows: { actor: string; windows: { openWindows: number }[] }[];
}
interface SourceRow {
  name: string;
  kind: string;
  connection: string;
  since: number;
  reconnects: number;
  lastError: { message: string; time: number } | undefined;
  lag: { messages: number; timeMs: number; ackPending: number };
}
interface WindowRow {
  actor: string;
  operator: string;
  kind: string;
  lane: number;
  watermark: number | null;
  openWindows: number;
  keys: number;
  absorbed: number;
  nextTimer: number | null;
}
interface CheckpointRow {
  name: string;
  commits: number;
  bytes: number;
  failures: number;
  held: number;
  recent: { time: number; durationMs: number; bytes: number; inputs: number; positions: Record<string, number> }[];
}
interface ActorRow {
  name: string;
  state: string;
  paused: boolean;
  depth: number;
  capacity: number;
  inFlight: number;
  maxInFlight: number;
  rateIn: number;
  rateOut: number;
  backpressure: string;
  restarts: number;
  counters: { acked: number; deadLettered: number };
}
interface StreamRow {
  name: string;
  subjects: string[];
  first: number;
  last: number;
  messages: number;
  bytes: number | null;
  retention: { maxAgeMs?: number; maxBytes?: number; maxMessages?: number };
  consumers: { name: string }[];
}
interface LagRow {
  stream: string;
  name: string;
  position: number;
  messages: number;
  timeMs: number;
  ackPending: number;
  acked: number;
  deadLettered: number;
  actors: string[];
}
interface Message {
  seq: number;
  subject: string;
  key?: string;
  time: number;
  headers: Record<string, string>;
  data: unknown;
  truncated: boolean;
  error?: string;
}
interface MessagePage {
  messages: Message[];
  next: number | undefined;
  last: number;
}
interface DeadLetterRow {
  subject: string;
  actor?: string;
  received: number;
  kept: number;
  replayed: number;
  failedAgain: number;
  purged: number;
  reasons: Record<string, number>;
}
interface ReplayResult {
  replayed: number;
  total: number;
  /** Replays from a stream: the sequence to go on from. */
  next?: number;
  failed: { n: number; error: string }[];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  process.exitCode = await main(process.argv.slice(2));
}
