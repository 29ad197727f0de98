/**
 * Data integration: a durable stream of order events into PostgreSQL, exactly-once in effect.
 *
 *   orders.placed, orders.cancelled (stream ORDERS, on disk)
 *     ─► reshape   drops the producer's repeated sends, one row per event ─► rows.orders
 *          rows.orders ─┬─► orders-pg    upsert by order id, status as revision ─► <schema>.orders
 *                       └─► revenue      tumbling 1 min of placement time        ─► rows.revenue
 *                                rows.revenue ─► revenue-pg  upsert by window, revision guard ─► <schema>.revenue_per_minute
 *
 * The producer retries: some events reach the stream twice, with the same event id. A stream
 * event is acknowledged only once the rows made from it are committed in PostgreSQL (and, for
 * revenue, once its minute's window was written), so a crash replays what was not written yet.
 * Every row has a key derived from the data (order id, window bounds) and a revision (order
 * status, window revision), so a replay lands on the rows it already wrote: run 2 reads the whole
 * stream again from sequence 1 and leaves the tables as they were. Running the example twice
 * does the same across processes (the schema is kept).
 *
 * Connects to 127.0.0.1:5432, user postgres, database test; PGHOST, PGPORT, PGUSER, PGPASSWORD
 * and PGDATABASE override them.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PoolConfig } from 'pg';
import pg from 'pg';
import { distinct, filter, map } from 'rxjs';
import { actor, createRuntime, durable, LmdbStore, type Runtime, STREAM_HEADERS, sinkActor, withData } from 'sluice';
import { type PostgresSink, postgresSink } from 'sluice/connectors/postgres';
import { agg, eventTime, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { seededRandom } from 'sluice/testing';

export interface OrderLine {
  sku: string;
  qty: number;
  unitCents: number;
}

export interface Order {
  id: string;
  customer: string;
  country: string;
  placedAt: number;
  lines: OrderLine[];
}

/** What the producer publishes: the order as it stands after the event. */
export interface OrderEvent {
  /** The producer's id of the event; a retried send repeats it. */
  eventId: string;
  type: 'placed' | 'cancelled';
  order: Order;
  /** Event time (ms). */
  at: number;
}

/** One row of the orders table, as the reshape actor makes it. */
export interface OrderRow {
  orderId: string;
  customer: string;
  country: string;
  items: number;
  totalCents: number;
  status: 'placed' | 'cancelled';
  placedAt: number;
  /** The stream sequence it was made from. */
  seq: number;
}

export interface Revenue {
  orders: number;
  revenueCents: number;
}

export interface OrdersToPostgresOptions {
  orders?: number;
  seed?: number;
  print?: (line: string) => void;
  /** The schema the tables go in; created when missing and kept. @default 'sluice_orders_example' */
  schema?: string;
  /** PostgreSQL connection. @default 127.0.0.1:5432, user postgres, database test, or the PG* variables */
  connection?: PoolConfig;
  /** Where the store goes; emptied first. @default `.data/orders-to-postgres` in the repository */
  dir?: string;
}

export interface TableCounts {
  orders: number;
  cancelled: number;
  revenueRows: number;
  revenueCents: number;
  /** The orders sink's position row: the greatest stream sequence committed. */
  position: number | undefined;
}

export interface OrdersToPostgresResult {
  events: OrderEvent[];
  /** The events in publish order, repeated sends included: the stream's order. */
  sent: OrderEvent[];
  schema: string;
  /** The tables before run 1 (left by an earlier invocation), after run 1 and after run 2. */
  before: TableCounts;
  afterRun1: TableCounts;
  afterRun2: TableCounts;
  drained: boolean;
}

export const START = Date.UTC(2026, 0, 1, 12, 0, 0);
const MINUTE = 60_000;
export const MAX_DISORDER_MS = 2_000;
const SKUS: Record<string, number> = { apple: 50, bread: 225, cheese: 780, dates: 410, eggs: 299 };
const COUNTRIES = ['de', 'fr', 'nl', 'es'];
const STREAM = 'ORDERS';
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const CONNECTION: PoolConfig = {
  host: process.env.PGHOST ?? '127.0.0.1',
  port: Number(process.env.PGPORT ?? 5432),
  user: process.env.PGUSER ?? 'postgres',
  database: process.env.PGDATABASE ?? 'test',
  connectionTimeoutMillis: 5_000,
  ...(process.env.PGPASSWORD === undefined ? {} : { password: process.env.PGPASSWORD }),
};

