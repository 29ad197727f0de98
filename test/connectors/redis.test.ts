/**
 * The Redis Streams connector against the real Redis: delivery counts as `attempt`, dead letters
 * after the last delivery, entries of a dead consumer claimed after the idle time (and held ones
 * not), the own pending list read at once under the same consumer name, entry fields as headers,
 * the sink's trimming and committed keys, and connection errors. The conformance cases are in
 * redisConformance.test.ts.
 */
import type { Redis } from 'ioredis';
import {
  actor,
  ConnectorError,
  createRuntime,
  DEAD_LETTER_HEADERS,
  type Envelope,
  MemoryStore,
  OptionsError,
  type Runtime,
  type SinkRecord,
  STREAM_HEADERS,
  VirtualClock,
} from 'sluice';
import { redisSink, redisSource } from 'sluice/connectors/redis';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { groupBacklog, keyPrefix, REDIS, redisClient, redisMissing } from '../services/redis.ts';
import { until } from './conformance.ts';
import { expectRefusedHeaderLetter, stuckRuntime } from './redisHelpers.ts';

const missing = await redisMissing('the Redis connector tests');
const keys = keyPrefix();
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
let redis: Redis;
let n = 0;
const streamKey = () => `${keys.prefix}s${++n}`;

function runtime(): Runtime {
  const rt = createRuntime({ logger: quiet, shutdownDeadlineMs: 2_000 });
  onTestFinished(() => rt.stop().then(() => undefined));
  return rt;
}

function closing<S extends { close(): Promise<void> }>(s: S): S {
  onTestFinished(() => s.close());
  return s;
}

const record = (key: string, value: unknown, revision?: number): SinkRecord => ({
  key,
  value,
  revision,
  envelope: undefined,
});

describe('Redis connector options (no server)', () => {
  test('bad options name the option and the rule', () => {
    expect(() => redisSource({ stream: '', group: 'g', subject: 'a' })).toThrow(OptionsError);
    expect(() => redisSource({ stream: 's', group: 'g', subject: 'a.*' })).toThrow(/subject/);
    expect(() => redisSource({ stream: 's', group: 'g', subject: 'a', codec: 'yaml' as never })).toThrow(
      expect.objectContaining({ option: 'redisSource.codec' }),
    );
    expect(() => redisSource({ stream: 's', group: 'g', subject: 'a', from: 'latest' as never })).toThrow(
      expect.objectContaining({ option: 'redisSource.from' }),
    );
    expect(() => redisSource({ stream: 's', group: 'g', subject: 'a', bogus: 1 } as never)).toThrow(OptionsError);
    return expect(redisSink({ stream: 's', exactTrim: true })).rejects.toMatchObject({ option: 'redisSink.exactTrim' });
  });

  test('a bad connection URL is an OptionsError at start', async () => {
    const source = redisSource({ stream: 's', group: 'g', subject: 'a', connection: { url: 'http://x' } });
    await expect(source.start(runtime())).rejects.toMatchObject({ option: 'redis:s/g.connection.url' });
  });
});

