// The TypeScript block of docs/sinks.md's "A stream of the embedded store", verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRuntime, durable, LmdbStore, sinkActor, streamSink } from 'sluice';

interface Order {
  id: string;
  total: number;
}

async function run(path: string, orders: Order[]): Promise<unknown[]> {
  const store = new LmdbStore({ path });
  const runtime = createRuntime({
    store,
    streams: [
      { name: 'ORDERS', subjects: ['orders.>'] },
      { name: 'PAID', subjects: ['paid'], retention: { maxAgeMs: 30 * 24 * 3600_000 } },
    ],
  });
  try {
    const paid = streamSink({ stream: runtime.stream('PAID') }); // a key is kept while PAID keeps its record
    runtime.spawn(
      sinkActor<Order>({
        name: 'to-paid',
        subscribe: durable('ORDERS', { consumer: 'paid', deliver: 'all' }),
        sink: paid,
        key: (env) => `order/${env.data.id}`,
        batch: { maxWaitMs: 0 },
      }),
    );
    for (const order of orders) await runtime.bus.publish('orders.eu', order);
    await runtime.idle();
    await runtime.stop();
    const kept = runtime.stream('PAID');
    const out: unknown[] = [];
    for (let seq = kept.info().first; seq <= kept.info().last; seq++) out.push(kept.get(seq)?.data);
    return out;
  } finally {
    await store.close();
  }
}

export async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-stream-sink-snippet-'));
  try {
    const path = join(dir, 'data');
    const first = await run(path, [
      { id: 'o-1', total: 30 },
      { id: 'o-1', total: 30 }, // sent twice upstream: stored once
    ]);
    deepStrictEqual(first, [{ id: 'o-1', total: 30 }]);
    // Restarted days later, the same order arrives again: the set in the store still holds its key.
    const second = await run(path, [
      { id: 'o-1', total: 30 },
      { id: 'o-2', total: 12 },
    ]);
    strictEqual(second.length, 2);
    deepStrictEqual(second[1], { id: 'o-2', total: 12 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