/** Statuses in the order they happen: the revision of an order's row. */
const STATUS_REVISION = { placed: 0, cancelled: 1 } as const;

/** Publishes generated order events into a stream, then writes them to PostgreSQL twice over. */
export async function main(options: OrdersToPostgresOptions = {}): Promise<OrdersToPostgresResult> {
  const print = options.print ?? ((line: string) => console.log(line));
  const schema = options.schema ?? 'sluice_orders_example';
  if (!/^[a-z_][a-z0-9_]*$/.test(schema)) throw new Error(`schema '${schema}': lower-case letters, digits and _ only`);
  const connection = options.connection ?? CONNECTION;
  const dir = options.dir ?? join(ROOT, '.data', 'orders-to-postgres');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });

  const pool = new pg.Pool({ ...connection, max: 2 });
  pool.on('error', () => undefined);
  try {
    await pool.query('SELECT 1');
  } catch (error) {
    await pool.end();
    throw new Error(
      `orders-to-postgres needs PostgreSQL on ${connection.host}:${connection.port}, database ${connection.database} ` +
        `(${error instanceof Error ? error.message : String(error)}); set PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE`,
    );
  }
  try {
    await createTables(pool, schema);
    const { events, sent } = generate(options.orders ?? 200, options.seed ?? 3);
    const cancelled = events.filter((e) => e.type === 'cancelled').length;
    print(
      `orders-to-postgres: ${events.length - cancelled} orders placed, ${cancelled} cancelled; ${sent.length - events.length} of the ${events.length} events sent twice by a retrying producer`,
    );
    print(`PostgreSQL ${connection.host}:${connection.port}, database ${connection.database}, schema ${schema}`);
    const before = await counts(pool, schema);
    if (before.orders > 0) print(`the tables hold rows from an earlier run: ${describe(before)}`);

    const store = new LmdbStore({ path: join(dir, 'store') });
    try {
      {
        const runtime = createRuntime({ store, streams: [{ name: STREAM, subjects: ['orders.>'] }] });
        // Published together, the appends share the store's group commits; each resolves once synced.
        await Promise.all(sent.map((e) => runtime.bus.publish(`orders.${e.type}`, e)));
        print(
          `published to stream ${STREAM} in ${relative(process.cwd(), dir) || '.'}/store: sequences 1-${runtime.stream(STREAM).info().last}\n`,
        );
        await runtime.stop();
      }

      print(`run 1: consumer 'reshape' reads the stream from sequence 1`);
      const run1 = await runOnce(store, connection, schema, 'reshape', print);
      const afterRun1 = await counts(pool, schema);
      print(`  tables now: ${describe(afterRun1)}`);

      print(`run 2: consumer 'reshape-again' reads the whole stream again, as a consumer that lost its position would`);
      const run2 = await runOnce(store, connection, schema, 'reshape-again', print);
      const afterRun2 = await counts(pool, schema);
      const same = JSON.stringify(afterRun2) === JSON.stringify(afterRun1);
      print(`  tables now: ${describe(afterRun2)}${same ? ': the replay doubled nothing' : ': CHANGED'}\n`);

      const minutes = await pool.query<{ minute: Date; orders: number; revenue: string; revision: string }>(
        `SELECT minute, orders, revenue, revision FROM ${schema}.revenue_per_minute ORDER BY minute`,
      );
      print(`${'minute (UTC)'.padEnd(14)}${'orders'.padStart(6)}${'revenue'.padStart(12)}`);
      for (const r of minutes.rows) {
        print(
          `${r.minute.toISOString().slice(11, 16).padEnd(14)}${String(r.orders).padStart(6)}${r.revenue.padStart(12)}`,
        );
      }
      return {
        events,
        sent,
        schema,
        before,
        afterRun1,
        afterRun2,
        drained: run1 && run2,
      };
    } finally {
      await store.close();
    }
  } finally {
    await pool.end();
  }
}

