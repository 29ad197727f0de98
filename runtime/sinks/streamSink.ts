import type { Logger } from '../actors/actor.ts';
import { isLiteral, subjectMatches, validateSubject } from '../bus/subjects.ts';
import { createEnvelope } from '../envelope.ts';
import { CorruptRecordError, OptionsError, StreamError } from '../errors.ts';
import type { StoreBatch } from '../store/types.ts';
import { type StoredMessage, StreamImpl } from '../streams/stream.ts';
import type { Stream } from '../streams/types.ts';
import { IDEMPOTENCY_KEY_HEADER, type Sink, type SinkRecord } from './sink.ts';

/** Options of {@link streamSink}. */
export interface StreamSinkOptions {
  /** The stream to append to: `runtime.stream('RESULTS')`, a stream of a runtime with a store. */
  stream: Stream;
  /**
   * The subject the records are stored under (what consumers' filters match): a literal subject
   * the stream captures. @default the stream's subject, when it has one literal subject
   */
  subject?: string;
  /** Names the sink in errors. @default `streamSink(<stream>)` */
  name?: string;
  /** Where corrupt entries of its de-duplication set are reported. @default console */
  logger?: Logger;
}

/** The header an appended record's revision is kept in, when it has one. */
export const REVISION_HEADER = 'sluice-revision';

/** @internal The de-duplication set of a stream: idempotency key -> the record that holds it. */
export function dedupeNamespace(stream: string): string {
  return `sluice.dedupe/${stream}`;
}

/** @internal The same set indexed by sequence (zero-padded, so byte order is numeric order), for retention. */
export function dedupeSeqNamespace(stream: string): string {
  return `sluice.dedupe-seq/${stream}`;
}

/** What the set keeps per key: the revision held (`null`: none) and the sequence of its record. */
interface Held {
  readonly r: number | null;
  /** Filled in while the batch is built, once the append gave the sequence. */
  s: number;
}

interface Pending {
  readonly held: Held;
  /** Whether the batch that appended the key committed. */
  readonly committed: Promise<boolean>;
}

/**
 * Keys appended by batches that have not committed yet, per stream, shared by every sink on it:
 * store reads see committed writes only, so without this two concurrent batches would both find a
 * key missing and both append it.
 */
const pendingByStream = new WeakMap<StreamImpl, Map<string, Pending>>();

const SEQ_DIGITS = 16; // Number.MAX_SAFE_INTEGER has 16 digits
const seqKey = (seq: number) => String(seq).padStart(SEQ_DIGITS, '0');
/** Entries of records retention removed, forgotten per write beyond the batch's own size. */
const PRUNE_EXTRA = 64;

/**
 * A sink that appends each record to a stream of the embedded store, once per idempotency key:
 * the de-duplication set lives in the same store and is written in the same batch as the append,
 * so a replayed record (the same key; for records with revisions, the same key at a revision not
 * newer than the one held) is never appended twice, however long after the first write it comes,
 * and across restarts. A newer revision is appended as a new record. A key is forgotten once the
 * stream's retention removed the record that holds it (see docs/sinks.md).
 *
 * Records are appended straight to the store, not published: the stream's consumers deliver them,
 * bus subscribers of the subject do not see them. Each record keeps the key of its input and gets
 * the header `sluice-idempotency-key` (and `sluice-revision` when it has one).
 *
 * @example
 * const results = runtime.stream({ name: 'RESULTS', subjects: ['results'] });
 * runtime.spawn(sinkActor({ name: 'to-results', subscribe: durable('ORDERS', { consumer: 'r' }), sink: streamSink({ stream: results }) }));
 */
