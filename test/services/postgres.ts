/**
 * The real PostgreSQL for tests: 127.0.0.1:5432, user `postgres` (trust auth), database `test`,
 * overridable with PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE. Each test file gets a fresh
 * schema `sluice_test_<random>`, dropped at the end.
 *
 * A test that needs the server checks {@link postgresMissing} first: under CI (`CI=true`) a missing
 * server fails the test, elsewhere the test is skipped with a message saying what to install.
 */
import { randomBytes } from 'node:crypto';
import type { PoolConfig } from 'pg';
import pg from 'pg';

export const POSTGRES: PoolConfig = {
  host: process.env.PGHOST ?? '127.0.0.1',
  port: Number(process.env.PGPORT ?? 5432),
  user: process.env.PGUSER ?? 'postgres',
  database: process.env.PGDATABASE ?? 'test',
  connectionTimeoutMillis: 5_000,
  ...(process.env.PGPASSWORD === undefined ? {} : { password: process.env.PGPASSWORD }),
};

const INSTALL_HINT =
  "install PostgreSQL (apt-get install postgresql), allow trust auth for 127.0.0.1 and run 'createdb test' as postgres";

/** Whether the server answers, tried once per process. */
let reachable: Promise<string | undefined> | undefined;
function probe(): Promise<string | undefined> {
  reachable ??= (async () => {
    const client = new pg.Client(POSTGRES);
    try {
      await client.connect();
      await client.query('SELECT 1');
      return undefined;
    } catch (error) {
      return error instanceof Error ? error.message : String(error);
    } finally {
      await client.end().catch(() => undefined);
    }
  })();
  return reachable;
}

/**
 * A reason to skip a test that needs PostgreSQL, or undefined when the server is there. Under CI a
 * missing server is no reason to skip: the test runs and fails when it connects.
 */
export async function postgresMissing(what: string): Promise<string | undefined> {
  const problem = await probe();
  if (problem === undefined || process.env.CI === 'true') return undefined;
  const reason = `${what} needs PostgreSQL on ${POSTGRES.host}:${POSTGRES.port} (${problem}): ${INSTALL_HINT}`;
  console.warn(`skipped: ${reason}`);
  return reason;
}

export interface TestSchema {
  /** `sluice_test_<random>`, created empty. */
  readonly name: string;
  /** A pool for the test's own queries. */
  readonly pool: pg.Pool;
  /** `schema.table` inside it. */
  table(name: string): string;
  /** Drops the schema and ends the pool. */
  drop(): Promise<void>;
}

/** Creates a fresh schema for one test file. */
export async function createTestSchema(): Promise<TestSchema> {
  const name = `sluice_test_${randomBytes(6).toString('hex')}`;
  const pool = new pg.Pool({ ...POSTGRES, max: 4 });
  pool.on('error', () => undefined);
  await pool.query(`CREATE SCHEMA ${name}`);
  return {
    name,
    pool,
    table: (table) => `${name}.${table}`,
    drop: async () => {
      try {
        await pool.query(`DROP SCHEMA IF EXISTS ${name} CASCADE`);
      } finally {
        await pool.end();
      }
    },
  };
}
