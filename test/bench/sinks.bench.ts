/**
 * `npm run bench -- sinks`: the exactly-once sinks against their floors (issue 11).
 *
 * - `postgres`: records in batches of BATCH into the real PostgreSQL on 127.0.0.1:5432 (database
 *   `test`, see test/services/postgres.ts), a fresh table each round. `sink`: `postgresSink().write`
 *   of each batch, one after the other. `actor`: a `sinkActor` fed by publishes, batch.maxSize
 *   BATCH, until every input is acknowledged. `pg`: the floor, the same multi-row upsert with its
 *   revision guard written by hand, one transaction per batch.
 * - `file`: the same into the JSON Lines file sink; each batch is one write and one fdatasync.
 *   `fs`: the floor, the same bytes appended and synced per batch with bare node:fs.
 *
 * Figures are records per second; each contender checks the rows (lines) it left.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { fileSink } from '../../connectors/file/index.ts';
import { postgresSink } from '../../connectors/postgres/index.ts';
import { createRuntime, type Sink, type SinkRecord, sinkActor } from '../../runtime/index.ts';
import { POSTGRES } from '../services/postgres.ts';
import { type Contender, defineBench, expectCount } from './harness.ts';

const BATCH = 500;

interface Order {
  readonly id: number;
  readonly user: string;
  readonly amount: number;
}

const order = (id: number): Order => ({ id, user: `u${(id * 7919) % 100_000}`, amount: (id * 37) % 1000 });
const records = (from: number, to: number): SinkRecord<Order>[] => {
  const out: SinkRecord<Order>[] = [];
  for (let i = from; i < to; i++) out.push({ key: `o/${i}`, value: order(i), revision: 0, envelope: undefined });
  return out;
};

async function pgSchema(): Promise<{ pool: pg.Pool; table: string; drop: () => Promise<void> }> {
  const schema = `sluice_bench_${randomBytes(4).toString('hex')}`;
  const pool = new pg.Pool({ ...POSTGRES, max: 4 });
  pool.on('error', () => undefined);
  await pool.query(`CREATE SCHEMA ${schema}`);
  await pool.query(`CREATE TABLE ${schema}.orders (key text PRIMARY KEY, revision bigint, value jsonb)`);
  return {
    pool,
    table: `${schema}.orders`,
    drop: async () => {
      await pool.query(`DROP SCHEMA ${schema} CASCADE`);
      await pool.end();
    },
  };
}

async function countRows(pool: pg.Pool, table: string, n: number): Promise<void> {
  const { rows } = await pool.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`);
  expectCount('rows', Number(rows[0]?.n), n);
}

/** Publishes n orders to a sink actor and waits until every one is acknowledged. */
async function throughActor(sink: Sink<Order>, n: number): Promise<void> {
  const runtime = createRuntime();
  const ref = runtime.spawn(
    sinkActor<Order>({
      name: 'bench-sink',
      subscribe: 'orders',
      sink,
      key: (env) => `o/${env.data.id}`,
      batch: { maxSize: BATCH, maxWaitMs: 5 },
    }),
  );
  for (let i = 0; i < n; i++) await runtime.bus.publish('orders', order(i));
  await runtime.idle();
  expectCount('acked', ref.counters.acked, n);
  await runtime.stop();
}

const pgSink: Contender = async (n) => {
  const db = await pgSchema();
  const sink = await postgresSink<Order>({ table: db.table, pool: db.pool });
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) await sink.write(records(i, Math.min(n, i + BATCH)));
      await countRows(db.pool, db.table, n);
    },
    dispose: db.drop,
  };
};

const pgActor: Contender = async (n) => {
  const db = await pgSchema();
  const sink = await postgresSink<Order>({ table: db.table, pool: db.pool });
  return {
    run: async () => {
      await throughActor(sink, n);
      await countRows(db.pool, db.table, n);
    },
    dispose: db.drop,
  };
};

const pgBare: Contender = async (n) => {
  const db = await pgSchema();
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) {
        const batch = records(i, Math.min(n, i + BATCH));
        const values: unknown[] = [];
        const tuples: string[] = [];
        for (const r of batch) {
          values.push(r.key, r.revision, JSON.stringify(r.value));
          const at = values.length;
          tuples.push(`($${at - 2}, $${at - 1}::bigint, $${at}::jsonb)`);
        }
        const client = await db.pool.connect();
        try {
          await client.query('BEGIN');
          await client.query(
            `INSERT INTO ${db.table} AS t (key, revision, value) VALUES ${tuples.join(', ')} ` +
              'ON CONFLICT (key) DO UPDATE SET revision = EXCLUDED.revision, value = EXCLUDED.value ' +
              'WHERE t.revision <= EXCLUDED.revision',
            values,
          );
          await client.query('COMMIT');
        } finally {
          client.release();
        }
      }
      await countRows(db.pool, db.table, n);
    },
    dispose: db.drop,
  };
};

function tempFile(): { path: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-bench-sinks-'));
  return { path: join(dir, 'out.jsonl'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

const countLines = (path: string, n: number) =>
  expectCount('lines', readFileSync(path, 'utf8').split('\n').length - 1, n);

const fileSinkWrites: Contender = async (n) => {
  const { path, remove } = tempFile();
  const sink = await fileSink<Order>({ path });
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) await sink.write(records(i, Math.min(n, i + BATCH)));
      countLines(path, n);
    },
    dispose: async () => {
      await sink.close();
      remove();
    },
  };
};

const fileActor: Contender = async (n) => {
  const { path, remove } = tempFile();
  const sink = await fileSink<Order>({ path });
  return {
    run: async () => {
      await throughActor(sink, n);
      countLines(path, n);
    },
    dispose: async () => {
      await sink.close();
      remove();
    },
  };
};

const fsBare: Contender = async (n) => {
  const { path, remove } = tempFile();
  const handle = await open(path, 'a');
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) {
        let text = '';
        for (const r of records(i, Math.min(n, i + BATCH)))
          text += `${JSON.stringify({ key: r.key, revision: r.revision, value: r.value })}\n`;
        await handle.write(text);
        await handle.datasync();
      }
      countLines(path, n);
    },
    dispose: async () => {
      await handle.close();
      remove();
    },
  };
};

export default defineBench({
  bench: 'sinks',
  unit: 'msg/s',
  contenders: ['sink', 'actor', 'pg', 'fs'],
  cases: {
    postgres: {
      messages: 100_000,
      description: `upserts in batches of ${BATCH}, one transaction each, into PostgreSQL on 127.0.0.1`,
      contenders: { sink: pgSink, actor: pgActor, pg: pgBare },
    },
    file: {
      messages: 200_000,
      description: `JSON Lines in batches of ${BATCH}, one write and one fdatasync each`,
      contenders: { sink: fileSinkWrites, actor: fileActor, fs: fsBare },
    },
  },
  ratios: [
    ['sink', 'pg'],
    ['sink', 'fs'],
  ],
  notes: ['records are ~60-byte orders under keys o/<id>, revision 0; every run starts from an empty table or file'],
});
