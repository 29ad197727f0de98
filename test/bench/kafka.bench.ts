/**
 * `npm run bench -- kafka`: the Kafka connector against the raw client it is built on
 * (`@platformatic/kafka` 1.x), on one real broker started for the run (test/services/kafka/broker.ts;
 * DESIGN.md section 10; issue 14). Records are 100-byte JSON values with a key, into topics of
 * 3 partitions; every round uses fresh topics and groups.
 *
 * - `produce`: `sluice` publishes N records on the bus into a sink actor writing them with
 *   `kafkaSink` (idempotent producer, acks from all replicas) in batches of BATCH; `raw`: the same
 *   producer settings, sends of BATCH records awaited one after another. Both write the same
 *   records: key, JSON value and the `sluice-idempotency-key` header, which the sink sets on every
 *   record for readers that de-duplicate (as the raw RabbitMQ and MQTT publishers of the brokers
 *   bench send the message id their sinks set). The client serialises a header per record, about
 *   1 µs of CPU each: without it the raw producer did less than the sink. Both count what the broker
 *   acknowledged.
 * - `consume`: N records read by a new consumer group from the earliest offset, the join
 *   included. `sluice`: `kafkaSource` into an actor that sums the ids (each record settled, offsets
 *   committed); `raw`: the client's `MessagesStream` with autocommit, summing the ids of distinct
 *   offsets (it may deliver a record twice).
 * - `sink`: source -> actor (map) -> sink actor -> topic. `at-least-once`: the source commits
 *   the settled offsets, the sink is idempotent; `exactly-once`: the sink writes each batch in a
 *   transaction that also commits the source's offsets (read_committed readers see each once).
 */
import { rmSync } from 'node:fs';
import { Admin, Consumer, MessagesStreamModes, ProduceAcks, Producer, stringSerializers } from '@platformatic/kafka';
import { map } from 'rxjs';
import { actor, createRuntime, IDEMPOTENCY_KEY_HEADER, sinkActor } from 'sluice';
import { type KafkaSource, kafkaSink, kafkaSource } from 'sluice/connectors/kafka';
import { createTopic, produce } from '../connectors/kafkaHelpers.ts';
import { startKafka } from '../services/kafka/broker.ts';
import { type Contender, defineBench, expectCount, until } from './harness.ts';

const BATCH = 500;
/**
 * The sink case's batches: a transaction costs four round trips more than a plain send whatever
 * its size, so exactly-once wants fewer, larger ones (docs/kafka.md); both contenders get the same.
 */
const SINK_BATCH = Number(process.env.BENCH_KAFKA_SINK_BATCH ?? 2000);
const PARTITIONS = 3;
const PAD = 'x'.repeat(80);

const broker = await startKafka({ partitions: PARTITIONS });
process.once('exit', () => rmSync(broker.dir, { recursive: true, force: true }));
const connection = { brokers: [broker.bootstrap] };
let topics = 0;

async function freshTopic(what: string): Promise<string> {
  const name = `bench-${what}-${++topics}`;
  await createTopic(broker.bootstrap, name, PARTITIONS);
  await led(name);
  return name;
}

/**
 * Until the broker leads every partition of `topic` (it lists their offsets): the first send to a
 * topic just made was refused (NOT_LEADER_OR_FOLLOWER) in about half the rounds and retried after
 * the client's delay (1 s for raw, 250 ms for the sink), which timed that delay, not the writes.
 */
async function led(topic: string): Promise<void> {
  const admin = new Admin({ clientId: 'bench-admin', bootstrapBrokers: [broker.bootstrap], retries: 0 });
  const partitions = Array.from({ length: PARTITIONS }, (_, partitionIndex) => ({ partitionIndex, timestamp: -1n }));
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        await admin.listOffsets({ topics: [{ name: topic, partitions }] });
        return;
      } catch (error) {
        if (attempt >= 200) throw error;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
  } finally {
    await admin.close();
  }
}

function record(i: number): { key: string; value: { id: number; pad: string } } {
  return { key: `k${i}`, value: { id: i, pad: PAD } };
}

