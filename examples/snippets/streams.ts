// The TypeScript block of docs/streams.md, verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual, ok } from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { actor, createRuntime, durable, LmdbStore } from '../../runtime/index.ts';

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  ok(check(), 'timed out');
}

export async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-streams-snippet-'));
  const cwd = process.cwd();
  process.chdir(dir);
  const billed: unknown[] = [];
  const bill = (order: unknown) => void billed.push(order);
  const audited: number[] = [];
  try {
    const store = new LmdbStore({ path: './data/sluice' });
    const runtime = createRuntime({ store });
    const orders = runtime.stream({ name: 'ORDERS', subjects: ['orders.>'], retention: { maxAgeMs: 7 * 86_400_000 } });
    await runtime.bus.publish('orders.eu', { id: 'o-1', total: 12.5 }); // resolves once the append is on disk

    // An actor reads it durably: each input is acknowledged when it settles.
    runtime.spawn(
      actor({
        name: 'billing',
        subscribe: durable('ORDERS', { consumer: 'billing', maxDeliver: 5 }),
        handle: (env) => bill(env.data),
      }),
    );

    // Or pull, and settle each message yourself.
    const audit = orders.consumer('audit', { ackWaitMs: 30_000 });
    for (const m of audit.fetch(100)) {
      audited.push(m.seq);
      m.ack(); // or m.nack(1_000), m.term(), m.inProgress()
    }
    audit.lag(); // { messages, timeMs, ackPending }

    await until(() => orders.consumer('billing').position === 2);
    deepStrictEqual(billed, [{ id: 'o-1', total: 12.5 }]);
    deepStrictEqual(audited, [1]);
    deepStrictEqual(audit.lag(), { messages: 0, timeMs: 0, ackPending: 0 });
    deepStrictEqual(orders.info().last, 1);
    await runtime.stop();
    await store.close();
  } finally {
    process.chdir(cwd);
    rmSync(dir, { recursive: true, force: true });
  }
}
