// The TypeScript blocks of docs/nats.md and of README.md's "NATS" section, verbatim, run by
// test/docs/snippets.test.ts against a nats-server it starts (skipped with a note when nats-server
// is not installed, outside CI).
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { actor, createRuntime, MemoryStore, sinkActor } from 'sluice';
import { natsSink, natsSource } from 'sluice/connectors/nats';
import { natsServerMissing, startNatsServer } from '../../test/services/natsServer.ts';

interface Order {
  id: string;
  total: number;
}

export async function main(): Promise<void> {
  if (natsServerMissing('examples/snippets/nats.ts') !== undefined) return;
  const server = await startNatsServer({ jetstream: true });
  const url = server.url;
  const plain = await connect({ servers: url });
  try {
    const jsm = await jetstreamManager(plain);
    await jsm.streams.add({ name: 'ORDERS', subjects: ['orders.>'] });
    await jsm.streams.add({ name: 'BILLED', subjects: ['billed.>'] });
    const store = new MemoryStore();
    const runtime = createRuntime({ store });
    const bill = (order: Order) => ({ id: order.id, amount: order.total });

    // JetStream in, JetStream out: each order is acknowledged once its bill is stored in BILLED.
    const orders = natsSource<Order>({
      connection: { servers: url },
      jetstream: { stream: 'ORDERS', consumer: 'billing', ackWaitMs: 30_000, maxAckPending: 1_000 },
      subject: 'orders.in', // the bus subject the actors read
    });
    const billed = await natsSink({ connection: { servers: url }, jetstream: true, subject: 'billed.eu', store });
    runtime.spawn(actor({ name: 'billing', subscribe: orders.ref, output: 'bills', handle: (env) => bill(env.data) }));
    runtime.spawn(sinkActor({ name: 'to-billed', subscribe: 'bills', sink: billed }));
    await orders.start(runtime);

    // A plain client's JSON (no Sluice envelope) becomes an order; the bill is plain JSON again.
    const js = jetstream(plain);
    await js.publish('orders.eu', JSON.stringify({ id: 'o-1', total: 12.5 }));
    await waitFor(async () => (await jsm.streams.info('BILLED')).state.messages === 1);
    const stored = await jsm.streams.getMessage('BILLED', { seq: 1 });
    deepStrictEqual(stored?.json(), { id: 'o-1', amount: 12.5 });
    // Its idempotency key is rooted in the order's stream sequence: ORDERS/1/billing/0.
    strictEqual(stored?.header.get('Nats-Msg-Id'), 'ORDERS/1/billing/0');
    await waitFor(() => orders.lag().messages === 0);

    await runtime.stop();
    await orders.close();
    await billed.close();
  } finally {
    await plain.close();
    await server.stop();
  }
}

async function waitFor(check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
