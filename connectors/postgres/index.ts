/**
 * A PostgreSQL sink on the `pg` package (an optional peer dependency: install `pg` to use it).
 * Each batch is one transaction of multi-row `INSERT ... ON CONFLICT (key) DO UPDATE` statements
 * with a revision guard, plus, optionally, the consumer position and statements of your own.
 * See docs/sinks.md.
 */

import type { Pool, PoolClient, PoolConfig } from 'pg';
import pg from 'pg';
import { ClosedError, OptionsError } from '../../runtime/errors.ts';
import { knownKeys, optionKeys } from '../../runtime/options.ts';
import { latestPerKey, type Sink, type SinkRecord } from '../../runtime/sinks/sink.ts';

/** A statement run in a batch's transaction. */
export interface PostgresStatement {
  readonly text: string;
  readonly values?: readonly unknown[];
}

/** Where the consumer position of a batch is kept, in the same transaction as its rows. */
export interface PostgresPosition<T> {
  /** A table `(name text primary key, position bigint not null)`; made by `createTable`. */
  table: string;
  /** The row of this consumer. */
  name: string;
  /**
   * The position a committed batch reaches (a stream sequence, an offset), or undefined to leave
   * it. Kept as the greatest one written: a replayed older batch does not move it back.
   */
  value: (records: readonly SinkRecord<T>[]) => number | bigint | undefined;
}

/** How a result's value becomes the columns of its row. */
export type PostgresColumns<T> = Readonly<Record<string, (value: T, record: SinkRecord<T>) => unknown>>;

export interface PostgresSinkOptions<T> {
  /** The target table, optionally `schema.table`. */
  table: string;
  /** A pool you own (the sink does not end it). Without it the sink makes one from `connection`. */
  pool?: Pool;
  /** Passed to `new pg.Pool(...)` as is: host, port, user, password, database, ssl, max, ... */
  connection?: PoolConfig;
  /**
   * Create the table (`key text primary key, revision bigint, value jsonb`) and the position
   * table when missing. Only with the default columns. @default false: the tables must exist
   */
  createTable?: boolean;
  /** The primary key (or unique) column the upsert conflicts on. @default 'key' */
  keyColumn?: string;
  /**
   * The revision column of the guard: a row is only replaced by a result of the same or a newer
   * revision. `null`: no revision column and no guard (the last write wins). @default 'revision'
   */
  revisionColumn?: string | null;
  /**
   * The value columns: name -> value for that column (`pg` converts it). @default
   * `{ value: JSON.stringify(value) }` into a `jsonb` column
   */
  columns?: PostgresColumns<T>;
  /** Write a consumer position in each batch's transaction. */
  position?: PostgresPosition<T>;
  /** More statements for each batch's transaction, run after its rows (and position). */
  statements?: (records: readonly SinkRecord<T>[]) => readonly PostgresStatement[];
}

const optionNames = optionKeys<keyof PostgresSinkOptions<unknown>>({
  table: true,
  pool: true,
  connection: true,
  createTable: true,
  keyColumn: true,
  revisionColumn: true,
  columns: true,
  position: true,
  statements: true,
});

// PostgreSQL takes at most 65535 parameters in one statement.
const MAX_PARAMETERS = 65_535;

/**
 * Makes a PostgreSQL sink; with `createTable` it creates the tables first.
 *
 * @example
 * const sink = await postgresSink({ table: 'totals', connection: { host: '127.0.0.1' }, createTable: true });
 */
export async function postgresSink<T = unknown>(options: PostgresSinkOptions<T>): Promise<PostgresSink<T>> {
  const sink = new PostgresSink<T>(options);
  if (options.createTable === true) {
    try {
      await sink.createTables();
    } catch (error) {
      await sink.close();
      throw error;
    }
  }
  return sink;
}

export class PostgresSink<T = unknown> implements Sink<T> {
  readonly name: string;
  readonly #pool: Pool;
  readonly #ownsPool: boolean;
  readonly #table: string;
  readonly #key: string;
  readonly #revision: string | undefined;
  readonly #columns: readonly [column: string, value: (value: T, record: SinkRecord<T>) => unknown, cast: string][];
  readonly #position: PostgresPosition<T> | undefined;
  readonly #statements: PostgresSinkOptions<T>['statements'];
  readonly #defaultColumns: boolean;
  #closed = false;
  /** Batches under way: close() lets them finish before it ends the pool. */
  readonly #writing = new Set<Promise<void>>();

