/**
 * The NATS connector (`sluice/connectors/nats`): a source from core subjects or a JetStream durable
 * consumer, and a sink to core subjects or JetStream. Needs the optional peer dependencies
 * `@nats-io/transport-node` and `@nats-io/jetstream` (3.x). See docs/nats.md.
 */

export type {
  NatsConnectionOptions,
  NatsConnectionRef,
  NatsReconnectOptions,
  NatsTlsOptions,
} from './config.ts';
export { clientOptions, DEFAULT_NATS_RECONNECT } from './config.ts';
export type { NatsCodec } from './payload.ts';
export { CONTENT_TYPE, MSG_ID, NATS_HEADERS, rawCodec, textCodec } from './payload.ts';
export type { NatsSinkOptions, NatsSinkStats } from './sink.ts';
export { NatsSink, natsSink, natsSinkNamespace } from './sink.ts';
export type {
  NatsJetStreamSourceOptions,
  NatsSourceOptions,
  NatsSourceStats,
  SourceHost,
} from './source.ts';
export { NatsSource, natsSource } from './source.ts';
export type { NatsTransportOptions, NatsTransportStats, PublishConfirm } from './transport.ts';
export { NatsTransport, natsTransport, publishConfirms, TRANSPORT_HEADERS } from './transport.ts';
