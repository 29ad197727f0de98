/**
 * Clickstream analytics on a durable subject: windowed aggregation on event time, with disorder
 * and late events, that survives a crash.
 *
 *   clicks (stream CLICKS, on disk)
 *     ─┬─► page-views  tumbling 1 min, count per page        ─► analytics.page-views
 *      ├─► sessions    session gap 30 s per user             ─► analytics.sessions ─► session-stats
 *      │                                                            tumbling 1 min  ─► analytics.session-stats
 *      └─► latency     tumbling 1 min, p50/p95/p99 per endpoint ─► analytics.latency
 *   late events (beyond 5 s of allowed lateness) ─► analytics.late
 *   analytics.> ─► results: a JSON Lines file sink, one line per result key and revision
 *
 * The event stream is generated: two hundred users browsing for five minutes of event time, sent
 * out of order by up to two seconds, with one event in a hundred delayed by twenty seconds. It is
 * published into the stream CLICKS on an LmdbStore. Then a child process runs the job and is
 * killed (SIGKILL) in the middle; the job restarts on the same store, each durable consumer
 * resumes at its stored position (the lowest click not yet settled), and the windows that were
 * open at the crash are rebuilt from the clicks delivered again. Clicks settle only once the
 * results that hold them are in the file, so nothing is lost; results have deterministic keys,
 * so a replayed result lands on the line it already wrote.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync, writeSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  actor,
  type ConsumerInfo,
  createRuntime,
  durable,
  type Envelope,
  LmdbStore,
  type Runtime,
  type Sink,
  STREAM_HEADERS,
  sinkActor,
} from 'sluice';
import { fileSink, readJsonLines } from 'sluice/connectors/file';
import {
  agg,
  eventTime,
  keyBy,
  type QuantileValues,
  session,
  tumbling,
  type WindowResult,
  watermarks,
} from 'sluice/operators';
import { seededRandom } from 'sluice/testing';

export interface Click {
  user: string;
  page: string;
  endpoint: string;
  latencyMs: number;
  ts: number;
}

export interface SessionSummary {
  clicks: number;
  firstPage: string;
  lastPage: string;
}

export interface SessionStats {
  sessions: number;
  meanClicks: number;
}

export interface ClickstreamOptions {
  users?: number;
  minutes?: number;
  seed?: number;
  print?: (line: string) => void;
  /** Where the store and the results file go; emptied first. @default `.data/clickstream` in the repository */
  dir?: string;
  /** The first run is killed once page-views and latency have settled this share of the stream. @default 0.5 */
  crashAt?: number;
}

export interface ClickstreamResult {
  clicks: Click[];
  /** Order in which they were sent (disorder included): the stream's order. */
  sent: Click[];
  /** The results file's newest revision of each key, by kind. */
  pageViews: WindowResult<number>[];
  sessions: WindowResult<SessionSummary>[];
  sessionStats: WindowResult<SessionStats>[];
  latency: WindowResult<QuantileValues>[];
  late: Click[];
  drained: boolean;
  /** How the first run ended: `SIGKILL` when it was killed as planned. */
  crash: NodeJS.Signals | null;
  /** The consumers as the restart found them in the store, and as the second run left them. */
  before: ConsumerInfo[];
  after: ConsumerInfo[];
  /** The stream's last sequence (its size: nothing was removed). */
  streamLast: number;
  resultsFile: string;
}

export const START = Date.UTC(2026, 0, 1, 12, 0, 0);
const MINUTE = 60_000;
export const MAX_DISORDER_MS = 2_000;
export const ALLOWED_LATENESS_MS = 5_000;
export const SESSION_GAP_MS = 30_000;
const PAGES = ['/', '/search', '/product/1', '/product/2', '/product/3', '/cart', '/checkout', '/help'];
const ENDPOINTS = ['GET /api/search', 'GET /api/product', 'POST /api/cart', 'POST /api/checkout'];

