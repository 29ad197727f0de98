/**
 * Clickstream analytics: windowed aggregation on event time, with disorder and late events.
 *
 *   clicks ─┬─► page-views  tumbling 1 min, count per page        ─► analytics.page-views
 *           ├─► sessions    session gap 30 s per user             ─► analytics.sessions ─► session-stats
 *           │                                                            tumbling 1 min  ─► analytics.session-stats
 *           └─► latency     tumbling 1 min, p50/p95/p99 per endpoint ─► analytics.latency
 *   late events (beyond 5 s of allowed lateness) ─► clicks.late
 *
 * The event stream is generated: two hundred users browsing for five minutes of event time, sent
 * out of order by up to two seconds, with one event in a hundred delayed by twenty seconds.
 */
import { actor, createRuntime, type Envelope } from 'sluice';
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
}

export interface ClickstreamResult {
  clicks: Click[];
  /** Order in which they were sent (disorder included). */
  sent: Click[];
  pageViews: WindowResult<number>[];
  sessions: WindowResult<SessionSummary>[];
  sessionStats: WindowResult<SessionStats>[];
  latency: WindowResult<QuantileValues>[];
  late: Click[];
  drained: boolean;
}

export const START = Date.UTC(2026, 0, 1, 12, 0, 0);
const MINUTE = 60_000;
export const MAX_DISORDER_MS = 2_000;
export const ALLOWED_LATENESS_MS = 5_000;
export const SESSION_GAP_MS = 30_000;
const PAGES = ['/', '/search', '/product/1', '/product/2', '/product/3', '/cart', '/checkout', '/help'];
const ENDPOINTS = ['GET /api/search', 'GET /api/product', 'POST /api/cart', 'POST /api/checkout'];

/** Runs the job over a generated stream, printing window results as they close. */
export async function main(options: ClickstreamOptions = {}): Promise<ClickstreamResult> {
  const print = options.print ?? ((line: string) => console.log(line));
  const { clicks, sent } = generate(options.users ?? 200, options.minutes ?? 5, options.seed ?? 7);
  const runtime = createRuntime({ logger: { debug() {}, info() {}, warn: print, error: print } });
  const { bus } = runtime;
  // Returning the publish lets the window hold the input until the late copy is accepted (or fail it).
  const toLate = (env: Envelope<Click>) => bus.forward({ ...env, subject: 'clicks.late' });

  runtime.spawn(
    actor<Click, WindowResult<number>>({
      name: 'page-views',
      subscribe: 'clicks',
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
      subscribe: 'clicks',
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
      subscribe: 'clicks',
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

  const result: ClickstreamResult = {
    clicks,
    sent,
    pageViews: [],
    sessions: [],
    sessionStats: [],
    latency: [],
    late: [],
    drained: false,
  };
  print(
    `clickstream: ${clicks.length} clicks from ${options.users ?? 200} users over ${options.minutes ?? 5} minutes of event time`,
  );
  print(
    `out of order by up to ${MAX_DISORDER_MS / 1000} s, 1% delayed by 20 s; windows allow ${ALLOWED_LATENESS_MS / 1000} s of lateness\n`,
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
      result.pageViews.push(env.data);
      row(env.data, 'page views', String(env.data.value));
    },
  });
  bus.subscribe<WindowResult<SessionSummary>>('analytics.sessions', {
    callback: (env) => void result.sessions.push(env.data),
  });
  bus.subscribe<WindowResult<SessionStats>>('analytics.session-stats', {
    callback: (env) => {
      result.sessionStats.push(env.data);
      row(
        env.data,
        'sessions',
        `${env.data.value.sessions} ended, ${env.data.value.meanClicks.toFixed(1)} clicks each`,
      );
    },
  });
  bus.subscribe<WindowResult<QuantileValues>>('analytics.latency', {
    callback: (env) => {
      result.latency.push(env.data);
      const q = env.data.value;
      row(env.data, 'latency ms', `p50 ${fmt(q.p50)}  p95 ${fmt(q.p95)}  p99 ${fmt(q.p99)}`);
    },
  });
  bus.subscribe<Click>('clicks.late', { callback: (env) => void result.late.push(env.data) });

  for (const click of sent) await bus.publish('clicks', click);
  // End of the stream: stopping completes every pipeline, so the last windows fire.
  const report = await runtime.stop({ deadlineMs: 10_000 });
  result.drained = report.drained;
  print(`\n${result.late.length} clicks arrived too late for their page-view window and went to 'clicks.late'`);
  return result;
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
