// The TypeScript blocks of docs/rabbitmq.md and of README.md's "RabbitMQ" section, verbatim, run
// by test/docs/snippets.test.ts against the RabbitMQ on 127.0.0.1:5672 (skipped with a note when
// it is not there, outside CI). Its queues and exchanges have random names, deleted at the end.
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect } from 'amqplib';
import { actor, createRuntime, type Envelope, MemoryStore, sinkActor } from 'sluice';
import { rabbitSink, rabbitSource } from 'sluice/connectors/rabbitmq';
import { rabbitMissing } from '../../test/services/rabbitmq.ts';

interface Order {
  id: string;
  total: number;
}

export async function main(): Promise<void> {
  if ((await rabbitMissing('examples/snippets/rabbitmq.ts')) !== undefined) return;
  const id = randomBytes(4).toString('hex');
  const ordersQueue = `orders-${id}`;
  const ordersExchange = `orders-in-${id}`;
  const billedExchange = `billed-${id}`;
  const deadLetters = `sluice-dead-${id}`;
  const plain = await connect('amqp://guest:guest@127.0.0.1:5672');
  const channel = await plain.createChannel();
  try {
    await channel.assertExchange(billedExchange, 'topic', { durable: true });
    await channel.assertQueue(`bills-${id}`, { durable: true });
    await channel.bindQueue(`bills-${id}`, billedExchange, 'bills.#');
    await channel.assertExchange(deadLetters, 'fanout', { durable: true });
    await channel.assertQueue(deadLetters, { durable: true });
    await channel.bindQueue(deadLetters, deadLetters, '');
    const store = new MemoryStore();
    const runtime = createRuntime({ store });
    const bill = (order: Order) => {
      if (order.total < 0) throw new Error('negative total');
      return { id: order.id, amount: order.total };
    };

    // A queue in, an exchange out: each order is acked once RabbitMQ confirmed its bill.
    const orders = rabbitSource<Order>({
      connection: { hostname: '127.0.0.1', username: 'guest', password: 'guest' },
      queue: ordersQueue,
      declare: {
        type: 'quorum',
        deliveryLimit: 5, // RabbitMQ's limit; the source gives a message up by then
        bindings: [{ exchange: ordersExchange, exchangeType: 'topic', routingKey: 'orders.#' }],
      },
      subject: 'orders.in', // the bus subject the actors read
    });
    const billed = await rabbitSink({ exchange: billedExchange, routingKey: 'bills.eu', store });
    runtime.spawn(
      actor({
        name: 'billing',
        subscribe: orders.ref,
        output: 'bills',
        retry: { maxAttempts: 1 },
        handle: (env) => bill(env.data),
      }),
    );
    runtime.spawn(sinkActor({ name: 'to-billed', subscribe: 'bills', sink: billed }));

    // Sluice's dead letters to a RabbitMQ exchange, keyed by where they failed.
    const dead = await rabbitSink({
      exchange: deadLetters,
      routingKey: (r) => r.envelope?.subject ?? 'dead',
      headers: true,
    });
    runtime.spawn(
      sinkActor({
        name: 'dead-letters',
        subscribe: '$DLQ.billing',
        sink: dead,
        key: (env: Envelope) => `${env.headers['sluice-actor']}/${env.headers['sluice-original-id']}`,
      }),
    );
    await orders.start(runtime);

    // A plain client's JSON (with a message_id, the root of idempotency keys) becomes an order.
    const options = { messageId: 'o-1', contentType: 'application/json' };
    channel.publish(ordersExchange, 'orders.eu', Buffer.from(JSON.stringify({ id: 'o-1', total: 12.5 })), options);
    channel.publish(ordersExchange, 'orders.eu', Buffer.from(JSON.stringify({ id: 'o-2', total: -1 })), {
      messageId: 'o-2',
    });
    const got = await take(channel, `bills-${id}`);
    deepStrictEqual(JSON.parse(got.content.toString()), { id: 'o-1', amount: 12.5 });
    // Its message_id is the idempotency key, rooted in the order's message_id: <queue>/o-1/billing/0.
    strictEqual(got.properties.messageId, `${ordersQueue}/o-1/billing/0`);
    const letter = await take(channel, deadLetters);
    strictEqual(letter.properties.headers?.['sluice-error'], 'negative total');

    await runtime.stop();
    await orders.close();
    await billed.close();
    await dead.close();
  } finally {
    for (const q of [ordersQueue, `bills-${id}`, deadLetters]) await channel.deleteQueue(q).catch(() => undefined);
    for (const x of [ordersExchange, billedExchange, deadLetters])
      await channel.deleteExchange(x).catch(() => undefined);
    await plain.close();
  }
}

async function take(channel: import('amqplib').Channel, queue: string): Promise<import('amqplib').GetMessage> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const m = await channel.get(queue, { noAck: true });
    if (m !== false) return m;
    if (Date.now() > deadline) throw new Error(`nothing in ${queue}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
