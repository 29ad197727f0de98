import type { Envelope } from '../envelope.ts';
import { OptionsError } from '../errors.ts';

/**
 * One record for a sink: a value under a deterministic idempotency key. A sink keeps one result
 * per key, so a replayed record (after a crash, a retry, a restart) lands on the result it already
 * wrote instead of doubling it.
 */
export interface SinkRecord<T = unknown> {
  /** Derived from the input (window `name/key/start-end`, stream and sequence), never random. */
  readonly key: string;
  readonly value: T;
  /**
   * Which result of the key this is (a window's `revision`: 0, then 1 per update). A sink never
   * lets a lower revision replace a higher one. `undefined`: the key has one result only.
   */
  readonly revision: number | undefined;
  /** The envelope the record was made from, for positions and headers; sinks do not write it. */
  readonly envelope: Envelope<unknown> | undefined;
}

/**
 * Somewhere outside the runtime that keeps one result per idempotency key. `write` resolves once
 * the whole batch is committed (durable in the sink) and rejects if any of it may not be: the
 * inputs are then retried, and a retried batch must be harmless to write again.
 */
export interface Sink<T = unknown> {
  /** Names the sink in errors and telemetry. */
  readonly name: string;
  write(records: readonly SinkRecord<T>[]): Promise<void>;
  close?(): Promise<void>;
  /**
   * Writes a caller may have under way at once (@default 1). A sink taking more keeps their
   * order: each resolves after the ones called before it, and fails if one of them failed.
   */
  readonly writesAtOnce?: number;
}

/** The header carrying a message's idempotency key (window results set it). */
export const IDEMPOTENCY_KEY_HEADER = 'sluice-idempotency-key';

/**
 * @internal One broker message id per result (`Nats-Msg-Id`, AMQP's `message_id`, MQTT's): the key,
 * and `<key>#<revision>` for a record with a revision. A key that has a `#` in it ends in one more,
 * so that no two results share an id (key `a#1` with no revision, and key `a` at revision 1, both
 * came out as `a#1`: JetStream's de-duplication dropped the second).
 */
export function messageIdOf(record: SinkRecord<unknown>): string {
  if (record.revision !== undefined) return `${record.key}#${record.revision}`;
  return record.key.includes('#') ? `${record.key}#` : record.key;
}

/** How an input becomes a {@link SinkRecord}. */
export interface SinkRecordOptions<In, T> {
  /**
   * The idempotency key of an input. Derive it from what a replay repeats (an order id, a stream
   * sequence), never from a random value or the clock. @default a window result's
   * `idempotencyKey`, else the `sluice-idempotency-key` header; an input with neither is
   * dead-lettered with an `OptionsError`
   */
  key?: (env: Envelope<In>) => string;
  /** @default a window result's `revision`, else none */
  revision?: (env: Envelope<In>) => number | undefined;
  /** What is written. @default `env.data` (a window result as a whole: key, start, end, value, ...) */
  value?: (env: Envelope<In>) => T;
}

interface Revisioned {
  readonly idempotencyKey?: unknown;
  readonly revision?: unknown;
}

/** @internal Builds the record of one input; throws an `OptionsError` naming `where` when it has no key. */
export function sinkRecordOf<In, T>(
  env: Envelope<In>,
  options: SinkRecordOptions<In, T>,
  where: string,
): SinkRecord<T> {
  const data = env.data as Revisioned | null | undefined;
  const windowed = typeof data === 'object' && data !== null && typeof data.idempotencyKey === 'string';
  let key: unknown;
  if (options.key !== undefined) key = options.key(env);
  else if (windowed) key = data.idempotencyKey;
  else key = env.headers[IDEMPOTENCY_KEY_HEADER];
  if (typeof key !== 'string' || key.length === 0) {
    throw new OptionsError(
      `${where}.key`,
      `message '${env.id}' on '${env.subject}' has no idempotency key (a window result's idempotencyKey, ` +
        `the '${IDEMPOTENCY_KEY_HEADER}' header or the sink's key option must give a non-empty string)`,
      key,
    );
  }
  let revision: unknown;
  if (options.revision !== undefined) revision = options.revision(env);
  else if (windowed) revision = data.revision;
  if (revision !== undefined && (typeof revision !== 'number' || !Number.isSafeInteger(revision) || revision < 0)) {
    throw new OptionsError(`${where}.revision`, `message '${env.id}': must be an integer >= 0 or undefined`, revision);
  }
  const value = options.value === undefined ? (env.data as unknown as T) : options.value(env);
  return { key, value, revision, envelope: env as Envelope<unknown> };
}

/**
 * @internal Whether `record` takes the place of `held`, a record of the same key: its revision is
 * as high or higher (a record without one counts lowest, and of two equal the later wins).
 */
export function supersedes(record: SinkRecord<unknown>, held: SinkRecord<unknown>): boolean {
  return (record.revision ?? -1) >= (held.revision ?? -1);
}

/**
 * One record per key, the newest revision (the later one of equal revisions): what an upsert of
 * the batch leaves. PostgreSQL refuses to update one row twice in a statement, so a batch holding
 * two results of a window sends only the newest. Keeps the order of first appearance.
 */
export function latestPerKey<T>(records: readonly SinkRecord<T>[]): SinkRecord<T>[] {
  const byKey = new Map<string, SinkRecord<T>>();
  let duplicates = false;
  for (const record of records) {
    const held = byKey.get(record.key);
    if (held === undefined) byKey.set(record.key, record);
    else {
      duplicates = true;
      if (supersedes(record, held)) byKey.set(record.key, record);
    }
  }
  return duplicates ? [...byKey.values()] : (records as SinkRecord<T>[]);
}