export const STREAM = 'CLICKS';
/** The durable consumers, one per actor reading the stream. */
export const CONSUMERS = ['page-views', 'sessions', 'latency'] as const;
// Windows hold their clicks unsettled until purged (a minute plus lateness, thousands of clicks):
// the consumers must let that many be pending, or they would stop before any window could close.
const MAX_ACK_PENDING = 100_000;
/** Where consumers keep their positions in the store (docs/streams.md). */
const POSITIONS = 'sluice.consumers';
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/**
 * Publishes a generated stream of clicks into a durable subject, runs the job in a child process
 * that is killed midway, restarts it on the same store and runs it to the end of the stream.
 */
export async function main(options: ClickstreamOptions = {}): Promise<ClickstreamResult> {
  const print = options.print ?? ((line: string) => console.log(line));
  const users = options.users ?? 200;
  const minutes = options.minutes ?? 5;
  const crashAt = options.crashAt ?? 0.5;
  const dir = options.dir ?? join(ROOT, '.data', 'clickstream');
  const where = relative(process.cwd(), dir) || '.';
  // Each run starts from an empty store: the crash and the restart below are the demonstration.
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const storePath = join(dir, 'store');
  const resultsFile = join(dir, 'results.jsonl');

  const { clicks, sent } = generate(users, minutes, options.seed ?? 7);
  print(`clickstream: ${clicks.length} clicks from ${users} users over ${minutes} minutes of event time`);
  print(
    `out of order by up to ${MAX_DISORDER_MS / 1000} s, 1% delayed by 20 s; windows allow ${ALLOWED_LATENESS_MS / 1000} s of lateness`,
  );
  {
    const store = new LmdbStore({ path: storePath });
    const runtime = createRuntime({ store, streams: [{ name: STREAM, subjects: ['clicks'] }] });
    // Each publish resolves once its append is synced; published together, they share commits.
    await Promise.all(sent.map((click) => runtime.bus.publish('clicks', click)));
    const { last } = runtime.stream(STREAM).info();
    await runtime.stop();
    await store.close();
    print(`published to stream ${STREAM} in ${where}/store: sequences 1-${last}, synced to disk\n`);
  }

  print(
    `run 1: a child process runs the job; it is killed (SIGKILL) once page-views and latency have settled ${Math.round(crashAt * 100)}% of the stream`,
  );
  const crash = await runCrashingChild(dir, Math.ceil(sent.length * crashAt), print);
  print(`run 1 ended by ${crash ?? 'exit'}: no stop, no flush, nothing saved on the way out\n`);

  const before = await readConsumers(storePath);
  const streamLast = await streamSize(storePath);
  print(`restart on the same store: stream ${STREAM} holds ${streamLast} clicks`);
  printConsumers(before, print);
  print(
    'run 2 resumes each consumer at its position; windows open at the crash are rebuilt from the clicks delivered again',
  );

  const store = new LmdbStore({ path: storePath });
  const runtime = createRuntime({
    store,
    streams: [{ name: STREAM, subjects: ['clicks'] }],
    logger: { debug() {}, info() {}, warn: print, error: print },
  });
  const sink = await fileSink({ path: resultsFile });
  spawnJob(runtime, sink, print);
  const stream = runtime.stream(STREAM);
  const consumers = CONSUMERS.map((name) => stream.consumer(name));
  // The stream is finite: once every click has been delivered, stopping ends the input, so the
  // windows still open fire their final results.
  for (;;) {
    await runtime.idle();
    if (consumers.every((c) => c.lag().messages === c.lag().ackPending)) break;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const report = await runtime.stop({ deadlineMs: 10_000 });
  await sink.close();
  await store.close();
  const after = await readConsumers(storePath);
  print('\nafter run 2 (read back from the store):');
  printConsumers(after, print);

  const saved = await readJsonLines<unknown>(resultsFile);
  const of = <T>(prefix: string) =>
    [...saved].filter(([key]) => key.startsWith(prefix)).map(([, entry]) => entry.value as T);
  const result: ClickstreamResult = {
    clicks,
    sent,
    pageViews: of<WindowResult<number>>('page-views/'),
    sessions: of<WindowResult<SessionSummary>>('sessions/'),
    sessionStats: of<WindowResult<SessionStats>>('session-stats/'),
    latency: of<WindowResult<QuantileValues>>('latency/'),
    late: of<Click>('late/'),
    drained: report.drained,
    crash,
    before,
    after,
    streamLast,
    resultsFile,
  };
  const counted = result.pageViews.reduce((n, r) => n + r.value, 0);
  // A session that grew or merged lists the results it replaces in `supersedes`.
  const replaced = new Set(result.sessions.flatMap((s) => s.supersedes ?? []));
  const sessions = result.sessions.filter((s) => !replaced.has(s.idempotencyKey)).length;
  print(
    `\n${where}/results.jsonl, newest revision per key: ${result.pageViews.length} page-view, ${result.latency.length} latency and ${result.sessionStats.length} session-stats windows, ${sessions} sessions, ${result.late.length} late clicks`,
  );
  print(
    `page views ${counted} + late ${result.late.length} = ${counted + result.late.length} of the ${clicks.length} clicks published: ${counted + result.late.length === clicks.length ? 'none lost, none counted twice' : 'MISMATCH'}`,
  );
  return result;
}

/**
 * The child process's side: runs the job until the stored positions of the page-views and latency
 * consumers have passed sequence `target`, then dies without stopping anything. (The sessions
 * consumer is further behind: a session still open holds its clicks.)
 */
export async function runUntilCrash(dir: string, target: number): Promise<void> {
  // Written at once: a line still queued in the stdout stream would die with the process.
  const print = (line: string) => void writeSync(1, `${line}\n`);
  const store = new LmdbStore({ path: join(dir, 'store') });
  const runtime = createRuntime({ store, streams: [{ name: STREAM, subjects: ['clicks'] }] });
  const sink = await fileSink({ path: join(dir, 'results.jsonl') });
  spawnJob(runtime, sink, print);
  // The position as the store has it (what a restart will find), not the one in memory, which
  // runs ahead of it by a group commit.
  const stored = (consumer: string) =>
    (store.getKey(POSITIONS, `${STREAM}/${consumer}`) as { floor: number } | undefined)?.floor ?? 1;
  setInterval(() => {
    if (stored('page-views') > target && stored('latency') > target) process.kill(process.pid, 'SIGKILL');
  }, 1).unref();
  setTimeout(() => {
    print(`run 1: the page-views and latency consumers did not pass sequence ${target}`);
    process.exit(1);
  }, 60_000);
}

function runCrashingChild(dir: string, target: number, print: (line: string) => void): Promise<NodeJS.Signals | null> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        '--conditions=sluice-source',
        '--import',
        'tsx',
        fileURLToPath(new URL('./crash.ts', import.meta.url)),
        dir,
        String(target),
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      for (let nl = out.indexOf('\n'); nl !== -1; nl = out.indexOf('\n')) {
        print(out.slice(0, nl));
        out = out.slice(nl + 1);
      }
    });
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (out.length > 0) print(out);
      if (signal === 'SIGKILL') resolve(signal);
      else reject(new Error(`run 1 should have been killed, but exited with ${signal ?? code}: ${err}`));
    });
  });
}