  constructor(options: PostgresSinkOptions<T>) {
    if (options === null || typeof options !== 'object')
      throw new OptionsError('postgresSink', 'must be an options object', options);
    knownKeys('postgresSink', options, optionNames);
    this.#table = qualified('postgresSink.table', options.table);
    this.name = `postgres:${options.table}`;
    this.#key = identifier('postgresSink.keyColumn', options.keyColumn ?? 'key');
    this.#revision =
      options.revisionColumn === null
        ? undefined
        : identifier('postgresSink.revisionColumn', options.revisionColumn ?? 'revision');
    this.#defaultColumns = options.columns === undefined;
    const columns = options.columns ?? { value: (value: T) => JSON.stringify(value) ?? null };
    if (columns === null || typeof columns !== 'object')
      throw new OptionsError('postgresSink.columns', 'must map column names to functions', columns);
    this.#columns = Object.entries(columns).map(([column, fn]) => {
      if (typeof fn !== 'function')
        throw new OptionsError(
          `postgresSink.columns.${column}`,
          'must be a function (value, record) => column value',
          fn,
        );
      return [identifier(`postgresSink.columns.${column}`, column), fn, this.#defaultColumns ? '::jsonb' : ''];
    });
    if (options.createTable === true && !this.#defaultColumns)
      throw new OptionsError(
        'postgresSink.createTable',
        'only creates the default table (key, revision, value jsonb); create a table with your own columns yourself',
        true,
      );
    if (options.position !== undefined) {
      const p = options.position;
      qualified('postgresSink.position.table', p?.table);
      if (typeof p.name !== 'string' || p.name.length === 0)
        throw new OptionsError('postgresSink.position.name', 'must be a non-empty string', p.name);
      if (typeof p.value !== 'function')
        throw new OptionsError('postgresSink.position.value', 'must be a function (records) => position', p.value);
    }
    this.#position = options.position;
    if (options.statements !== undefined && typeof options.statements !== 'function')
      throw new OptionsError(
        'postgresSink.statements',
        'must be a function (records) => statements',
        options.statements,
      );
    this.#statements = options.statements;
    if (options.pool !== undefined) {
      this.#pool = options.pool;
      this.#ownsPool = false;
    } else {
      this.#pool = new pg.Pool(options.connection ?? {});
      this.#ownsPool = true;
      // An idle connection that breaks (a server restart) is reported here; without a listener
      // it would crash the process. The next batch gets a new connection, or fails and is retried.
      this.#pool.on('error', () => undefined);
    }
  }

