/**
 * The clickstream job, live, with its dashboard: `npm run example -- dashboard`.
 *
 * Clicks are generated in real time (event time is the wall clock) into the stream CLICKS, read by
 * the clickstream actors (page views, sessions, latency quantiles, results into a file) and by
 * `user-activity`, which keeps per-user state (`user:<id>`: clicks, last page) with checkpoints.
 * A click stamped more than 5 s in the future (a device whose clock is ahead) is refused by
 * `user-activity` and dead-lettered; once its time has come, replaying it from the dashboard or
 * `sluice dlq replay` gets it handled. The generator sends one such click every 20 s.
 *
 * With `SLUICE_NATS_URL` (a NATS server), partner clicks also arrive from the NATS core subject
 * `partner.clicks` through a NATS source, which the dashboard shows under connector health.
 *
 * The admin API and the dashboard listen on 127.0.0.1 (`SLUICE_PORT`, default 7420) with the token
 * `SLUICE_TOKEN` (a random one when unset); the URL printed carries it in its fragment. The store,
 * results and audit log go to `.data/dashboard/` (`SLUICE_DASHBOARD_DIR`), emptied at each start.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { type AdminServer, actor, createRuntime, durable, LmdbStore, type Runtime } from 'sluice';
import { fileSink } from 'sluice/connectors/file';
import { natsSource } from 'sluice/connectors/nats';
import { type Click, STREAM, spawnJob } from '../clickstream-analytics/main.ts';

/** How far ahead of the clock a click may be stamped before `user-activity` refuses it. */
export const MAX_CLOCK_SKEW_MS = 5_000;

export interface UserActivity {
  clicks: number;
  lastPage: string;
  lastSeen: number;
}

export interface DashboardOptions {
  port?: number;
  token?: string;
  dir?: string;
  /** Clicks generated per second. @default 40 */
  rate?: number;
  /** Seconds between two clicks from a device whose clock is ahead; 0 for none. @default 20 */
  skewEverySeconds?: number;
  /** A NATS server partner clicks come from (`partner.clicks`). @default env SLUICE_NATS_URL, else none */
  natsUrl?: string;
  print?: (line: string) => void;
}

export interface DashboardJob {
  readonly runtime: Runtime;
  readonly server: AdminServer;
  readonly token: string;
  /** Stops generating, stops the runtime and the server, closes the store. */
  stop(): Promise<void>;
}

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PAGES = ['/', '/search', '/product/1', '/product/2', '/product/3', '/cart', '/checkout', '/help'];
const ENDPOINTS = ['GET /api/search', 'GET /api/product', 'POST /api/cart', 'POST /api/checkout'];