async function readConsumers(storePath: string): Promise<ConsumerInfo[]> {
  const store = new LmdbStore({ path: storePath });
  const runtime = createRuntime({ store, streams: [{ name: STREAM, subjects: ['clicks'] }] });
  const stream = runtime.stream(STREAM);
  const infos = CONSUMERS.map((name) => stream.consumer(name, { maxAckPending: MAX_ACK_PENDING }).info());
  await runtime.stop();
  await store.close();
  return infos;
}

async function streamSize(storePath: string): Promise<number> {
  const store = new LmdbStore({ path: storePath });
  const runtime = createRuntime({ store, streams: [{ name: STREAM, subjects: ['clicks'] }] });
  const { last } = runtime.stream(STREAM).info();
  await runtime.stop();
  await store.close();
  return last;
}

function printConsumers(infos: ConsumerInfo[], print: (line: string) => void): void {
  print(`  ${'consumer'.padEnd(12)}${'position'.padEnd(10)}lag`);
  for (const c of infos) print(`  ${c.name.padEnd(12)}${String(c.position).padEnd(10)}${c.messages}`);
}

/** The analytics actors on the stream, their results into `sink`, closed windows printed as they come. */
export function spawnJob(runtime: Runtime, sink: Sink<unknown>, print: (line: string) => void): void {
  const { bus } = runtime;
  // Returning the publish lets the window hold the input until the late copy is accepted (or fail it).
  const toLate = (env: Envelope<Click>) => bus.forward({ ...env, subject: 'analytics.late' });
  const from = (consumer: (typeof CONSUMERS)[number]) =>
    durable<Click>(STREAM, { consumer, maxAckPending: MAX_ACK_PENDING });
  runtime.spawn(
    actor<Click, WindowResult<number>>({
      name: 'page-views',
      subscribe: from('page-views'),
      output: 'analytics.page-views',
      pipeline: (click$, ctx) =>
        click$.pipe(
          eventTime((c: Click) => c.ts),
          keyBy((c: Click) => c.page),
          watermarks({ maxOutOfOrdernessMs: MAX_DISORDER_MS, clock: ctx.clock }),
          tumbling({
            name: 'page-views',
            sizeMs: MINUTE,
            aggregate: agg.count(),
            allowedLatenessMs: ALLOWED_LATENESS_MS,
            late: toLate,
          }),
        ),
    }),
  );

  runtime.spawn(
    actor<Click, WindowResult<SessionSummary>>({
      name: 'sessions',
      subscribe: from('sessions'),
      output: 'analytics.sessions',
      pipeline: (click$, ctx) =>
        click$.pipe(
          eventTime((c: Click) => c.ts),
          keyBy((c: Click) => c.user),
          watermarks({ maxOutOfOrdernessMs: MAX_DISORDER_MS, clock: ctx.clock }),
          session({
            name: 'sessions',
            gapMs: SESSION_GAP_MS,
            allowedLatenessMs: ALLOWED_LATENESS_MS,
            aggregate: agg.combine({
              clicks: agg.count(),
              firstPage: agg.first((c: Click) => c.page),
              lastPage: agg.last((c: Click) => c.page),
            }),
            // Late clicks are counted by the page-views job already: here they are only left out.
            late: () => {},
          }),
        ),
    }),
  );

  runtime.spawn(
    actor<WindowResult<SessionSummary>, WindowResult<SessionStats>>({
      name: 'session-stats',
      subscribe: 'analytics.sessions',
      output: 'analytics.session-stats',
      pipeline: (session$, ctx) =>
        session$.pipe(
          // A session counts in the minute it ended; a session's updates replace it, so only first results count.
          eventTime((s: WindowResult<SessionSummary>) => s.end - 1),
          watermarks({ maxOutOfOrdernessMs: SESSION_GAP_MS + MAX_DISORDER_MS, clock: ctx.clock }),
          tumbling({
            name: 'session-stats',
            sizeMs: MINUTE,
            keyed: false,
            aggregate: {
              init: () => ({ sessions: 0, clicks: 0 }),
              add: (acc: { sessions: number; clicks: number }, s: WindowResult<SessionSummary>) => {
                if (!s.isUpdate) {
                  acc.sessions++;
                  acc.clicks += s.value.clicks;
                }
                return acc;
              },
              result: (acc) => ({
                sessions: acc.sessions,
                meanClicks: acc.sessions === 0 ? 0 : acc.clicks / acc.sessions,
              }),
            },
            late: () => {},
          }),
        ),
    }),
  );

  runtime.spawn(
    actor<Click, WindowResult<QuantileValues>>({
      name: 'latency',
      subscribe: from('latency'),
      output: 'analytics.latency',
      pipeline: (click$, ctx) =>
        click$.pipe(
          eventTime((c: Click) => c.ts),
          keyBy((c: Click) => c.endpoint),
          watermarks({ maxOutOfOrdernessMs: MAX_DISORDER_MS, clock: ctx.clock }),
          tumbling({
            name: 'latency',
            sizeMs: MINUTE,
            allowedLatenessMs: ALLOWED_LATENESS_MS,
            aggregate: agg.quantiles((c: Click) => c.latencyMs),
            late: () => {},
          }),
        ),
    }),
  );

  // Results keyed as a replay repeats them: a window's idempotency key, a late click's sequence.
  runtime.spawn(
    sinkActor({
      name: 'results',
      subscribe: 'analytics.>',
      sink,
      key: (env) =>
        env.subject === 'analytics.late'
          ? `late/${env.headers[STREAM_HEADERS.sequence]}`
          : (env.data as WindowResult<unknown>).idempotencyKey,
    }),
  );
  print(`${'window (UTC)'.padEnd(14)}${'result'.padEnd(14)}${'key'.padEnd(20)}value`);
  // Every late input re-emits its window (its count changed), but a rounded quantile often did
  // not move: an update is printed only when what it prints changed.
  const printed = new Map<string, string>();
  const row = (r: WindowResult<unknown>, what: string, value: string) => {
    const id = `${what}:${r.idempotencyKey}`;
    if (printed.get(id) === value) return;
    printed.set(id, value);
    print(
      `${span(r.start, r.end).padEnd(14)}${what.padEnd(14)}${String(r.key ?? '(all)').padEnd(20)}${value}${r.isUpdate ? '  (update: late data)' : ''}`,
    );
  };

  bus.subscribe<WindowResult<number>>('analytics.page-views', {
    callback: (env) => {
      row(env.data, 'page views', String(env.data.value));
    },
  });
  bus.subscribe<WindowResult<SessionStats>>('analytics.session-stats', {
    callback: (env) => {
      row(
        env.data,
        'sessions',
        `${env.data.value.sessions} ended, ${env.data.value.meanClicks.toFixed(1)} clicks each`,
      );
    },
  });
  bus.subscribe<WindowResult<QuantileValues>>('analytics.latency', {
    callback: (env) => {
      const q = env.data.value;
      row(env.data, 'latency ms', `p50 ${fmt(q.p50)}  p95 ${fmt(q.p95)}  p99 ${fmt(q.p99)}`);
    },
  });
}

