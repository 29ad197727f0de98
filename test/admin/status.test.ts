/**
 * What `runtime.status()` and the admin API show beyond actors and streams: connector sources
 * (connection, last error, lag), window operators (watermark, open windows), checkpoints (bytes,
 * duration, positions per commit), dead letters sent before the API served, and dead letters
 * replayed from a `$DLQ.>` stream.
 */
import { actor, createRuntime, durable, MemoryStore, type SourceLag } from 'sluice';
import { agg, eventTime, session, tumbling, watermarks } from 'sluice/operators';
import { testActor } from 'sluice/testing';
import { describe, expect, onTestFinished, test, vi } from 'vitest';
import { quietLogger } from '../runtime/helpers.ts';
import { adminJob, type Order, TOKEN, until } from './helpers.ts';

const SECOND = 1_000;

interface Click {
  page: string;
  ts: number;
}

async function getJson<T>(url: string, path: string): Promise<T> {
  const res = await fetch(`${url}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(res.status).toBe(200);
  return (await res.json()) as T;
}

describe('sources in the runtime status', () => {
  test('a registered source shows connecting, connected, reconnecting with its error, connected again, then closed', async () => {
    const rt = createRuntime({ logger: quietLogger() });
    onTestFinished(() => rt.stop().then(() => undefined));
    let lag: SourceLag = { messages: 7, timeMs: 1500, ackPending: 2 };
    const stats = { received: 10, acked: 8 };
    const health = rt.telemetry.registerSource({
      name: 'mqtt:sensors',
      kind: 'mqtt',
      stream: 'mqtt:sensors/#',
      consumer: 'job-1',
      lag: () => lag,
      counters: () => stats,
    });
    const status = () => rt.status().sources.find((s) => s.name === 'mqtt:sensors');
    expect(status()).toMatchObject({ kind: 'mqtt', connection: 'connecting', reconnects: 0, lastError: undefined });
    health.connected();
    expect(status()).toMatchObject({
      connection: 'connected',
      lag: { messages: 7, timeMs: 1500, ackPending: 2 },
      counters: { received: 10, acked: 8 },
    });
    health.reconnecting(new Error('connection reset by peer'));
    expect(status()).toMatchObject({ connection: 'reconnecting', lastError: { message: 'connection reset by peer' } });
    health.connected();
    expect(status()).toMatchObject({ connection: 'connected', reconnects: 1 });
    // The last error stays after the recovery: it says what happened.
    expect(status()?.lastError?.message).toBe('connection reset by peer');
    lag = { messages: 0, timeMs: 0, ackPending: 0 };
    health.closed();
    expect(status()).toMatchObject({ connection: 'closed', lag: { messages: 0 } });
    // Later reports from a closed source change nothing.
    health.connected();
    expect(status()?.connection).toBe('closed');
  });

  test('the admin API serves the sources, their lag in the live history and in the status', async () => {
    const rt = createRuntime({ logger: quietLogger() });
    onTestFinished(() => rt.stop().then(() => undefined));
    const health = rt.telemetry.registerSource({
      name: 'redis:events',
      kind: 'redis',
      stream: 'redis:events',
      consumer: 'g',
      lag: () => ({ messages: 42, timeMs: 900, ackPending: 3 }),
      counters: () => ({ received: 5 }),
    });
    health.connected();
    const server = await rt.serve({ port: 0, token: TOKEN });
    onTestFinished(() => server.close());
    const sources = await getJson<{ name: string; connection: string; lag: SourceLag }[]>(server.url, '/api/sources');
    expect(sources).toEqual([
      expect.objectContaining({
        name: 'redis:events',
        connection: 'connected',
        lag: expect.objectContaining({ messages: 42 }),
      }),
    ]);
    const status = await getJson<{ sources: { name: string }[] }>(server.url, '/api/status');
    expect(status.sources.map((s) => s.name)).toEqual(['redis:events']);
    const history = await getJson<{ sourceLag: Record<string, [number, number][]> }>(server.url, '/api/history');
    expect(history.sourceLag['redis:events']?.at(-1)?.[1]).toBe(42);
    // A change of connection is an event of the errors and restarts timeline, at the next sample.
    health.reconnecting(new Error("READONLY You can't write against a read only replica"));
    (server as unknown as { tick(): void }).tick();
    const timeline = await getJson<{ actor: string; kind: string; detail: string }[]>(server.url, '/api/timeline');
    expect(timeline).toContainEqual({
      time: expect.any(Number),
      actor: 'redis:events',
      kind: 'connection',
      detail: "connected -> reconnecting: READONLY You can't write against a read only replica",
    });
  });
});

describe('window operators in the runtime status', () => {
  test('each window operator shows its watermark, open windows and next timer, per actor and lane, read on demand', async () => {
    const views = actor<Click, unknown>({
      name: 'views',
      subscribe: 'clicks',
      output: 'views',
      pipeline: (click$, ctx) =>
        click$.pipe(
          eventTime((c: Click) => c.ts),
          watermarks({ maxOutOfOrdernessMs: 0, clock: ctx.clock }),
          tumbling<Click, number, number>({ name: 'per-10s', sizeMs: 10 * SECOND, aggregate: agg.count() }),
        ),
    });
    const sessions = actor<Click, unknown>({
      name: 'sessions',
      subscribe: 'clicks',
      output: 'sessions',
      pipeline: (click$, ctx) =>
        click$.pipe(
          eventTime((c: Click) => c.ts),
          watermarks({ maxOutOfOrdernessMs: 0, clock: ctx.clock }),
          session<Click, number, number>({ name: 'visits', gapMs: 30 * SECOND, aggregate: agg.count() }),
        ),
    });
    const h = testActor(views, { with: [sessions] });
    onTestFinished(() => h.stop().then(() => undefined));
    const windows = (name: string) => h.runtime.status().windows.find((w) => w.actor === name)?.windows;
    expect(windows('views')).toEqual([
      {
        operator: 'per-10s',
        kind: 'tumbling',
        lane: 0,
        watermark: null,
        openWindows: 0,
        keys: 0,
        absorbed: 0,
        nextTimer: null,
      },
    ]);
    await h.send({ page: 'a', ts: 1 * SECOND }, { key: 'a' });
    await h.send({ page: 'b', ts: 2 * SECOND }, { key: 'b' });
    await h.send({ page: 'a', ts: 12 * SECOND }, { key: 'a' });
    // [0, 10 s) fired and went at watermark 11,999; a's [10 s, 20 s) is open, and fires at 19,999.
    expect(windows('views')).toEqual([
      expect.objectContaining({ watermark: 11_999, openWindows: 1, keys: 1, nextTimer: 19_999 }),
    ]);
    // Sessions: a's runs from 1 s (12 s is within the gap), b's from 2 s; both open. The next
    // timer is the one a's session set before it grew (1 s + 30 s gap - 1): none fires before it.
    expect(windows('sessions')).toEqual([
      expect.objectContaining({
        operator: 'visits',
        kind: 'session',
        watermark: 11_999,
        openWindows: 2,
        keys: 2,
        nextTimer: 30_999,
      }),
    ]);
    const server = await h.runtime.serve({ port: 0, token: TOKEN });
    onTestFinished(() => server.close());
    const served = await getJson<{ actor: string; operator: string; openWindows: number }[]>(
      server.url,
      '/api/windows',
    );
    expect(served.map((w) => `${w.actor}/${w.operator}=${w.openWindows}`).sort()).toEqual([
      'sessions/visits=2',
      'views/per-10s=1',
    ]);
  });
});

describe('checkpoints: size, duration and positions per commit', () => {
  test('each commit records the bytes it wrote and the positions it stored; the totals add up', async () => {
    const { rt, get } = await adminJob();
    for (let id = 1; id <= 4; id++) await rt.bus.publish(`orders.eu`, { id, customer: `c${id % 2}` } satisfies Order);
    await until(async () => {
      const cp = await get<{ actors: { name: string; commits: number }[] }>('/api/checkpoints');
      expect(cp.body.actors[0]?.commits).toBeGreaterThanOrEqual(4);
    });
    const cp = (
      await get<{
        actors: {
          name: string;
          bytes: number;
          recent: { bytes: number; durationMs: number; inputs: number; positions: Record<string, number> }[];
        }[];
      }>('/api/checkpoints')
    ).body.actors[0];
    expect(cp?.name).toBe('enrich');
    const recent = cp?.recent ?? [];
    expect(recent.length).toBeGreaterThanOrEqual(4);
    // Each writes at least a state value under `customer:cN` and the consumer's position.
    for (const r of recent) expect(r.bytes).toBeGreaterThan('customer:c0'.length);
    expect(recent.reduce((n, r) => n + r.bytes, 0)).toBe(cp?.bytes);
    expect(recent.every((r) => r.durationMs >= 0)).toBe(true);
    // The positions move with the inputs: the last commit stored the position after order 4.
    expect(recent.at(-1)?.positions).toEqual({ 'ORDERS/enrich': 5 });
    expect(recent.map((r) => r.positions['ORDERS/enrich'])).toEqual(
      [...recent.map((r) => r.positions['ORDERS/enrich'])].sort(),
    );
  });

  test('a batch counts the bytes of its encoded records and keys', async () => {
    const store = new MemoryStore();
    onTestFinished(() => store.close());
    let seen = 0;
    await store.batch((b) => {
      expect(b.bytes).toBe(0);
      b.put('ns', 'key', 'value');
      const one = b.bytes;
      expect(one).toBeGreaterThan('key'.length + 'value'.length);
      b.append('log', [{ big: 'x'.repeat(1000) }]);
      expect(b.bytes - one).toBeGreaterThan(1000);
      seen = b.bytes;
    });
    expect(seen).toBeGreaterThan(1000);
  });
});

describe('dead letters', () => {
  test('dead letters sent before the admin API served are listed, and can be replayed', async () => {
    const log = quietLogger();
    const rt = createRuntime({ logger: log });
    onTestFinished(() => rt.stop().then(() => undefined));
    let broken = true;
    const handled: number[] = [];
    rt.spawn(
      actor<number, never>({
        name: 'fragile',
        subscribe: 'work',
        retry: { maxAttempts: 1 },
        handle: (env) => {
          if (broken) throw new Error(`failed on ${env.data}`);
          handled.push(env.data);
        },
      }),
    );
    for (let i = 1; i <= 3; i++) await rt.bus.publish('work', i);
    await rt.idle();
    // Nothing subscribes to `$DLQ.fragile`: the shutdown report would count them as lost, and
    // the runtime still keeps them for the API.
    expect(log.lines.filter((l) => l.includes('which has no subscriber'))).toHaveLength(3);
    const server = await rt.serve({ port: 0, token: TOKEN });
    onTestFinished(() => server.close());
    const dl = await getJson<{ kept: number; subjects: { subject: string; received: number }[] }>(
      server.url,
      '/api/deadletters',
    );
    expect(dl.kept).toBe(3);
    expect(dl.subjects).toEqual([expect.objectContaining({ subject: '$DLQ.fragile', received: 3 })]);
    broken = false;
    const res = await fetch(`${server.url}/api/deadletters/replay`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ all: true }),
    });
    expect(await res.json()).toMatchObject({ replayed: 3, total: 3 });
    await rt.idle();
    expect(handled.sort()).toEqual([1, 2, 3]);
  });

  test('the bound holds from creation; serve({ deadLetters }) sets it', async () => {
    const rt = createRuntime({ logger: quietLogger(), deadLetters: 2 });
    onTestFinished(() => rt.stop().then(() => undefined));
    rt.spawn(
      actor<number, never>({
        name: 'fails',
        subscribe: 'in',
        retry: { maxAttempts: 1 },
        handle: () => {
          throw new Error('no');
        },
      }),
    );
    for (let i = 1; i <= 5; i++) await rt.bus.publish('in', i);
    await rt.idle();
    const server = await rt.serve({ port: 0, token: TOKEN, deadLetters: 1 });
    onTestFinished(() => server.close());
    const dl = await getJson<{ kept: number; subjects: { received: number; evicted: number }[] }>(
      server.url,
      '/api/deadletters',
    );
    expect(dl.kept).toBe(1);
    expect(dl.subjects[0]).toMatchObject({ received: 5, evicted: 4 });
    expect(() => createRuntime({ deadLetters: -1 })).toThrow(/runtime.deadLetters/);
  });

  test('letters no actor sent (a connector) are kept while an API serves: once, however many serve', async () => {
    const rt = createRuntime({ logger: quietLogger() });
    onTestFinished(() => rt.stop().then(() => undefined));
    const letter = (n: number) =>
      rt.bus.publish('$DLQ.nats.ORDERS.billing', n, {
        headers: { 'sluice-error': 'undecodable', 'sluice-original-subject': 'orders' },
      });
    const kept = async (url: string) => (await getJson<{ kept: number }>(url, '/api/deadletters')).kept;
    await letter(1); // nothing serves yet: not kept
    const one = await rt.serve({ port: 0, token: TOKEN });
    const two = await rt.serve({ port: 0, token: TOKEN });
    await letter(2);
    expect(await kept(one.url)).toBe(1);
    expect(await kept(two.url)).toBe(1);
    await one.close();
    await letter(3);
    expect(await kept(two.url)).toBe(2);
    await two.close();
    await letter(4);
    const three = await rt.serve({ port: 0, token: TOKEN });
    onTestFinished(() => three.close());
    expect(await kept(three.url)).toBe(2);
  });

  test('dead letters kept in a $DLQ.> stream are replayed from a sequence through the API', async () => {
    const store = new MemoryStore();
    const rt = createRuntime({
      store,
      logger: quietLogger(),
      streams: [
        { name: 'ORDERS', subjects: ['orders.>'] },
        { name: 'DLQ', subjects: ['$DLQ.>'] },
      ],
    });
    onTestFinished(async () => {
      await rt.stop();
      await store.close();
    });
    let broken = true;
    const handled: number[] = [];
    rt.spawn(
      actor<Order, never>({
        name: 'billing',
        subscribe: durable<Order>('ORDERS', { consumer: 'billing' }),
        retry: { maxAttempts: 1 },
        handle: (env) => {
          if (broken) throw new Error(`billing down for ${env.data.id}`);
          handled.push(env.data.id);
        },
      }),
    );
    for (let id = 1; id <= 4; id++) await rt.bus.publish('orders.eu', { id, customer: 'c' });
    await until(() => expect(rt.stream('DLQ').info().messages).toBe(4));
    broken = false;
    const server = await rt.serve({ port: 0, token: TOKEN });
    onTestFinished(() => server.close());
    const replay = async (body: unknown) => {
      const res = await fetch(`${server.url}/api/deadletters/replay`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    // From sequence 3: the last two letters, then where to go on from.
    expect((await replay({ stream: 'DLQ', fromSeq: 3 })).body).toMatchObject({ replayed: 2, next: 5 });
    await until(() => expect(handled.sort()).toEqual([3, 4]));
    expect((await replay({ stream: 'DLQ', ids: [1], reason: 'billing down' })).body).toMatchObject({ replayed: 1 });
    await until(() => expect(handled.sort()).toEqual([1, 3, 4]));
    expect((await replay({ stream: 'NOPE', all: true })).status).toBe(404);
    // The letters stay in the stream: a stream is replayed, not consumed.
    expect(rt.stream('DLQ').info().messages).toBe(4);
  });

  test('a replay from a stream gives the event loop back while it reads past letters its filter does not select', async () => {
    const store = new MemoryStore();
    const rt = createRuntime({ store, logger: quietLogger(), streams: [{ name: 'DLQ', subjects: ['$DLQ.>'] }] });
    onTestFinished(async () => {
      await rt.stop();
      await store.close();
    });
    const headers = { 'sluice-original-subject': 'orders.eu', 'sluice-error': 'billing down' };
    for (let i = 0; i < 20_000; i++) await rt.bus.publish('$DLQ.billing', i, { headers });
    const server = await rt.serve({ port: 0, token: TOKEN });
    onTestFinished(() => server.close());
    // Event-loop turns, counted by a callback that schedules itself for the next one.
    let turn = 0;
    let ticking = true;
    const tick = () => {
      turn++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    const readsPerTurn = new Map<number, number>();
    // DLQ is the store's only stream: every read is the replay's.
    const read = store.read.bind(store);
    vi.spyOn(store, 'read').mockImplementation((stream, from, options) => {
      readsPerTurn.set(turn, (readsPerTurn.get(turn) ?? 0) + 1);
      return read(stream, from, options);
    });
    const res = await fetch(`${server.url}/api/deadletters/replay`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      // No letter has this reason: the replay reads the whole stream and publishes nothing.
      body: JSON.stringify({ stream: 'DLQ', reason: 'no such reason' }),
    });
    ticking = false;
    expect(await res.json()).toMatchObject({ replayed: 0, total: 0, next: 20_001 });
    const reads = [...readsPerTurn.values()];
    // 20,000 letters are 79 pages of 256: read in one turn, they held the job's timers and I/O.
    expect(reads.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(79);
    expect(Math.max(...reads)).toBeLessThanOrEqual(2);
  });
});