export async function main(options: DashboardOptions = {}): Promise<DashboardJob> {
  // Written at once, so a parent process reading the URL sees it before anything else happens.
  const print = options.print ?? ((line: string) => void writeSync(1, `${line}\n`));
  const dir = options.dir ?? process.env.SLUICE_DASHBOARD_DIR ?? join(ROOT, '.data', 'dashboard');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const store = new LmdbStore({ path: join(dir, 'store') });
  const runtime = createRuntime({
    store,
    streams: [{ name: STREAM, subjects: ['clicks'] }],
    logger: { debug() {}, info() {}, warn() {}, error: print },
  });
  const sink = await fileSink({ path: join(dir, 'results.jsonl') });
  // The clickstream job prints every window it closes; the dashboard shows them instead.
  spawnJob(runtime, sink, () => {});
  runtime.spawn(
    actor<Click, never>({
      name: 'user-activity',
      subscribe: durable<Click>(STREAM, { consumer: 'user-activity' }),
      checkpoint: { intervalMs: 1000 },
      retry: { maxAttempts: 2, backoff: { initialMs: 50, maxMs: 100 } },
      handle: (env, ctx) => {
        const click = env.data;
        if (click.ts > ctx.clock.now() + MAX_CLOCK_SKEW_MS) {
          throw new Error(
            `click from ${click.user} is stamped ${Math.round((click.ts - ctx.clock.now()) / 1000)} s in the future: its device clock is ahead`,
          );
        }
        const key = `user:${click.user}`;
        const seen = ctx.state.get<UserActivity>(key);
        ctx.state.put<UserActivity>(key, { clicks: (seen?.clicks ?? 0) + 1, lastPage: click.page, lastSeen: click.ts });
      },
    }),
  );

  const token = options.token ?? process.env.SLUICE_TOKEN ?? randomBytes(18).toString('base64url');
  const server = await runtime.serve({
    port: options.port ?? Number(process.env.SLUICE_PORT ?? 7420),
    token,
    auditLog: join(dir, 'audit.jsonl'),
  });

  const partners = await partnerClicks(runtime, options.natsUrl ?? process.env.SLUICE_NATS_URL);

  // Live clicks: a few hundred users, event time now, a little disorder.
  const rate = options.rate ?? 40;
  const skewEvery = (options.skewEverySeconds ?? 20) * 1000;
  let n = 0;
  let lastSkew = Date.now();
  const generator = setInterval(() => {
    const now = Date.now();
    for (let i = 0; i < rate / 10; i++) {
      n++;
      const click: Click = {
        user: `u${(n * 7919) % 300}`,
        page: PAGES[(n * 31) % PAGES.length] as string,
        endpoint: ENDPOINTS[(n * 17) % ENDPOINTS.length] as string,
        latencyMs: 20 + ((n * 131) % 400),
        ts: now - ((n * 53) % 1500),
      };
      void runtime.bus.publish('clicks', click).catch(() => {});
    }
    if (skewEvery > 0 && now - lastSkew >= skewEvery) {
      lastSkew = now;
      const click: Click = {
        user: 'u-skewed',
        page: '/help',
        endpoint: 'GET /api/search',
        latencyMs: 50,
        ts: now + 15_000,
      };
      void runtime.bus.publish('clicks', click).catch(() => {});
    }
  }, 100);

  print(`dashboard: ${server.url}/#token=${token}`);
  print(`cli: SLUICE_URL=${server.url} SLUICE_TOKEN=${token} npx sluice status`);
  print('generating clicks into stream CLICKS; Ctrl-C stops');

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      clearInterval(generator);
      await partners?.stopPublishing();
      await runtime.stop({ deadlineMs: 5_000 });
      await partners?.close();
      await server.close();
      await sink.close();
      await store.close();
    })();
    return stopping;
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      void stop().then(() => process.exit(0));
    });
  }
  return { runtime, server, token, stop };
}

/**
 * Partner clicks from NATS: a plain client publishes a few per second on `partner.clicks`, and a
 * NATS source brings them onto the bus subject `clicks` (so the stream CLICKS keeps them).
 */
async function partnerClicks(
  runtime: Runtime,
  url: string | undefined,
): Promise<{ stopPublishing(): Promise<void>; close(): Promise<void> } | undefined> {
  if (url === undefined || url === '') return undefined;
  const source = natsSource<Click>({
    name: 'partner-clicks',
    connection: { servers: url },
    subjects: 'partner.clicks',
    subject: 'clicks',
  });
  await source.start(runtime);
  const nc = await connect({ servers: url });
  let n = 0;
  const timer = setInterval(() => {
    n++;
    const click: Click = {
      user: `partner-${n % 20}`,
      page: PAGES[n % PAGES.length] as string,
      endpoint: ENDPOINTS[n % ENDPOINTS.length] as string,
      latencyMs: 30 + (n % 200),
      ts: Date.now(),
    };
    nc.publish('partner.clicks', JSON.stringify(click));
  }, 200);
  return {
    async stopPublishing() {
      clearInterval(timer);
      await nc.drain().catch(() => undefined);
    },
    close: () => source.close(),
  };
}