  /** Creates the default table and the position table when missing. */
  async createTables(): Promise<void> {
    const revision = this.#revision === undefined ? '' : `, ${this.#revision} bigint`;
    const value = (this.#columns[0] as [string, unknown, string])[0];
    await this.#pool.query(
      `CREATE TABLE IF NOT EXISTS ${this.#table} (${this.#key} text PRIMARY KEY${revision}, ${value} jsonb)`,
    );
    if (this.#position !== undefined) {
      await this.#pool.query(
        `CREATE TABLE IF NOT EXISTS ${qualified('position.table', this.#position.table)} (name text PRIMARY KEY, position bigint NOT NULL)`,
      );
    }
  }

  /** The position stored for `position.name`, to resume from; undefined when none was written. */
  async readPosition(): Promise<number | undefined> {
    if (this.#position === undefined) throw new OptionsError('postgresSink.position', 'is not configured', undefined);
    const result = await this.#pool.query<{ position: string }>(
      `SELECT position FROM ${qualified('position.table', this.#position.table)} WHERE name = $1`,
      [this.#position.name],
    );
    const row = result.rows[0];
    return row === undefined ? undefined : Number(row.position);
  }

  /** Writes a batch in one transaction: all of it, or nothing and a rejection. */
  async write(records: readonly SinkRecord<T>[]): Promise<void> {
    if (this.#closed) throw new ClosedError(this.name);
    const statements = this.#build(records);
    if (statements.length === 0) return;
    const writing = this.#transaction(statements);
    this.#writing.add(writing);
    try {
      await writing;
    } finally {
      this.#writing.delete(writing);
    }
  }

  async #transaction(statements: readonly PostgresStatement[]): Promise<void> {
    const client: PoolClient = await this.#pool.connect();
    let broken: unknown;
    // A checked-out client has no listener of the pool's: a connection the server ends (a restart,
    // a terminated backend) would emit an unhandled 'error' and crash the process. The query that
    // was running rejects with it; the connection is not reused.
    const onError = (error: Error) => {
      broken ??= error;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      for (const s of statements) await client.query(s.text, s.values as unknown[] | undefined);
      await client.query('COMMIT');
    } catch (error) {
      try {
        await client.query('ROLLBACK');
      } catch (rollback) {
        // The connection is in an unknown state: the pool destroys it instead of reusing it.
        broken = rollback;
      }
      throw error;
    } finally {
      client.off('error', onError);
      client.release(broken instanceof Error ? broken : broken === undefined ? undefined : true);
    }
  }

  #build(records: readonly SinkRecord<T>[]): PostgresStatement[] {
    const out: PostgresStatement[] = [];
    const rows = latestPerKey(records);
    const width = 1 + (this.#revision === undefined ? 0 : 1) + this.#columns.length;
    const perStatement = Math.floor(MAX_PARAMETERS / width);
    const names = [
      this.#key,
      ...(this.#revision === undefined ? [] : [this.#revision]),
      ...this.#columns.map((c) => c[0]),
    ];
    const updates = names.slice(1).map((c) => `${c} = EXCLUDED.${c}`);
    let conflict: string;
    if (updates.length === 0) conflict = `ON CONFLICT (${this.#key}) DO NOTHING`;
    else {
      conflict = `ON CONFLICT (${this.#key}) DO UPDATE SET ${updates.join(', ')}`;
      if (this.#revision !== undefined) {
        const r = this.#revision;
        // Older never replaces newer; the same revision replaces itself (a replay writes the same).
        conflict += ` WHERE target.${r} IS NULL OR EXCLUDED.${r} IS NULL OR target.${r} <= EXCLUDED.${r}`;
      }
    }
    for (let from = 0; from < rows.length; from += perStatement) {
      const chunk = rows.slice(from, from + perStatement);
      const values: unknown[] = [];
      const tuples: string[] = [];
      for (const record of chunk) {
        const slots: string[] = [];
        values.push(record.key);
        slots.push(`$${values.length}`);
        if (this.#revision !== undefined) {
          values.push(record.revision ?? null);
          slots.push(`$${values.length}::bigint`);
        }
        for (const [, fn, cast] of this.#columns) {
          values.push(fn(record.value, record));
          slots.push(`$${values.length}${cast}`);
        }
        tuples.push(`(${slots.join(', ')})`);
      }
      out.push({
        text: `INSERT INTO ${this.#table} AS target (${names.join(', ')}) VALUES ${tuples.join(', ')} ${conflict}`,
        values,
      });
    }
    if (this.#position !== undefined) {
      const position = this.#position.value(records);
      if (position !== undefined) {
        const table = qualified('position.table', this.#position.table);
        out.push({
          text:
            `INSERT INTO ${table} AS p (name, position) VALUES ($1, $2) ` +
            'ON CONFLICT (name) DO UPDATE SET position = GREATEST(p.position, EXCLUDED.position)',
          values: [this.#position.name, String(position)],
        });
      }
    }
    if (this.#statements !== undefined) out.push(...this.#statements(records));
    return out;
  }

  /** Lets the batches under way finish (commit or fail), then ends the pool if the sink made it. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // An ending pool never hands a connection to a batch waiting for one, nor fails it: that
    // batch's write would never settle, and the inputs it holds would never be acknowledged.
    await Promise.allSettled(this.#writing);
    if (this.#ownsPool) await this.#pool.end();
  }
}

/** A quoted identifier: any name works, and none can inject SQL. */
function identifier(option: string, name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.includes('\0'))
    throw new OptionsError(option, 'must be a non-empty identifier', name);
  return `"${name.replaceAll('"', '""')}"`;
}

/** `table` or `schema.table`, each part quoted. */
function qualified(option: string, name: unknown): string {
  if (typeof name !== 'string')
    throw new OptionsError(option, "must be a table name ('table' or 'schema.table')", name);
  const parts = name.split('.');
  if (parts.length > 2) throw new OptionsError(option, "must be a table name ('table' or 'schema.table')", name);
  return parts.map((p) => identifier(option, p)).join('.');
}