function span(start: number, end: number): string {
  const t = (ms: number) => new Date(ms).toISOString().slice(11, 16);
  return `${t(start)}-${t(end)}`;
}

function fmt(n: number | undefined): string {
  return (n ?? Number.NaN).toFixed(0).padStart(4);
}

/**
 * Users browse in bursts: a few clicks seconds apart, then a pause that sometimes outlasts the
 * session gap. Clicks are sent in order of arrival: event time plus a random delay.
 */
export function generate(users: number, minutes: number, seed: number): { clicks: Click[]; sent: Click[] } {
  // Seeded, so every run and every test sees the same stream.
  const rnd = seededRandom(seed);
  const end = START + minutes * MINUTE;
  const clicks: Click[] = [];
  for (let u = 0; u < users; u++) {
    const user = `u${String(u).padStart(3, '0')}`;
    let ts = START + Math.floor(rnd() * 20_000);
    while (ts < end) {
      const endpoint = ENDPOINTS[Math.floor(rnd() * ENDPOINTS.length)] as string;
      // Latency: mostly fast, with a long tail.
      const latencyMs = Math.round(20 + rnd() * 60 + (rnd() < 0.08 ? rnd() * 900 : 0));
      clicks.push({ user, page: PAGES[Math.floor(rnd() * PAGES.length)] as string, endpoint, latencyMs, ts });
      ts += rnd() < 0.15 ? 25_000 + Math.floor(rnd() * 40_000) : 1_000 + Math.floor(rnd() * 6_000);
    }
  }
  const arrivals = clicks.map((c) => ({ c, at: c.ts + (rnd() < 0.01 ? 20_000 : Math.floor(rnd() * MAX_DISORDER_MS)) }));
  arrivals.sort((a, b) => a.at - b.at);
  clicks.sort((a, b) => a.ts - b.ts);
  return { clicks, sent: arrivals.map((a) => a.c) };
}
