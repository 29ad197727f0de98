/** The connector conformance suite against the real RabbitMQ: a queue in, the default exchange out. */
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { IDEMPOTENCY_KEY_HEADER } from 'sluice';
import { rabbitSink, rabbitSource } from 'sluice/connectors/rabbitmq';
import { afterAll, beforeAll, describe } from 'vitest';
import { createTestVhost, made, rabbitMissing, type TestVhost } from '../services/rabbitmq.ts';
import { type ConformanceConnector, type ConformanceTopic, conformance } from './conformance.ts';

const missing = await rabbitMissing('the RabbitMQ connector conformance tests');
let vhost: TestVhost;
let model: ChannelModel;
let channel: ConfirmChannel;
let topics = 0;
let sent = 0;

describe.skipIf(missing !== undefined)('RabbitMQ', () => {
  beforeAll(async () => {
    vhost = await createTestVhost();
    model = await vhost.open();
    channel = await model.createConfirmChannel();
  });
  afterAll(async () => {
    await model?.close().catch(() => undefined);
    await vhost?.remove();
  });

  const connector: ConformanceConnector = {
    name: 'RabbitMQ',
    kind: 'rabbitmq',
    durable: true,
    durableSink: true,
    // A plain publisher's message_id is the position.
    position: 'm\\d+',
    async topic(): Promise<ConformanceTopic> {
      const base = `${vhost.prefix}conf${++topics}`;
      const queues = new Map<string, string>();
      // One queue per group (the queue is RabbitMQ's group), bound to the topic's fanout exchange.
      await channel.assertExchange(base, 'fanout', { durable: true });
      made.exchanges.add(base);
      const queueOf = async (group: string) => {
        let q = queues.get(group);
        if (q === undefined) {
          q = `${base}.${group}`;
          queues.set(group, q);
          await channel.assertQueue(q, { durable: true });
          await channel.bindQueue(q, base, '');
          made.queues.add(q);
        }
        return q;
      };
      const outQueue = await queueOf('out');
      return {
        get stream() {
          return [...queues.values()].find((q) => q !== outQueue) ?? base;
        },
        async produce(values) {
          // Every group's queue exists before anything is produced (a source made and not started yet too).
          for (const q of queues.values()) {
            await channel.assertQueue(q, { durable: true });
            await channel.bindQueue(q, base, '');
          }
          for (const v of values) {
            channel.publish(base, '', Buffer.from(JSON.stringify(v)), { messageId: `m${++sent}`, persistent: true });
          }
          await channel.waitForConfirms();
        },
        source: ({ subject, group, maxAckPending }) => {
          const queue = `${base}.${group}`;
          // Declared by the source (bound to the topic's exchange), as an application would.
          queues.set(group, queue);
          made.queues.add(queue);
          return rabbitSource({
            connection: vhost.connection,
            queue,
            declare: { bindings: [{ exchange: base }] },
            subject,
            maxAckPending,
            backoffMs: [50],
            lagRefreshMs: 50,
          });
        },
        sink: ({ store }) => rabbitSink({ connection: vhost.connection, exchange: base, routingKey: '', store }),
        async read(expected) {
          const q = await queueOf('out');
          const out: { key: string | undefined; value: unknown }[] = [];
          const deadline = Date.now() + 10_000;
          let quietSince = Date.now();
          // Until the expected count, then half a second of nothing more (a double would show).
          while (Date.now() < deadline && (out.length < expected || Date.now() - quietSince < 500)) {
            const m = await channel.get(q, { noAck: true });
            if (m === false) {
              await new Promise((resolve) => setTimeout(resolve, 20));
              continue;
            }
            quietSince = Date.now();
            out.push({
              // The key is message_id, or (for a record with a revision) a header of its own.
              key: (m.properties.headers?.[IDEMPOTENCY_KEY_HEADER] ?? m.properties.messageId) as string | undefined,
              value: JSON.parse(m.content.toString()) as unknown,
            });
          }
          return out;
        },
        backlog: (group) => vhost.backlog(`${base}.${group}`),
      };
    },
  };

  conformance(connector);
});
