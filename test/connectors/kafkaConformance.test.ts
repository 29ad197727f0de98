/** The connector conformance suite against a real Kafka broker: a consumer group in, a producer out. */

import { Kafka, logLevel } from 'kafkajs';
import { IDEMPOTENCY_KEY_HEADER } from 'sluice';
import { kafkaSink, kafkaSource } from 'sluice/connectors/kafka';
import { afterAll, beforeAll, describe } from 'vitest';
import { type KafkaBroker, kafkaMissing, startKafka } from '../services/kafka/broker.ts';
import { type ConformanceConnector, type ConformanceTopic, conformance } from './conformance.ts';
import { createTopic, produce, readTopic } from './kafkaHelpers.ts';

const missing = kafkaMissing('the Kafka connector conformance tests');
let broker: KafkaBroker;
let topics = 0;

/** Records of `group` in `topic` not committed: from its committed offset (else the start) to the end. */
async function backlog(topic: string, group: string): Promise<number> {
  const admin = new Kafka({ brokers: [broker.bootstrap], logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    const ends = await admin.fetchTopicOffsets(topic);
    const [committed] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
    let sum = 0;
    for (const end of ends) {
      const c = Number(committed?.partitions.find((p) => p.partition === end.partition)?.offset ?? -1);
      sum += Number(end.high) - (c >= 0 ? c : Number(end.low));
    }
    return sum;
  } finally {
    await admin.disconnect();
  }
}

describe.skipIf(missing !== undefined)('Kafka', () => {
  beforeAll(async () => {
    broker = await startKafka({ partitions: 1 });
  }, 120_000);
  afterAll(async () => {
    await broker?.close();
  });

  /** The connector with the source in one ordering: the cases hold in both. */
  const connector = (ordering: 'partition' | 'key'): ConformanceConnector => ({
    name: `Kafka, ordering '${ordering}'`,
    kind: 'kafka',
    durable: true,
    durableSink: true,
    // <topic>/<partition>/<offset>
    position: 'conf\\d+/\\d+/\\d+',
    async topic(): Promise<ConformanceTopic> {
      const topic = `conf${++topics}`;
      const connection = { brokers: [broker.bootstrap] };
      // One partition: the cases check order end to end.
      await createTopic(broker.bootstrap, topic, 1);
      return {
        stream: 'kafka',
        produce: (values) =>
          produce(
            broker.bootstrap,
            topic,
            values.map((value, i) => ({ key: `k${i}`, value })),
          ),
        source: ({ subject, group, maxAckPending }) =>
          kafkaSource({
            connection,
            groupId: `${topic}-${group}`,
            topics: topic,
            subject,
            commitIntervalMs: 20,
            maxWaitMs: 100,
            ordering,
            // What is not settled at close goes back to the group soon (the default waits 10 s).
            drainTimeoutMs: 300,
            ...(maxAckPending === undefined ? {} : { maxPendingPerPartition: maxAckPending }),
          }),
        sink: ({ store }) =>
          kafkaSink({
            connection,
            topic,
            ...(store === undefined ? {} : { mode: 'dedupe' as const, store, name: topic }),
          }),
        async read(expected) {
          const records = await readTopic(broker.bootstrap, topic, { expected, timeoutMs: 10_000 });
          return records
            .sort((a, b) => a.offset - b.offset)
            .map((r) => ({ key: r.headers[IDEMPOTENCY_KEY_HEADER], value: JSON.parse(r.value) as unknown }));
        },
        backlog: (group) => backlog(topic, `${topic}-${group}`),
      };
    },
  });

  conformance(connector('partition'));
  conformance(connector('key'));
});
