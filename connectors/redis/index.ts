/**
 * The Redis Streams connector (`sluice/connectors/redis`): a source from a consumer group and a
 * sink appending with XADD. Needs the optional peer dependency `ioredis`. See docs/redis.md.
 */

export type { RedisCodec, RedisConnectionOptions, RedisConnectionRef } from './config.ts';
export { REDIS_FIELDS } from './fields.ts';
export type { RedisSinkOptions, RedisSinkStats } from './sink.ts';
export { RedisSink, redisSink, redisSinkNamespace } from './sink.ts';
export type { RedisSourceOptions, RedisSourceStats, SourceHost } from './source.ts';
export { RedisSource, redisSource } from './source.ts';