function idSum(n: number): number {
  return (n * (n - 1)) / 2;
}

const sluiceProduce: Contender = async (n) => {
  const topic = await freshTopic('produce');
  const runtime = createRuntime();
  const sink = await kafkaSink({ connection, topic, key: (r) => r.key });
  const ref = runtime.spawn(
    sinkActor<{ id: number; pad: string }>({
      name: 'to-kafka',
      subscribe: 'orders',
      sink,
      key: (env) => `k${env.data.id}`,
      batch: { maxSize: BATCH, maxWaitMs: 5 },
    }),
  );
  return {
    run: async () => {
      for (let i = 0; i < n; i++) {
        const r = record(i);
        if (!runtime.bus.tryPublish('orders', r.value)) await runtime.bus.publish('orders', r.value);
      }
      await until(
        () => ref.counters.acked >= n,
        () => ref.counters.acked,
        'records acknowledged by the sink',
        10_000,
      );
      expectCount('written', sink.stats.written, n);
    },
    dispose: async () => {
      await runtime.stop();
      await sink.close();
    },
  };
};

const rawProduce: Contender = async (n) => {
  const topic = await freshTopic('produce');
  const producer = new Producer({
    clientId: 'bench-raw',
    bootstrapBrokers: [broker.bootstrap],
    serializers: stringSerializers,
    idempotent: true,
    acks: ProduceAcks.ALL,
    autocreateTopics: true,
  });
  // As the sink's open() does: the producer id and the topic's metadata are fetched before the clock.
  await producer.initIdempotentProducer({});
  await producer.metadata({ topics: [topic] });
  return {
    run: async () => {
      let acked = 0;
      for (let i = 0; i < n; i += BATCH) {
        const messages = [];
        for (let j = i; j < Math.min(i + BATCH, n); j++) {
          const r = record(j);
          // The idempotency key header the sink writes on every record: the same bytes on the wire.
          messages.push({
            topic,
            key: r.key,
            value: JSON.stringify(r.value),
            headers: new Map([[IDEMPOTENCY_KEY_HEADER, r.key]]),
          });
        }
        await producer.send({ messages });
        acked += messages.length;
      }
      expectCount('written', acked, n);
    },
    dispose: () => producer.close(),
  };
};

/** A topic holding n records (setup, not timed). */
async function filled(what: string, n: number): Promise<string> {
  const topic = await freshTopic(what);
  await produce(
    broker.bootstrap,
    topic,
    Array.from({ length: n }, (_, i) => record(i)),
  );
  return topic;
}

