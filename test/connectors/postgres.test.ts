import { createEnvelope, DEAD_LETTER_HEADERS, type Envelope, type SinkRecord, sinkActor } from 'sluice';
import { type PostgresSink, postgresSink } from 'sluice/connectors/postgres';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { collect, flush, testRuntime } from '../runtime/helpers.ts';
import { createTestSchema, POSTGRES, postgresMissing, type TestSchema } from '../services/postgres.ts';

const missing = await postgresMissing('the PostgreSQL sink tests');

const rec = <T>(key: string, value: T, revision?: number, seq?: number): SinkRecord<T> => ({
  key,
  value,
  revision,
  envelope: seq === undefined ? undefined : createEnvelope('orders', value, { headers: { seq: String(seq) } }),
});

describe.skipIf(missing !== undefined)('PostgreSQL sink', () => {
  let schema: TestSchema;
  const sinks: PostgresSink<unknown>[] = [];
  beforeAll(async () => {
    schema = await createTestSchema();
  });
  afterAll(async () => {
    for (const s of sinks) await s.close();
    await schema?.drop();
  });
  async function open<T>(table: string, extra: Partial<Parameters<typeof postgresSink<T>>[0]> = {}) {
    const sink = await postgresSink<T>({
      table: schema.table(table),
      connection: POSTGRES,
      createTable: true,
      ...extra,
    });
    sinks.push(sink as PostgresSink<unknown>);
    return sink;
  }
  const rows = async (table: string, order = 'key') =>
    (await schema.pool.query(`SELECT * FROM ${schema.table(table)} ORDER BY ${order}`)).rows;

  test('replaying a batch keeps one row per key, with the same values', async () => {
    const sink = await open<{ total: number }>('replay');
    const batch = Array.from({ length: 50 }, (_, i) => rec(`k${i}`, { total: i }));
    await sink.write(batch);
    await sink.write(batch);
    await sink.write(batch.slice(10, 20));
    const got = await rows('replay');
    expect(got).toHaveLength(50);
    expect(got.find((r) => r.key === 'k7')).toEqual({ key: 'k7', revision: null, value: { total: 7 } });
  });

  test('revision guard: an older revision never replaces a newer one; a batch with two revisions keeps the newer', async () => {
    const sink = await open<number>('revisions');
    await sink.write([rec('w/eu/0-60000', 10, 2)]);
    await sink.write([rec('w/eu/0-60000', 5, 1), rec('w/us/0-60000', 1, 0)]);
    expect(await rows('revisions')).toEqual([
      { key: 'w/eu/0-60000', revision: '2', value: 10 },
      { key: 'w/us/0-60000', revision: '0', value: 1 },
    ]);
    await sink.write([rec('w/eu/0-60000', 11, 3), rec('w/us/0-60000', 2, 1), rec('w/us/0-60000', 3, 2)]);
    expect(await rows('revisions')).toEqual([
      { key: 'w/eu/0-60000', revision: '3', value: 11 },
      { key: 'w/us/0-60000', revision: '2', value: 3 },
    ]);
  });

  test('a failing batch rolls back entirely: none of its rows, nor its position', async () => {
    await schema.pool.query(
      `CREATE TABLE ${schema.table('payments')} (id text PRIMARY KEY, rev bigint, amount numeric CHECK (amount >= 0), note text)`,
    );
    await schema.pool.query(
      `CREATE TABLE ${schema.table('positions')} (name text PRIMARY KEY, position bigint NOT NULL)`,
    );
    const sink = await open<{ amount: number; note: string }>('payments', {
      createTable: false,
      keyColumn: 'id',
      revisionColumn: 'rev',
      columns: { amount: (v) => v.amount, note: (v) => v.note },
      position: { table: schema.table('positions'), name: 'payments', value: maxSeq },
    });
    await sink.write([rec('p1', { amount: 5, note: 'a' }, undefined, 1)]);
    const bad = [
      rec('p2', { amount: 7, note: 'b' }, undefined, 2),
      rec('p1', { amount: 6, note: 'changed' }, undefined, 3),
      rec('p3', { amount: -1, note: 'refused by the check' }, undefined, 4),
    ];
    await expect(sink.write(bad)).rejects.toThrow(/check constraint/);
    expect(await rows('payments', 'id')).toEqual([{ id: 'p1', rev: null, amount: '5', note: 'a' }]);
    expect(await sink.readPosition()).toBe(1);
  });

  test('the position is written in the batch transaction and never moves back', async () => {
    const sink = await open<number>('positioned', {
      position: { table: schema.table('consumer_positions'), name: 'orders-sink', value: maxSeq },
    });
    expect(await sink.readPosition()).toBeUndefined();
    await sink.write([rec('a', 1, undefined, 41), rec('b', 2, undefined, 42)]);
    expect(await sink.readPosition()).toBe(42);
    // A replay of an older batch (after a restart) does not move the position back.
    await sink.write([rec('a', 1, undefined, 41)]);
    expect(await sink.readPosition()).toBe(42);
    expect(await rows('positioned')).toHaveLength(2);
  });

  test('statements of your own run in the same transaction, and fail it with them', async () => {
    await schema.pool.query(`CREATE TABLE ${schema.table('audit')} (n int)`);
    const sink = await open<number>('withstatements', {
      statements: (records) => [
        { text: `INSERT INTO ${schema.table('audit')} (n) VALUES ($1)`, values: [records.length] },
        ...(records.some((r) => r.value < 0) ? [{ text: 'SELECT 1/0' }] : []),
      ],
    });
    await sink.write([rec('a', 1), rec('b', 2)]);
    await expect(sink.write([rec('c', -1)])).rejects.toThrow(/division by zero/);
    expect((await schema.pool.query(`SELECT n FROM ${schema.table('audit')}`)).rows).toEqual([{ n: 2 }]);
    expect((await rows('withstatements')).map((r) => r.key)).toEqual(['a', 'b']);
  });

  test('options are checked: unknown keys, createTable with own columns, bad identifiers', async () => {
    await expect(postgresSink({ table: 'a.b.c', connection: POSTGRES })).rejects.toThrow("'postgresSink.table'");
    await expect(
      postgresSink({ table: 't', connection: POSTGRES, createTable: true, columns: { n: (v) => v } }),
    ).rejects.toThrow('postgresSink.createTable');
    await expect(
      postgresSink({ table: 't', connection: POSTGRES, createTabel: true } as unknown as Parameters<
        typeof postgresSink
      >[0]),
    ).rejects.toThrow('createTabel');
  });

  test('a connection the server ends during a batch fails that batch, never the process; the next batch connects again', async () => {
    const sink = await open<number>('terminated', {
      statements: (records) => (records.some((r) => r.value < 0) ? [{ text: 'SELECT pg_sleep(30)' }] : []),
    });
    const uncaught: unknown[] = [];
    const onUncaught = (error: unknown) => void uncaught.push(error);
    process.on('uncaughtException', onUncaught);
    try {
      const write = sink.write([rec('a', -1)]);
      // The sink's backend, as an operator (or a failover) would end it, in the middle of the batch.
      for (let i = 0; ; i++) {
        const ended = await schema.pool.query(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND pid <> pg_backend_pid()",
        );
        if (ended.rowCount === 1) break;
        if (i > 200) throw new Error('the batch never reached its statement');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await expect(write).rejects.toThrow(/terminat/);
      // The client's 'error' event follows the socket's end by a turn or two.
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(uncaught).toEqual([]);
      await sink.write([rec('b', 1)]);
      expect((await rows('terminated')).map((r) => r.key)).toEqual(['b']);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });

  test('close waits for the batches under way, those waiting for a connection too: none is left unsettled', async () => {
    const sink = await postgresSink<number>({
      table: schema.table('closing'),
      // No connection timeout, pg's default: a batch waiting for a connection waits as long as it takes.
      connection: { ...POSTGRES, max: 1, connectionTimeoutMillis: 0 },
      createTable: true,
      statements: () => [{ text: 'SELECT pg_sleep(0.2)' }],
    });
    const first = sink.write([rec('a', 1)]);
    // The pool's one connection is taken: this batch waits for it.
    const second = sink.write([rec('b', 2)]);
    await sink.close();
    const outcome = (p: Promise<void>) =>
      p.then(
        () => 'committed',
        (e: unknown) => `failed: ${String(e)}`,
      );
    expect(await Promise.race([outcome(Promise.all([first, second]).then(() => undefined)), hang(5_000)])).toBe(
      'committed',
    );
    expect((await rows('closing')).map((r) => r.key)).toEqual(['a', 'b']);
    await expect(sink.write([rec('c', 3)])).rejects.toThrow(/closed/);
  });

  test('a sink actor end to end: rows are committed before the inputs are acked; a failing record is retried, then dead-lettered', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect<{ id: string; amount: number }>(rt.bus, '$DLQ.payments-pg');
    await schema.pool.query(
      `CREATE TABLE ${schema.table('e2e')} (key text PRIMARY KEY, revision bigint, value jsonb CHECK ((value->>'amount')::numeric >= 0))`,
    );
    const pgSink = await open<{ id: string; amount: number }>('e2e', { createTable: false });
    let commits = 0;
    let hold: Promise<void> | undefined;
    const sink = {
      name: pgSink.name,
      write: async (records: readonly SinkRecord<{ id: string; amount: number }>[]) => {
        await pgSink.write(records);
        commits++;
        if (hold !== undefined) await hold;
      },
    };
    const ref = rt.spawn(
      sinkActor({
        name: 'payments-pg',
        subscribe: 'payments',
        sink,
        key: (env: Envelope<{ id: string; amount: number }>) => `payment/${env.data.id}`,
        batch: { maxSize: 5, maxWaitMs: 20 },
        retry: { maxAttempts: 2, backoff: { initialMs: 10, maxMs: 10, jitter: 0 } },
      }),
    );
    let release!: () => void;
    hold = new Promise<void>((resolve) => {
      release = resolve;
    });
    for (let i = 0; i < 5; i++) await rt.bus.publish('payments', { id: `p${i}`, amount: i });
    await until(() => commits === 1);
    // Committed (visible to another connection) and not yet acknowledged.
    expect(await rows('e2e')).toHaveLength(5);
    expect(ref.counters.acked).toBe(0);
    expect(ref.inFlight).toBe(5);
    release();
    hold = undefined;
    await until(() => ref.counters.acked === 5);

    for (let i = 5; i < 10; i++) await rt.bus.publish('payments', { id: `p${i}`, amount: i === 7 ? -1 : i });
    await until(() => ref.counters.retried > 0);
    // Retry backoffs and batch waits run on the virtual clock, the database in real time.
    await until(
      () => ref.counters.deadLettered + ref.counters.acked === 10,
      () => clock.advance(10),
    );
    expect(ref.counters).toMatchObject({ acked: 9, deadLettered: 1 });
    expect(dlq.map((e) => e.data.id)).toEqual(['p7']);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain('check constraint');
    const got = await rows('e2e');
    expect(got.map((r) => r.key).sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 8, 9].map((i) => `payment/p${i}`).sort());
  });
});

function maxSeq(records: readonly SinkRecord<unknown>[]): number | undefined {
  let max: number | undefined;
  for (const r of records) {
    const seq = Number(r.envelope?.headers.seq);
    if (Number.isFinite(seq) && (max === undefined || seq > max)) max = seq;
  }
  return max;
}

/** Waits (real time: the database answers on its own) until `done`, for at most 5 s. */
async function until(done: () => boolean, step?: () => Promise<void>): Promise<void> {
  for (let i = 0; i < 500; i++) {
    await flush(1);
    if (done()) return;
    await step?.();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error('timed out waiting for the database');
}

/** Resolves with 'unsettled' after `ms`: what a promise that never settles loses a race to. */
function hang(ms: number): Promise<string> {
  return new Promise((resolve) => setTimeout(() => resolve('unsettled'), ms).unref());
}
