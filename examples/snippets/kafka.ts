// The TypeScript block of README.md's "Kafka" section, verbatim, run by test/docs/snippets.test.ts
// against a Kafka broker it starts from Maven Central jars (skipped with a note when java and mvn
// are missing, outside CI). Orders go in with a plain producer; the priced results are read back
// read_committed by a client that is not Sluice (kcat, or kafkajs where kcat is missing).
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { actor, createRuntime, sinkActor } from 'sluice';
import { kafkaSink, kafkaSource } from 'sluice/connectors/kafka';
import { createTopic, produce, readTopic } from '../../test/connectors/kafkaHelpers.ts';
import { kafkaMissing, startKafka } from '../../test/services/kafka/broker.ts';

interface Order {
  id: number;
  qty: number;
}

const N = 200;

export async function main(): Promise<void> {
  if (kafkaMissing('examples/snippets/kafka.ts') !== undefined) return;
  const broker = await startKafka({ partitions: 3 });
  const runtime = createRuntime();
  try {
    const connection = { brokers: [broker.bootstrap] };
    await createTopic(broker.bootstrap, 'orders', 3);
    await createTopic(broker.bootstrap, 'priced', 3);
    await produce(
      broker.bootstrap,
      'orders',
      Array.from({ length: N }, (_, id) => ({ key: `order-${id}`, value: { id, qty: (id % 5) + 1 } })),
    );
    const price = (order: Order) => ({ id: order.id, total: order.qty * 250 });

    const orders = kafkaSource<Order>({ connection, groupId: 'pricing', topics: 'orders', commit: 'sink' });
    const priced = await kafkaSink({
      connection,
      topic: 'priced',
      mode: 'transactional',
      transactionalId: 'pricing-1',
      source: orders,
    });
    runtime.spawn(actor({ name: 'price', subscribe: orders.ref, output: 'priced', handle: (env) => price(env.data) }));
    runtime.spawn(sinkActor({ name: 'to-kafka', subscribe: 'priced', sink: priced, batch: { maxSize: 2000 } }));
    await orders.start(runtime);

    // Each order priced once, in transactions that also committed the group's offsets.
    const out = await readTopic(broker.bootstrap, 'priced', { expected: N });
    const totals = out.map((r) => JSON.parse(r.value) as { id: number; total: number }).sort((a, b) => a.id - b.id);
    deepStrictEqual(
      totals,
      Array.from({ length: N }, (_, id) => ({ id, total: ((id % 5) + 1) * 250 })),
    );
    // The output's idempotency key has the input's position at its root.
    for (const r of out)
      strictEqual(/^kafka\/orders\/[0-2]\/\d+\/price\/0$/.test(r.headers['sluice-idempotency-key'] ?? ''), true);
    strictEqual(priced.stats.written, N);
    await orders.close();
    await priced.close();
  } finally {
    await runtime.stop();
    await broker.close();
  }
}