const sluiceConsume: Contender = async (n) => {
  const topic = await filled('consume', n);
  const runtime = createRuntime();
  let source: KafkaSource<{ id: number }> | undefined;
  let count = 0;
  let sum = 0;
  return {
    run: async () => {
      source = kafkaSource<{ id: number }>({ connection, groupId: `${topic}-sluice`, topics: topic });
      runtime.spawn(
        actor<{ id: number }, never>({
          name: 'sum',
          subscribe: source.ref,
          handle: (env) => {
            count++;
            sum += env.data.id;
          },
        }),
      );
      await source.start(runtime);
      const s = source;
      await until(
        () => s.stats.settled >= n,
        () => s.stats.settled,
        'records settled',
        10_000,
      );
      expectCount('read', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await source?.close();
      await runtime.stop();
    },
  };
};

const rawConsume: Contender = async (n) => {
  const topic = await filled('consume', n);
  const consumer = new Consumer({
    clientId: 'bench-raw',
    groupId: `${topic}-raw`,
    bootstrapBrokers: [broker.bootstrap],
  });
  return {
    run: async () => {
      const stream = await consumer.consume({ topics: [topic], mode: MessagesStreamModes.EARLIEST, autocommit: true });
      const seen = new Set<string>();
      let sum = 0;
      for await (const m of stream) {
        const at = `${m.partition}:${m.offset}`;
        if (seen.has(at)) continue;
        seen.add(at);
        sum += (JSON.parse(m.value.toString()) as { id: number }).id;
        if (seen.size === n) break;
      }
      await stream.close();
      expectCount('id sum', sum, idSum(n));
    },
    dispose: () => consumer.close(true),
  };
};

const pipelineContender =
  (exactlyOnce: boolean): Contender =>
  async (n) => {
    const input = await filled(exactlyOnce ? 'eos' : 'alos', n);
    const output = await freshTopic('out');
    const runtime = createRuntime();
    const source = kafkaSource<{ id: number; pad: string }>({
      connection,
      groupId: `${input}-g`,
      topics: input,
      commit: exactlyOnce ? 'sink' : 'source',
      // Room for the batches in flight: over three partitions, three batches (exactly-once has two
      // transactions under way and the next batch filling; at-least-once, one write and one filling).
      maxPendingPerPartition: Math.max(1000, SINK_BATCH),
    });
    const sink = exactlyOnce
      ? await kafkaSink({ connection, topic: output, mode: 'transactional', transactionalId: `${input}-tx`, source })
      : await kafkaSink({ connection, topic: output });
    runtime.spawn(
      actor<{ id: number; pad: string }, { id: number; total: number }>({
        name: 'price',
        subscribe: source.ref,
        output: 'priced',
        pipeline: (order$) =>
          order$.pipe(map((env) => ({ ...env, data: { id: env.data.id, total: env.data.id * 2 } }))),
      }),
    );
    runtime.spawn(sinkActor({ name: 'out', subscribe: 'priced', sink, batch: { maxSize: SINK_BATCH, maxWaitMs: 5 } }));
    return {
      run: async () => {
        await source.start(runtime);
        await until(
          () => source.stats.settled >= n,
          () => source.stats.settled,
          'inputs settled',
          10_000,
        );
        expectCount('written', sink.stats.written, n);
      },
      dispose: async () => {
        await source.close();
        await runtime.stop();
        await sink.close();
      },
    };
  };

export default defineBench({
  bench: 'kafka',
  unit: 'msg/s',
  contenders: ['sluice', 'raw', 'at-least-once', 'exactly-once'],
  // Rounds of 20,000 (and 10,000 in the sink case) lasted 0.1 to 0.8 s, so a group join or a
  // collection decided the figure: spreads of 40-120% and ratios that moved by 0.3 between runs.
  // Three warm-up rounds: the broker compiles its hot paths over the first ones. After one, the
  // raw producer's rounds still rose by a third (94k, 119k, 127k) and whichever contender went
  // first in a round paid for it; after three they were within 20% of each other.
  warmup: 3,
  // With three warm-up rounds, a case of five rounds takes 35-50 s (each round fills its topic
  // first): at the default 30 s the sink case stopped after three rounds.
  budget: 75,
  cases: {
    produce: {
      messages: 100_000,
      description: `records published on the bus into a kafkaSink actor (batches of ${BATCH}); raw: sends of ${BATCH}, idempotent, acks=all, with the same idempotency key header`,
      contenders: { sluice: sluiceProduce, raw: rawProduce },
    },
    consume: {
      messages: 100_000,
      description:
        'a new group reads the topic from the earliest offset, join included; sluice: kafkaSource into an actor',
      contenders: { sluice: sluiceConsume, raw: rawConsume },
    },
    sink: {
      messages: 50_000,
      description: `kafkaSource -> actor (map) -> sink actor (batches of ${SINK_BATCH}) -> topic; exactly-once: each batch a transaction with the source offsets`,
      contenders: { 'at-least-once': pipelineContender(false), 'exactly-once': pipelineContender(true) },
    },
  },
  ratios: [
    ['sluice', 'raw'],
    ['exactly-once', 'at-least-once'],
  ],
  goals: [
    { case: 'produce', contender: 'sluice', versus: 'raw', atLeast: 0.85 },
    { case: 'consume', contender: 'sluice', versus: 'raw', atLeast: 0.85 },
    { case: 'sink', contender: 'exactly-once', versus: 'at-least-once', atLeast: 0.7 },
  ],
  notes: [
    `Apache Kafka 4.1.1, one KRaft node on loopback (-Xmx512m), topics of ${PARTITIONS} partitions, ~100-byte JSON values`,
  ],
});