describe.skipIf(missing !== undefined)('Redis connector', () => {
  beforeAll(async () => {
    redis = redisClient();
    await redis.connect();
  });
  afterAll(async () => {
    await keys.cleanup(redis);
    redis.disconnect();
  });

  test('a refused connection and refused credentials are ConnectorErrors saying what to check', async () => {
    const closed = redisSource({ stream: 's', group: 'g', subject: 'a', connection: { port: 1, timeoutMs: 1_000 } });
    await expect(closed.start(runtime())).rejects.toBeInstanceOf(ConnectorError);
    const wrong = redisSink({ stream: 's', connection: { ...REDIS, username: 'nobody', password: 'nothing' } });
    await expect(wrong).rejects.toThrow(/refused the credentials.*username and password/);
  });

  test('a missing group with create: false is a ConnectorError', async () => {
    const stream = streamKey();
    await redis.xadd(stream, '*', 'data', '1');
    const source = closing(redisSource({ connection: REDIS, stream, group: 'none', subject: 'x.in', create: false }));
    await expect(source.start(runtime())).rejects.toThrow(/group 'none'.*does not exist/);
  });

  test("Redis's delivery count is the attempt; a failure on the last delivery is dead-lettered and acknowledged", async () => {
    const stream = streamKey();
    const rt = runtime();
    const attempts: number[] = [];
    const letters: Envelope[] = [];
    rt.bus.subscribe('$DLQ.redis.g', { callback: (env) => void letters.push(env) });
    rt.bus.subscribe('at.in', {
      callback: (env) => {
        attempts.push(env.attempt);
        throw new Error('always');
      },
      onError: () => undefined,
    });
    const source = closing(
      redisSource({ connection: REDIS, stream, group: 'g', subject: 'at.in', maxDeliver: 3, backoffMs: [20] }),
    );
    await source.start(rt);
    await redis.xadd(stream, '*', 'data', JSON.stringify({ n: 1 }));
    await until(() => letters.length === 1, 'a dead letter');
    expect(attempts).toEqual([1, 2, 3]);
    const letter = letters[0] as Envelope;
    expect(letter.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    expect(letter.headers[DEAD_LETTER_HEADERS.error]).toBe('always');
    expect(new TextDecoder().decode(letter.data as Uint8Array)).toBe('{"n":1}');
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'the entry acknowledged');
    expect(source.stats).toMatchObject({ retried: 2, terminated: 1 });
  });

  test('an undecodable entry is dead-lettered at once, never delivered', async () => {
    const stream = streamKey();
    const rt = runtime();
    const letters: Envelope[] = [];
    const seen: unknown[] = [];
    rt.bus.subscribe('$DLQ.redis.g', { callback: (env) => void letters.push(env) });
    rt.bus.subscribe('ud.in', { callback: (env) => void seen.push(env.data) });
    const source = closing(redisSource({ connection: REDIS, stream, group: 'g', subject: 'ud.in' }));
    await source.start(rt);
    await redis.xadd(stream, '*', 'data', '{not json');
    await redis.xadd(stream, '*', 'other', '1');
    await redis.xadd(stream, '*', 'data', '2');
    await until(() => seen.length === 1 && letters.length === 2, 'one delivered, two dead letters');
    expect(seen).toEqual([2]);
    expect(letters.map((l) => l.headers[DEAD_LETTER_HEADERS.code])).toEqual([
      'SLUICE_ERR_DECODE',
      'SLUICE_ERR_CONNECTOR',
    ]);
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'all acknowledged');
  });

  test('an entry whose field cannot be a header is dead-lettered at once with the field and the rule, and acknowledged', async () => {
    const stream = streamKey();
    const rt = runtime();
    const letters: Envelope[] = [];
    const seen: unknown[] = [];
    rt.bus.subscribe('bf.in', { callback: (env) => void seen.push(env.data) });
    rt.bus.subscribe('$DLQ.redis.g', { callback: (env) => void letters.push(env) });
    const source = closing(redisSource({ connection: REDIS, stream, group: 'g', subject: 'bf.in', backoffMs: [10] }));
    await source.start(rt);
    await redis.xadd(stream, '*', 'data', '1', 'tenant', 'eu', 'bad name', 'x');
    await redis.xadd(stream, '*', 'data', '2');
    await expectRefusedHeaderLetter(seen, letters);
    expect(new TextDecoder().decode(letters[0]?.data as Uint8Array)).toBe('1');
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'both acknowledged');
    expect(source.stats).toMatchObject({ retried: 0, terminated: 1 });
  });

  test("an entry over the bus's payload limit is dead-lettered without its payload, saying why, and acknowledged", async () => {
    const stream = streamKey();
    const rt = runtime();
    const letters: Envelope[] = [];
    const seen: unknown[] = [];
    rt.bus.subscribe('big.in', { callback: (env) => void seen.push(env.data) });
    rt.bus.subscribe('$DLQ.redis.g', { callback: (env) => void letters.push(env) });
    const source = closing(
      redisSource({
        connection: REDIS,
        stream,
        group: 'g',
        subject: 'big.in',
        codec: 'text',
        maxDeliver: 2,
        backoffMs: [10],
      }),
    );
    await source.start(rt);
    const big = 'x'.repeat(1024 * 1024 + 1);
    const id = await redis.xadd(stream, '*', 'data', big);
    await redis.xadd(stream, '*', 'data', 'small');
    // The dead letter would be as large: refused at every try, the entry stayed pending for good.
    await until(() => letters.length === 1 && seen.length === 1, 'the small one delivered, the big one dead-lettered');
    expect(seen).toEqual(['small']);
    const letter = letters[0] as Envelope;
    expect(letter.data).toEqual(new Uint8Array(0));
    expect(letter.headers[DEAD_LETTER_HEADERS.payloadDropped]).toBe(
      "its payload of 1048577 bytes is over the bus's limit of 1048576 bytes",
    );
    expect(letter.headers[DEAD_LETTER_HEADERS.error]).toMatch(/exceeds the limit of 1048576 bytes/);
    expect(letter.headers[STREAM_HEADERS.sequence]).toBe(id);
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'both acknowledged');
    expect(source.stats).toMatchObject({ terminated: 1 });
  });

  test("a dead consumer's pending entries are claimed after the idle time, at their delivery count", async () => {
    const stream = streamKey();
    await redis.xgroup('CREATE', stream, 'g', '0', 'MKSTREAM');
    for (const v of [1, 2, 3]) await redis.xadd(stream, '*', 'data', String(v));
    // A reader that takes all three and dies without acknowledging.
    await redis.xreadgroup('GROUP', 'g', 'dead', 'COUNT', 10, 'STREAMS', stream, '>');
    const rt = runtime();
    const got: [unknown, number][] = [];
    rt.bus.subscribe('dc.in', { callback: (env) => void got.push([env.data, env.attempt]) });
    const source = closing(redisSource({ connection: REDIS, stream, group: 'g', subject: 'dc.in', claimIdleMs: 200 }));
    const t0 = Date.now();
    await source.start(rt);
    await until(() => got.length === 3, 'the three entries claimed');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    expect(got).toEqual([
      [1, 2],
      [2, 2],
      [3, 2],
    ]);
    expect(source.stats.claimed).toBe(3);
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'acknowledged by the claimer');
  });

  test('entries an actor holds past the idle time are touched, so another reader does not claim them', async () => {
    const stream = streamKey();
    const rt = runtime();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const first: number[] = [];
    rt.bus.subscribe('tc.in', {
      callback: async (env) => {
        first.push(env.data as number);
        await gate;
      },
    });
    const a = closing(redisSource({ connection: REDIS, stream, group: 'g', subject: 'tc.in', claimIdleMs: 150 }));
    await a.start(rt);
    await redis.xadd(stream, '*', 'data', '1');
    await until(() => first.length === 1, 'the first reader holds the entry');
    const rt2 = runtime();
    const second: number[] = [];
    rt2.bus.subscribe('tc.in', { callback: (env) => void second.push(env.data as number) });
    const b = closing(redisSource({ connection: REDIS, stream, group: 'g', subject: 'tc.in', claimIdleMs: 150 }));
    await b.start(rt2);
    // Six idle times: unless touched, the second reader would have claimed it long since.
    await new Promise((resolve) => setTimeout(resolve, 900));
    expect(second).toEqual([]);
    release();
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'acknowledged by the first reader');
    expect(b.stats.claimed).toBe(0);
  });

  test('an entry the stopping runtime refuses stays pending as it was, not claimed again and again', async () => {
    const stream = streamKey();
    const rt = stuckRuntime('sd.in');
    const source = closing(
      redisSource({ connection: REDIS, stream, group: 'g', consumer: 'sd', subject: 'sd.in', backoffMs: [0] }),
    );
    await source.start(rt);
    for (const v of [1, 2, 3, 4, 5, 6]) await redis.xadd(stream, '*', 'data', String(v));
    // Some in the actor, one waiting for room in its mailbox when the runtime stops.
    await until(() => source.stats.received === source.stats.published + 1, 'one waiting for room');
    await rt.stop();
    await until(() => source.stats.retried >= 1, 'the refused entry given back');
    // Each claim again is a round trip: give a loop of them time to show.
    for (let i = 0; i < 50; i++) await redis.ping();
    const rows = (await redis.call('XPENDING', stream, 'g', '-', '+', 10)) as [string, string, number, number][];
    expect(rows.length).toBe(1);
    expect(Number(rows[0]?.[3])).toBe(1);
  });

  test('a reader under the same consumer name reads its own pending entries at once', async () => {
    const stream = streamKey();
    const rt = runtime();
    rt.bus.subscribe('op.in', { callback: () => new Promise<void>(() => undefined) });
    const a = closing(redisSource({ connection: REDIS, stream, group: 'g', consumer: 'fixed', subject: 'op.in' }));
    await a.start(rt);
    for (const v of [1, 2]) await redis.xadd(stream, '*', 'data', String(v));
    await until(() => a.lag().ackPending === 2, 'two held');
    await a.close();
    const rt2 = runtime();
    const got: [unknown, number][] = [];
    rt2.bus.subscribe('op.in', { callback: (env) => void got.push([env.data, env.attempt]) });
    const b = closing(redisSource({ connection: REDIS, stream, group: 'g', consumer: 'fixed', subject: 'op.in' }));
    await b.start(rt2);
    await until(() => got.length === 2, 'both read again');
    // Read again from the pending list: Redis counted a second delivery of each.
    expect(got).toEqual([
      [1, 2],
      [2, 2],
    ]);
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'acknowledged');
  });

  test('own pending entries claimed as idle while the restart reads them are delivered once, not twice', async () => {
    const stream = streamKey();
    await redis.xgroup('CREATE', stream, 'g', '0', 'MKSTREAM');
    const ids: string[] = [];
    for (const v of [1, 2, 3, 4, 5, 6]) ids.push((await redis.xadd(stream, '*', 'data', String(v))) as string);
    // A run that read them all and died an hour ago.
    await redis.xreadgroup('GROUP', 'g', 'again', 'COUNT', 10, 'STREAMS', stream, '>');
    await redis.call('XCLAIM', stream, 'g', 'again', 0, ...ids, 'IDLE', 3_600_000, 'JUSTID');
    // Virtual time: the claims of idle entries run when the test moves the clock.
    const clock = new VirtualClock();
    const rt = createRuntime({ logger: quiet, clock });
    onTestFinished(() => rt.stop().then(() => undefined));
    let open!: () => void;
    const gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const handled: unknown[] = [];
    rt.spawn(
      actor({
        name: 'again',
        subscribe: 'ag.in',
        mailbox: { capacity: 1 },
        maxInFlight: 1,
        handle: async (env) => {
          handled.push(env.data);
          await gate;
        },
      }),
    );
    const source = closing(
      redisSource({ connection: REDIS, stream, group: 'g', consumer: 'again', subject: 'ag.in', claimIdleMs: 300 }),
    );
    await source.start(rt);
    // The reads of the own pending list wait for the actor while the time to claim idle ones comes.
    await until(() => source.stats.received === 3, 'three read from the own pending list');
    await clock.advance(150);
    for (let i = 0; i < 20; i++) await redis.ping();
    open();
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'all acknowledged');
    expect([...handled].sort()).toEqual([1, 2, 3, 4, 5, 6]);
  });

  test('entry fields become headers, sluice-key the key and sluice-event-time the event time', async () => {
    const stream = streamKey();
    const rt = runtime();
    const got: Envelope[] = [];
    rt.bus.subscribe('hd.in', { callback: (env) => void got.push(env) });
    const source = closing(redisSource({ connection: REDIS, stream, group: 'g', subject: 'hd.in', codec: 'text' }));
    await source.start(rt);
    const id = await redis.xadd(
      stream,
      '*',
      'data',
      'hello',
      'tenant',
      'eu',
      'sluice-key',
      'k1',
      'sluice-event-time',
      '1234',
    );
    await until(() => got.length === 1, 'one entry');
    const env = got[0] as Envelope;
    expect(env).toMatchObject({ data: 'hello', key: 'k1', eventTime: 1234 });
    expect(env.headers).toMatchObject({ tenant: 'eu', 'sluice-stream': stream, 'sluice-stream-sequence': id });
  });

  test('the sink trims with MAXLEN, and with a store skips keys (and lower revisions) it committed', async () => {
    const stream = streamKey();
    const trimmed = closing(await redisSink({ connection: REDIS, stream, maxLen: 10, exactTrim: true }));
    await trimmed.write(Array.from({ length: 25 }, (_, i) => record(`t/${i}`, i)));
    expect(await redis.xlen(stream)).toBe(10);

    const out = streamKey();
    const store = new MemoryStore();
    const a = closing(await redisSink({ connection: REDIS, stream: out, store, name: 'totals' }));
    await a.write([record('k/1', 1), record('w/1', 'r0', 0)]);
    // Another sink of the same name (a restart) on the same store: the replay is skipped.
    const b = closing(await redisSink({ connection: REDIS, stream: out, store, name: 'totals' }));
    await b.write([record('k/1', 1), record('w/1', 'r0 again', 0), record('w/1', 'r1', 1), record('k/2', 2)]);
    const entries = (await redis.xrange(out, '-', '+')).map(([, f]) => `${f[3]}=${f[1]}`);
    expect(entries).toEqual(['k/1=1', 'w/1="r0"', 'w/1="r1"', 'k/2=2']);
    expect(b.stats).toMatchObject({ published: 2, skipped: 2 });
  });

  test('a batch that fails is rejected as retryable, and its retry skips what did commit', async () => {
    const out = streamKey();
    await redis.set(`${out}:wrong`, 'a string, not a stream');
    const store = new MemoryStore();
    const sink = closing(
      await redisSink({
        connection: REDIS,
        stream: (r) => (r.key === 'bad' ? `${out}:wrong` : out),
        store,
      }),
    );
    const batch = [record('good', 1), record('bad', 2)];
    await expect(sink.write(batch)).rejects.toMatchObject({ retryable: true, message: /1 of 2 appends failed/ });
    await redis.del(`${out}:wrong`);
    await sink.write(batch);
    expect(await redis.xlen(out)).toBe(1);
    expect(await redis.xlen(`${out}:wrong`)).toBe(1);
    await redis.del(`${out}:wrong`);
  });

  test('a source closed while it starts closes the connections it was making, and reads nothing', async () => {
    const stream = streamKey();
    const connectionName = `sluice-closing-${n}`;
    const rt = runtime();
    rt.bus.subscribe('cs.in', { callback: () => undefined });
    const source = redisSource({
      connection: { ...REDIS, client: { connectionName } },
      stream,
      group: 'g',
      subject: 'cs.in',
    });
    const starting = source.start(rt).catch((error: unknown) => error);
    await source.close();
    await starting;
    const left = async () =>
      String(await redis.call('CLIENT', 'LIST', 'TYPE', 'normal'))
        .split('\n')
        .filter((line) => line.includes(` name=${connectionName} `)).length;
    await until(async () => (await left()) === 0, 'no connection of the source left');
    await redis.xadd(stream, '*', 'data', '1');
    for (let i = 0; i < 20; i++) await redis.ping();
    expect(source.stats.received).toBe(0);
  });

  test('a stream deleted with its group (or lost with a restart) is read again once producers append to it', async () => {
    const stream = streamKey();
    const rt = runtime();
    const seen: unknown[] = [];
    rt.bus.subscribe('gone.in', { callback: (env) => void seen.push(env.data) });
    const source = closing(redisSource({ connection: REDIS, stream, group: 'g', subject: 'gone.in', blockMs: 50 }));
    await source.start(rt);
    await redis.xadd(stream, '*', 'data', '1');
    await until(() => seen.length === 1, 'the first entry');
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'the first acknowledged');
    // The key goes with its group; a producer's next XADD makes a stream without one.
    await redis.del(stream);
    await redis.xadd(stream, '*', 'data', '2');
    await until(() => seen.length === 2, 'the entry appended after the deletion');
    expect(seen).toEqual([1, 2]);
  });

  test('connections killed mid-stream: the source reconnects and every entry is handled, none lost', async () => {
    const stream = streamKey();
    const rt = runtime();
    const seen = new Set<number>();
    rt.bus.subscribe('kl.in', { mailbox: { capacity: 16 }, callback: (env) => void seen.add(env.data as number) });
    const source = closing(
      redisSource({ connection: REDIS, stream, group: 'g', subject: 'kl.in', claimIdleMs: 300, blockMs: 100 }),
    );
    await source.start(rt);
    const total = 2_000;
    const produce = async (from: number, to: number) => {
      const p = redis.pipeline();
      for (let i = from; i < to; i++) p.xadd(stream, '*', 'data', String(i));
      await p.exec();
    };
    await produce(0, total / 2);
    await until(() => seen.size > 100, 'some handled');
    const clients = String(await redis.call('CLIENT', 'LIST'))
      .split('\n')
      .filter((line) => / name=sluice /.test(line));
    expect(clients.length).toBeGreaterThanOrEqual(2);
    for (const line of clients)
      await redis.call('CLIENT', 'KILL', 'ID', (/id=(\d+)/.exec(line) as string[])[1] as string);
    await produce(total / 2, total);
    await until(() => seen.size === total, 'every entry handled', 20_000);
    await until(async () => (await groupBacklog(redis, stream, 'g')) === 0, 'every entry acknowledged', 20_000);
  });
});
