// The TypeScript block of README.md's "Delivery guarantees", verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual, ok, throws } from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { actor, createRuntime, durable, LmdbStore, OptionsError, sinkActor } from 'sluice';
import { fileSink, readJsonLines } from 'sluice/connectors/file';

interface Order {
  readonly customer: string;
  readonly amount: number;
}

export async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-delivery-snippet-'));
  const cwd = process.cwd();
  process.chdir(dir);
  const store = new LmdbStore({ path: './data/sluice' });
  const runtime = createRuntime({ store });
  try {
    runtime.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    runtime.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const previews: Order[] = [];
    const bills: Order[] = [];
    const preview = (order: Order) => void previews.push(order);
    const bill = (order: Order) => void bills.push(order);

    // At most once: a plain subject, nothing stored. What is in flight at a crash is lost.
    runtime.spawn(
      actor({
        name: 'preview',
        subscribe: 'orders.eu',
        delivery: 'at-most-once',
        handle: (env) => preview(env.data as Order),
      }),
    );
    // At least once: a durable subscription. Inputs are acknowledged once settled; a crash redelivers the rest.
    runtime.spawn(
      actor({
        name: 'billing',
        subscribe: durable<Order>('ORDERS', { consumer: 'billing' }),
        delivery: 'at-least-once',
        handle: (env) => bill(env.data),
      }),
    );
    // Exactly once, inside the store: outputs to a stream, state and position commit together.
    runtime.spawn(
      actor({
        name: 'totals',
        subscribe: durable<Order>('ORDERS', { consumer: 'totals' }),
        output: 'totals.customer',
        delivery: 'exactly-once',
        checkpoint: { intervalMs: 1_000, everyInputs: 1_000 },
        handle: (env) => ({ customer: env.data.customer, amount: env.data.amount }),
      }),
    );
    // Exactly once, outside it: a durable subscription into a sink that keeps one result per key.
    const totalsFile = await fileSink({ path: './totals.jsonl' });
    runtime.spawn(
      sinkActor({
        name: 'totals-file',
        subscribe: durable('TOTALS', { consumer: 'file' }),
        delivery: 'exactly-once',
        sink: totalsFile,
      }),
    );
    await runtime.bus.publish('orders.eu', { customer: 'c-1', amount: 12.5 });

    // A combination that cannot give its mode is refused where it is declared.
    throws(
      () =>
        actor({
          name: 'oops',
          subscribe: durable<Order>('ORDERS', { consumer: 'oops' }),
          delivery: 'exactly-once',
          handle: (env) => bill(env.data),
        }),
      (error: unknown) => error instanceof OptionsError && error.message.includes('needs a checkpoint'),
    );
    // The checkpoint commits within its interval, then the sink writes what it put in TOTALS.
    const file = runtime.stream('TOTALS').consumer('file');
    const deadline = Date.now() + 10_000;
    while (runtime.stream('TOTALS').info().last < 1 || file.lag().messages > 0) {
      ok(Date.now() < deadline, 'the checkpoint and the sink finish within 10 s');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await runtime.stop();
    await totalsFile.close();
    deepStrictEqual(previews, [{ customer: 'c-1', amount: 12.5 }]);
    deepStrictEqual(bills, [{ customer: 'c-1', amount: 12.5 }]);
    const lines = await readJsonLines('./totals.jsonl');
    deepStrictEqual(
      [...lines].map(([key, e]) => [key, e.value]),
      [['ORDERS/1/totals/0', { customer: 'c-1', amount: 12.5 }]],
    );
  } finally {
    await runtime.stop();
    await store.close();
    process.chdir(cwd);
    rmSync(dir, { recursive: true, force: true });
  }
}
