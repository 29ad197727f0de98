/**
 * The entry fields the Redis connector reads and writes besides the payload (`data` by default).
 * Any other field of an entry becomes a header of its envelope.
 */
import { IDEMPOTENCY_KEY_HEADER } from '../../runtime/sinks/sink.ts';
import { REVISION_HEADER } from '../../runtime/sinks/streamSink.ts';

export const REDIS_FIELDS = Object.freeze({
  /** The envelope's key (partitioning, per-key order). */
  key: 'sluice-key',
  /** The envelope's event time, epoch ms; without it the entry id's time. */
  eventTime: 'sluice-event-time',
  /** The record's idempotency key, written by the sink with every entry. */
  idempotencyKey: IDEMPOTENCY_KEY_HEADER,
  /** The record's revision, when it has one. */
  revision: REVISION_HEADER,
});
