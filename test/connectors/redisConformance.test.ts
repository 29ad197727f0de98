/** The connector conformance suite against the real Redis: a consumer group in, XADD out. */
import type { Redis } from 'ioredis';
import { IDEMPOTENCY_KEY_HEADER } from 'sluice';
import { redisSink, redisSource } from 'sluice/connectors/redis';
import { afterAll, beforeAll, describe } from 'vitest';
import { fieldsOf, groupBacklog, keyPrefix, REDIS, redisClient, redisMissing } from '../services/redis.ts';
import { type ConformanceConnector, type ConformanceTopic, conformance } from './conformance.ts';

const missing = await redisMissing('the Redis connector conformance tests');
const keys = keyPrefix();
let redis: Redis;
let topics = 0;

describe.skipIf(missing !== undefined)('Redis Streams', () => {
  beforeAll(async () => {
    redis = redisClient();
    await redis.connect();
  });
  afterAll(async () => {
    await keys.cleanup(redis);
    redis.disconnect();
  });

  const connector: ConformanceConnector = {
    name: 'Redis Streams',
    kind: 'redis',
    durable: true,
    durableSink: true,
    position: '\\d+-\\d+',
    async topic(): Promise<ConformanceTopic> {
      const stream = `${keys.prefix}conf${++topics}`;
      return {
        stream,
        async produce(values) {
          const p = redis.pipeline();
          for (const v of values) p.xadd(stream, '*', 'data', JSON.stringify(v));
          await p.exec();
        },
        source: ({ subject, group, maxAckPending }) =>
          redisSource({
            connection: REDIS,
            stream,
            group,
            subject,
            maxAckPending,
            backoffMs: [50],
            blockMs: 200,
            claimIdleMs: 300,
            lagRefreshMs: 50,
          }),
        sink: ({ store }) => redisSink({ connection: REDIS, stream, store }),
        async read(expected) {
          const deadline = Date.now() + 10_000;
          let entries: [string, string[]][] = [];
          while (Date.now() < deadline) {
            entries = (await redis.xrange(stream, '-', '+')) as [string, string[]][];
            if (entries.length >= expected) break;
            await new Promise((resolve) => setTimeout(resolve, 20));
          }
          return entries.map(([, flat]) => {
            const f = fieldsOf(flat);
            return { key: f[IDEMPOTENCY_KEY_HEADER], value: JSON.parse(f.data as string) as unknown };
          });
        },
        backlog: (group) => groupBacklog(redis, stream, group),
      };
    },
  };

  conformance(connector);
});