export function streamSink<T = unknown>(options: StreamSinkOptions): Sink<T> {
  const stream = options?.stream;
  if (!(stream instanceof StreamImpl)) {
    throw new OptionsError('streamSink.stream', "must be a stream of a runtime: runtime.stream('NAME')", stream);
  }
  const name = options.name ?? `streamSink(${stream.name})`;
  let subject = options.subject;
  if (subject === undefined) {
    const only = stream.subjects.length === 1 ? (stream.subjects[0] as string) : undefined;
    if (only === undefined || !isLiteral(only)) {
      throw new OptionsError(
        `${name}.subject`,
        `stream '${stream.name}' captures ${JSON.stringify(stream.subjects)}: name the literal subject to store records under`,
        subject,
      );
    }
    subject = only;
  }
  validateSubject(subject, 'publish');
  const stored = subject;
  if (!stream.subjects.some((p) => subjectMatches(p, stored))) {
    throw new OptionsError(
      `${name}.subject`,
      `must be a subject stream '${stream.name}' captures (${stream.subjects.join(', ')})`,
      subject,
    );
  }
  let pending = pendingByStream.get(stream);
  if (pending === undefined) {
    pending = new Map();
    pendingByStream.set(stream, pending);
  }
  const inFlight = pending;
  const ns = dedupeNamespace(stream.name);
  const seqNs = dedupeSeqNamespace(stream.name);
  const store = stream.store;
  const log = options.logger ?? console;

  const heldOf = (key: string): Held | undefined =>
    inFlight.get(key)?.held ?? (store.getKey(ns, key) as Held | undefined);

  /** Forgets keys whose records retention removed: at most `max` of them, in this batch. */
  const prune = (b: StoreBatch, max: number) => {
    const first = store.bounds(stream.log).first;
    for (const entry of store.scan(seqNs, '', { limit: max })) {
      const seq = Number(entry.key);
      if (!(seq < first)) break;
      b.delete(seqNs, entry.key);
      if (entry.error !== undefined) {
        log.error(`${name}: forgot a corrupt index entry of its de-duplication set: ${entry.error.message}`);
        continue;
      }
      const key = entry.value as string;
      if (typeof key !== 'string' || inFlight.has(key)) continue;
      let held: Held | undefined;
      try {
        held = store.getKey(ns, key) as Held | undefined;
      } catch (error) {
        if (!(error instanceof CorruptRecordError)) throw error;
        // Unreadable, so whether a newer record holds the key is unknown. Kept, it would fail
        // every batch from here on, as each prunes it again: forgotten, a replay of the key may
        // be appended once more, as after retention.
        log.error(`${name}: forgot key '${key}' of its de-duplication set, whose entry is corrupt: ${error.message}`);
        b.delete(ns, key);
        continue;
      }
      // A newer revision's record holds the key now: that one is still stored.
      if (held !== undefined && held.s === seq) b.delete(ns, key);
    }
  };

  return {
    name,
    async write(records: readonly SinkRecord<T>[]): Promise<void> {
      if (records.length === 0) return;
      const waitFor: Promise<boolean>[] = [];
      let corrupt: CorruptRecordError | undefined;
      const mine: [string, Held][] = [];
      let after: (() => void) | undefined;
      let resolveCommit!: (ok: boolean) => void;
      const committed = new Promise<boolean>((resolve) => {
        resolveCommit = resolve;
      });
      const batch = store.batch((b) => {
        const out: StoredMessage[] = [];
        const entries: [string, Held][] = [];
        for (const record of records) {
          const revision = record.revision ?? null;
          let held: Held | undefined;
          try {
            held = heldOf(record.key);
          } catch (error) {
            if (!(error instanceof CorruptRecordError)) throw error;
            // Whether this key was appended is unknown: it is not appended (a replay must never
            // double it), and the write fails after the others committed, so a retry finds them
            // held and only this record fails again.
            corrupt ??= error;
            continue;
          }
          if (held !== undefined && (held.r === null || revision === null || held.r >= revision)) {
            const other = inFlight.get(record.key);
            // Held by a batch still committing: this one resolves only once that one did.
            if (other !== undefined && other.committed !== committed) waitFor.push(other.committed);
            continue;
          }
          const env = record.envelope;
          const headers: Record<string, string> = { [IDEMPOTENCY_KEY_HEADER]: record.key };
          if (revision !== null) headers[REVISION_HEADER] = String(revision);
          out.push(
            stream.record(createEnvelope(stored, record.value, { key: env?.key, eventTime: env?.eventTime, headers })),
          );
          // The sequence is filled in once the append gave it, below, in the same synchronous build.
          const entry: Held = { r: revision, s: 0 };
          inFlight.set(record.key, { held: entry, committed });
          mine.push([record.key, entry]);
          entries.push([record.key, entry]);
        }
        prune(b, records.length + PRUNE_EXTRA);
        if (out.length === 0) return;
        after = stream.appendIn(b, out, (range) => {
          for (let i = 0; i < entries.length; i++) {
            const [key, entry] = entries[i] as [string, Held];
            entry.s = range.first + i;
            b.put(ns, key, entry);
            b.put(seqNs, seqKey(entry.s), key);
          }
        });
      });
      let ok = false;
      try {
        await batch;
        ok = true;
        after?.();
      } finally {
        // Committed: the store holds the keys now. Failed: nothing of the batch is stored.
        for (const [key, entry] of mine) if (inFlight.get(key)?.held === entry) inFlight.delete(key);
        resolveCommit(ok);
      }
      if (corrupt !== undefined) {
        throw new StreamError(
          stream.name,
          `${name}: record '${corrupt.key}' was not appended: its entry in the de-duplication set is corrupt, so whether it was appended before is unknown (${corrupt.message})`,
        );
      }
      if (waitFor.length > 0 && (await Promise.all(waitFor)).includes(false)) {
        throw new StreamError(
          stream.name,
          `${name}: a concurrent batch holding a key of this batch failed to commit, so this batch may not be complete`,
        );
      }
    },
  };
}
