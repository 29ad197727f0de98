// The TypeScript block of docs/checkpoints.md, verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual, ok } from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { actor, createRuntime, durable, LmdbStore } from '../../runtime/index.ts';

interface Order {
  readonly customer: string;
  readonly amount: number;
}

export async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-checkpoints-snippet-'));
  const cwd = process.cwd();
  process.chdir(dir);
  try {
    const store = new LmdbStore({ path: './data/sluice' });
    const runtime = createRuntime({ store });
    runtime.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    runtime.stream({ name: 'TOTALS', subjects: ['totals.>'] });

    // A running total per customer: its state, its position in ORDERS and its outputs to TOTALS
    // commit in one transaction, every second or every 500 inputs.
    runtime.spawn(
      actor({
        name: 'totals',
        subscribe: durable<Order>('ORDERS', { consumer: 'totals' }),
        output: 'totals.customer',
        checkpoint: { intervalMs: 1_000, everyInputs: 500 },
        handle: (env, ctx) => {
          const total = (ctx.state.get<number>(env.data.customer) ?? 0) + env.data.amount;
          ctx.state.put(env.data.customer, total);
          return { customer: env.data.customer, total };
        },
      }),
    );
    await runtime.bus.publish('orders.eu', { customer: 'c-1', amount: 12.5 });
    await runtime.stop(); // drains, then takes a last checkpoint
    runtime.actor('totals')?.checkpoint; // { commits, inputs, commitMs, bytes, failures, held, pendingWrites }

    const info = runtime.actor('totals')?.checkpoint;
    ok(info !== undefined);
    deepStrictEqual([info.commits, info.inputs, info.held, info.pendingWrites], [1, 1, 0, 0]);
    ok(info.bytes > 0, 'the commit wrote the state, the output and the position');
    deepStrictEqual(
      store.read('TOTALS', 1).map((e) => (e.value as { d: unknown }).d),
      [{ customer: 'c-1', total: 12.5 }],
    );
    deepStrictEqual(store.getKey('sluice.state/totals', 'c-1'), 12.5);
    deepStrictEqual(store.getKey('sluice.consumers', 'ORDERS/totals'), { floor: 2 });
    await store.close();
  } finally {
    process.chdir(cwd);
    rmSync(dir, { recursive: true, force: true });
  }
}
