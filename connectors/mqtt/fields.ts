/**
 * The names the MQTT connector reads and writes besides the payload: envelope headers the source
 * sets, and MQTT 5 user properties (the sink writes them; the source reads them back).
 */
import { IDEMPOTENCY_KEY_HEADER } from '../../runtime/sinks/sink.ts';
import { REVISION_HEADER } from '../../runtime/sinks/streamSink.ts';

/** Headers of the envelopes the source publishes. */
export const MQTT_HEADERS = Object.freeze({
  /** The message's MQTT topic. */
  topic: 'mqtt-topic',
  /** `'true'` on a retained message (sent because it was retained when the source subscribed). */
  retain: 'mqtt-retain',
});

/** MQTT 5 user properties. */
export const MQTT_PROPERTIES = Object.freeze({
  /**
   * The message's id: the source's position (`sluice-stream-sequence`), the root of its outputs'
   * idempotency keys. The sink sets it from the idempotency key (and revision).
   */
  messageId: 'message-id',
  /** The envelope's key (partitioning, per-key order). */
  key: 'sluice-key',
  /** The record's idempotency key, written by the sink. */
  idempotencyKey: IDEMPOTENCY_KEY_HEADER,
  /** The record's revision, when it has one. */
  revision: REVISION_HEADER,
});
