/**
 * `sluice/connectors/kafka`: a consumer-group source and a sink on `@platformatic/kafka` (an
 * optional peer dependency: install it to use this connector). See docs/kafka.md.
 */

export type { KafkaCodec, KafkaConnectionOptions, KafkaSaslOptions } from './config.ts';
export { bytesCodec, DEFAULT_KAFKA_CONNECTION, stringCodec } from './config.ts';
export type { KafkaTenure } from './partition.ts';
export type { KafkaSinkOptions, KafkaSinkStats } from './sink.ts';
export { KafkaSink, kafkaSink, kafkaSinkNamespace, positionOf } from './sink.ts';
export type {
  KafkaCommit,
  KafkaGroupMembership,
  KafkaPosition,
  KafkaSourceHost,
  KafkaSourceOptions,
  KafkaSourceStats,
} from './source.ts';
export { KAFKA_HEADERS, KafkaSource, kafkaSource } from './source.ts';
