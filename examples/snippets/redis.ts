// The TypeScript blocks of docs/redis.md and of README.md's "Redis Streams" section, verbatim, run
// by test/docs/snippets.test.ts against the Redis on 127.0.0.1:6379 (skipped with a note when it
// is not there, outside CI). Its keys live under a random prefix, deleted at the end.
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { actor, createRuntime, MemoryStore, sinkActor } from 'sluice';
import { redisSink, redisSource } from 'sluice/connectors/redis';
import { fieldsOf, keyPrefix, redisClient, redisMissing } from '../../test/services/redis.ts';

interface Order {
  id: string;
  total: number;
}

export async function main(): Promise<void> {
  if ((await redisMissing('examples/snippets/redis.ts')) !== undefined) return;
  const keys = keyPrefix();
  const plain = redisClient();
  await plain.connect();
  try {
    const ordersKey = `${keys.prefix}orders`;
    const billedKey = `${keys.prefix}billed`;
    const store = new MemoryStore();
    const runtime = createRuntime({ store });
    const bill = (order: Order) => ({ id: order.id, amount: order.total });

    // A consumer group in, XADD out: each order is acknowledged (XACK) once its bill is appended.
    const orders = redisSource<Order>({
      connection: { host: '127.0.0.1', port: 6379 },
      stream: ordersKey,
      group: 'billing',
      subject: 'orders.in', // the bus subject the actors read
      claimIdleMs: 30_000, // a dead reader's entries move on after this
    });
    const billed = await redisSink({ stream: billedKey, maxLen: 100_000, store });
    runtime.spawn(actor({ name: 'billing', subscribe: orders.ref, output: 'bills', handle: (env) => bill(env.data) }));
    runtime.spawn(sinkActor({ name: 'to-billed', subscribe: 'bills', sink: billed }));
    await orders.start(runtime);

    // A plain client's JSON in a `data` field becomes an order; the bill is plain JSON again.
    const id = await plain.xadd(ordersKey, '*', 'data', JSON.stringify({ id: 'o-1', total: 12.5 }));
    await waitFor(async () => (await plain.xlen(billedKey)) === 1);
    const [first] = (await plain.xrange(billedKey, '-', '+')) as [string, string[]][];
    const entry = fieldsOf(first?.[1] ?? []);
    deepStrictEqual(JSON.parse(entry.data as string), { id: 'o-1', amount: 12.5 });
    // Its idempotency key is rooted in the order's entry id: <stream>/<entry id>/billing/0.
    strictEqual(entry['sluice-idempotency-key'], `${ordersKey}/${id}/billing/0`);
    await waitFor(() => orders.lag().messages === 0);

    await runtime.stop();
    await orders.close();
    await billed.close();
  } finally {
    await keys.cleanup(plain);
    plain.disconnect();
  }
}

async function waitFor(check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
