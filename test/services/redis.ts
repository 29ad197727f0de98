/**
 * The real Redis for tests: 127.0.0.1:6379 (REDIS_HOST and REDIS_PORT override), as the machine
 * runs it. Each test file uses its own key prefix `sluice-test:<random>:` and deletes its keys at
 * the end.
 *
 * A test that needs the server checks {@link redisMissing} first: under CI (`CI=true`) a missing
 * server fails the test, elsewhere the test is skipped with a message saying what to install.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';

export const REDIS = Object.freeze({
  host: process.env.REDIS_HOST ?? '127.0.0.1',
  port: Number(process.env.REDIS_PORT ?? 6379),
});

const INSTALL_HINT = 'install Redis 7 (apt-get install redis-server) and start it on 127.0.0.1:6379';

/** A client for the test's own commands (no offline queue: a dead server fails at once). */
export function redisClient(): Redis {
  const redis = new Redis({ ...REDIS, lazyConnect: true, enableOfflineQueue: true, maxRetriesPerRequest: 1 });
  redis.on('error', () => undefined);
  return redis;
}

let reachable: Promise<string | undefined> | undefined;
function probe(): Promise<string | undefined> {
  reachable ??= (async () => {
    const redis = new Redis({
      ...REDIS,
      lazyConnect: true,
      connectTimeout: 2_000,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    redis.on('error', () => undefined);
    try {
      await redis.connect();
      await redis.ping();
      return undefined;
    } catch (error) {
      return error instanceof Error ? error.message : String(error);
    } finally {
      redis.disconnect();
    }
  })();
  return reachable;
}

/**
 * A reason to skip a test that needs Redis, or undefined when the server answers. Under CI a
 * missing server is no reason to skip: the test runs and fails when it connects.
 */
export async function redisMissing(what: string): Promise<string | undefined> {
  const problem = await probe();
  if (problem === undefined || process.env.CI === 'true') return undefined;
  const reason = `${what} needs Redis on ${REDIS.host}:${REDIS.port} (${problem}): ${INSTALL_HINT}`;
  console.warn(`skipped: ${reason}`);
  return reason;
}

/** A fresh key prefix for one test file, and the removal of every key under it. */
export function keyPrefix(): { readonly prefix: string; cleanup(redis: Redis): Promise<void> } {
  const prefix = `sluice-test:${randomBytes(6).toString('hex')}:`;
  return {
    prefix,
    async cleanup(redis) {
      let cursor = '0';
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
        cursor = next;
        if (keys.length > 0) await redis.del(...keys);
      } while (cursor !== '0');
    },
  };
}

/** Field/value pairs of an entry as an object. */
export function fieldsOf(flat: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i] as string] = flat[i + 1] as string;
  return out;
}

/** Entries of `stream` a group has not acknowledged: not delivered, or delivered and pending. */
export async function groupBacklog(client: Redis, stream: string, group: string): Promise<number> {
  const groups = (await client.call('XINFO', 'GROUPS', stream)) as unknown[][];
  for (const g of groups) {
    const f = fieldsOf(g.map(String));
    if (f.name === group) return Number(f.lag) + Number(f.pending);
  }
  throw new Error(`no group ${group} on ${stream}`);
}
