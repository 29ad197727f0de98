/**
 * The RabbitMQ connector (`sluice/connectors/rabbitmq`): a source from a queue and a sink to an
 * exchange, over AMQP 0-9-1. Needs the optional peer dependency `amqplib`. See docs/rabbitmq.md.
 */

export type { RabbitConnectionOptions } from './config.ts';
export type { RabbitBinding, RabbitQueueDeclaration } from './declare.ts';
export type { RabbitSinkOptions, RabbitSinkStats } from './sink.ts';
export { RabbitSink, rabbitSink, rabbitSinkNamespace } from './sink.ts';
export type { RabbitSourceOptions, RabbitSourceStats, SourceHost } from './source.ts';
export { attemptOf, RabbitSource, rabbitSource } from './source.ts';