/** One run of the job over the whole stream with the named consumer; resolves with whether it drained. */
async function runOnce(
  store: LmdbStore,
  connection: PoolConfig,
  schema: string,
  consumer: string,
  print: (line: string) => void,
): Promise<boolean> {
  const runtime = createRuntime({
    store,
    streams: [{ name: STREAM, subjects: ['orders.>'] }],
    logger: { debug() {}, info() {}, warn: print, error: print },
  });
  const ordersSink = await postgresSink<OrderRow>({
    table: `${schema}.orders`,
    connection,
    keyColumn: 'order_id',
    columns: {
      customer: (r) => r.customer,
      country: (r) => r.country,
      items: (r) => r.items,
      total: (r) => (r.totalCents / 100).toFixed(2),
      status: (r) => r.status,
      placed_at: (r) => new Date(r.placedAt),
    },
    // The greatest stream sequence committed, in the same transaction as the rows.
    position: {
      table: `${schema}.positions`,
      name: 'orders',
      value: (records) => Math.max(...records.map((r) => r.value.seq)),
    },
  });
  const revenueSink = await postgresSink<WindowResult<Revenue>>({
    table: `${schema}.revenue_per_minute`,
    connection,
    columns: {
      minute: (w) => new Date(w.start),
      orders: (w) => w.value.orders,
      revenue: (w) => (w.value.revenueCents / 100).toFixed(2),
    },
  });
  try {
    spawnJob(runtime, consumer, ordersSink, revenueSink);
    const reader = runtime.stream(STREAM).consumer(consumer);
    // The stream is finite: once every event has been delivered, stopping ends the input and the
    // last minute's window fires.
    for (;;) {
      await runtime.idle();
      const lag = reader.lag();
      if (lag.messages === lag.ackPending) break;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const report = await runtime.stop({ deadlineMs: 10_000 });
    const info = runtime.stream(STREAM).info();
    print(
      `  consumer '${consumer}' at position ${reader.position} (the stream ends at ${info.last}), lag ${reader.lag().messages}`,
    );
    return report.drained;
  } finally {
    await ordersSink.close();
    await revenueSink.close();
  }
}

function spawnJob(
  runtime: Runtime,
  consumer: string,
  ordersSink: PostgresSink<OrderRow>,
  revenueSink: PostgresSink<WindowResult<Revenue>>,
): void {
  runtime.spawn(
    actor<OrderEvent, OrderRow>({
      name: 'reshape',
      // Up to the whole stream may wait for its rows to be committed: let the consumer deliver it.
      subscribe: durable<OrderEvent>(STREAM, { consumer, maxAckPending: 100_000 }),
      output: 'rows.orders',
      pipeline: (event$) =>
        event$.pipe(
          // A repeated send is dropped (settled: its first copy makes the row). The set grows with
          // the stream; a long-running job would keep only the ids of the last minutes.
          distinct((env) => env.data.eventId),
          map((env) => withData(env, toRow(env.data, Number(env.headers[STREAM_HEADERS.sequence])))),
        ),
    }),
  );
  runtime.spawn(
    sinkActor<OrderRow, OrderRow>({
      name: 'orders-pg',
      subscribe: 'rows.orders',
      sink: ordersSink,
      // The order id is the key: every event of an order, and every replay of one, lands on its row.
      key: (env) => env.data.orderId,
      // A cancelled order stays cancelled when its placed event is replayed after it.
      revision: (env) => STATUS_REVISION[env.data.status],
    }),
  );
  runtime.spawn(
    actor<OrderRow, WindowResult<Revenue>>({
      name: 'revenue',
      subscribe: 'rows.orders',
      output: 'rows.revenue',
      pipeline: (row$, ctx) =>
        row$.pipe(
          filter((env) => env.data.status === 'placed'),
          eventTime((r: OrderRow) => r.placedAt),
          watermarks({ maxOutOfOrdernessMs: MAX_DISORDER_MS, clock: ctx.clock }),
          tumbling({
            name: 'revenue',
            sizeMs: MINUTE,
            keyed: false,
            aggregate: agg.combine({ orders: agg.count(), revenueCents: agg.sum((r: OrderRow) => r.totalCents) }),
          }),
        ),
    }),
  );
  // A window result's idempotency key and revision are the row's key and guard (the defaults).
  runtime.spawn(sinkActor({ name: 'revenue-pg', subscribe: 'rows.revenue', sink: revenueSink }));
}

/** The per-event transformation: an event becomes the row of its order. */
export function toRow(event: OrderEvent, seq: number): OrderRow {
  const { order } = event;
  return {
    orderId: order.id,
    customer: order.customer,
    country: order.country,
    items: order.lines.reduce((n, l) => n + l.qty, 0),
    totalCents: order.lines.reduce((n, l) => n + l.qty * l.unitCents, 0),
    status: event.type,
    placedAt: order.placedAt,
    seq,
  };
}

async function createTables(pool: pg.Pool, schema: string): Promise<void> {
  await pool.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
  await pool.query(`CREATE TABLE IF NOT EXISTS ${schema}.orders (
    order_id text PRIMARY KEY, revision bigint, customer text NOT NULL, country text NOT NULL,
    items integer NOT NULL, total numeric(12, 2) NOT NULL, status text NOT NULL, placed_at timestamptz NOT NULL)`);
  await pool.query(`CREATE TABLE IF NOT EXISTS ${schema}.revenue_per_minute (
    key text PRIMARY KEY, revision bigint, minute timestamptz NOT NULL, orders integer NOT NULL, revenue numeric(12, 2) NOT NULL)`);
  await pool.query(`CREATE TABLE IF NOT EXISTS ${schema}.positions (name text PRIMARY KEY, position bigint NOT NULL)`);
}

async function counts(pool: pg.Pool, schema: string): Promise<TableCounts> {
  const o = await pool.query<{ n: string; cancelled: string }>(
    `SELECT count(*) AS n, count(*) FILTER (WHERE status = 'cancelled') AS cancelled FROM ${schema}.orders`,
  );
  const r = await pool.query<{ n: string; cents: string | null }>(
    `SELECT count(*) AS n, sum(revenue * 100) AS cents FROM ${schema}.revenue_per_minute`,
  );
  const p = await pool.query<{ position: string }>(`SELECT position FROM ${schema}.positions WHERE name = 'orders'`);
  return {
    orders: Number(o.rows[0]?.n),
    cancelled: Number(o.rows[0]?.cancelled),
    revenueRows: Number(r.rows[0]?.n),
    revenueCents: Number(r.rows[0]?.cents ?? 0),
    position: p.rows[0] === undefined ? undefined : Number(p.rows[0].position),
  };
}

function describe(c: TableCounts): string {
  return (
    `orders ${c.orders} rows (${c.cancelled} cancelled), revenue_per_minute ${c.revenueRows} rows ` +
    `(${(c.revenueCents / 100).toFixed(2)} in all), positions: orders through sequence ${c.position ?? '-'}`
  );
}

/**
 * Orders placed over ten minutes of event time, one in eight cancelled a little later. Events are
 * sent in order of arrival (event time plus up to a second of delay), and one in fifteen is sent
 * again a few events later, as a producer that retries after a lost acknowledgement does.
 */
export function generate(orders: number, seed: number): { events: OrderEvent[]; sent: OrderEvent[] } {
  // Seeded, so every run and every test sees the same stream.
  const rnd = seededRandom(seed);
  const pick = <T>(list: readonly T[]) => list[Math.floor(rnd() * list.length)] as T;
  const skus = Object.keys(SKUS);
  const events: OrderEvent[] = [];
  const times = Array.from({ length: orders }, () => START + Math.floor(rnd() * 10 * MINUTE)).sort((a, b) => a - b);
  for (const [i, placedAt] of times.entries()) {
    const lines = Array.from({ length: 1 + Math.floor(rnd() * 3) }, () => {
      const sku = pick(skus);
      return { sku, qty: 1 + Math.floor(rnd() * 4), unitCents: SKUS[sku] as number };
    });
    const order: Order = {
      id: `o-${String(i + 1).padStart(4, '0')}`,
      customer: `c-${String(Math.floor(rnd() * 60)).padStart(3, '0')}`,
      country: pick(COUNTRIES),
      placedAt,
      lines,
    };
    events.push({ eventId: `e-${order.id}-placed`, type: 'placed', order, at: placedAt });
    if (rnd() < 0.125) {
      const at = placedAt + 5_000 + Math.floor(rnd() * 60_000);
      events.push({ eventId: `e-${order.id}-cancelled`, type: 'cancelled', order, at });
    }
  }
  const arrivals = events.map((e) => ({ e, at: e.at + Math.floor(rnd() * 1_000) }));
  arrivals.sort((a, b) => a.at - b.at);
  const sent: OrderEvent[] = [];
  const again: { e: OrderEvent; after: number }[] = [];
  for (const [i, { e }] of arrivals.entries()) {
    sent.push(e);
    for (const r of again.filter((r) => r.after === i)) sent.push(r.e);
    if (rnd() < 1 / 15) again.push({ e, after: i + 1 + Math.floor(rnd() * 3) });
  }
  for (const r of again.filter((r) => r.after >= arrivals.length)) sent.push(r.e);
  events.sort((a, b) => a.at - b.at);
  return { events, sent };
}
