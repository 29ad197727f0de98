/**
 * `npx tsx test/services/kafka/compareClients.ts [--messages=N] [--rounds=N]`: the two Node Kafka
 * clients side by side on one real broker (docs/kafka.md gives the figures and the choice).
 *
 * Each round, for each client in turn (interleaved, so both see the same machine load):
 * - `produce`: N records of 100 B with a key and a header into a 3-partition topic, in sends of
 *   1,000 with acks=all (awaited one after another);
 * - `produce-one`: 500 single awaited sends;
 * - `consume`: a new consumer group reads the N records from the earliest offset; timed from the
 *   subscription to the last new record, so the group join is included; every record is checked
 *   (its key, its header), and records delivered twice within the one consumer are counted.
 * Then once per client: a transactional producer commits 5 records, aborts 5 and commits 1; a
 * read_committed consumer must see 6 and a read_uncommitted one 11. platformatic also joins a
 * group with the KIP-848 protocol (`groupProtocol: 'consumer'`).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Admin,
  Consumer,
  GroupProtocols,
  MessagesStreamModes,
  ProduceAcks,
  Producer,
  stringDeserializers,
  stringSerializers,
} from '@platformatic/kafka';
import { Kafka, logLevel } from 'kafkajs';
import { startKafka } from './broker.ts';

const arg = (name: string, fallback: number) =>
  Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback);
const N = arg('messages', 20_000);
const ROUNDS = arg('rounds', 3);
const SINGLES = 500;
const PAYLOAD = 'x'.repeat(100);
const PARTITIONS = 3;

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const broker = await startKafka();
const bootstrap = broker.bootstrap;
let topicSeq = 0;
const admin = new Admin({ clientId: 'compare-admin', bootstrapBrokers: [bootstrap] });
async function topic(): Promise<string> {
  const name = `compare-${++topicSeq}`;
  await admin.createTopics({ topics: [name], partitions: PARTITIONS, replicas: 1 });
  return name;
}

type Result = { produce: number; produceOne: number; consume: number; duplicates: number };

async function platformaticRound(): Promise<Result> {
  const t = await topic();
  const producer = new Producer({
    clientId: 'plt',
    bootstrapBrokers: [bootstrap],
    acks: ProduceAcks.ALL,
    serializers: stringSerializers,
  });
  let started = performance.now();
  for (let i = 0; i < N; i += 1000) {
    const messages = [];
    for (let j = i; j < i + 1000 && j < N; j++)
      messages.push({ topic: t, key: `k${j}`, value: PAYLOAD, headers: { trace: `t${j}` } });
    await producer.send({ messages });
  }
  const produce = N / ((performance.now() - started) / 1000);
  started = performance.now();
  for (let i = 0; i < SINGLES; i++) await producer.send({ messages: [{ topic: t, key: `s${i}`, value: PAYLOAD }] });
  const produceOne = SINGLES / ((performance.now() - started) / 1000);
  await producer.close();

  const consumer = new Consumer({
    clientId: 'plt',
    groupId: `${t}-g`,
    bootstrapBrokers: [bootstrap],
    deserializers: stringDeserializers,
  });
  started = performance.now();
  const stream = await consumer.consume({ topics: [t], mode: MessagesStreamModes.EARLIEST, autocommit: true });
  const total = N + SINGLES;
  const keys = new Set<string>();
  let seen = 0;
  let headers = 0;
  for await (const m of stream) {
    seen++;
    if (keys.has(m.key)) continue;
    keys.add(m.key);
    if (m.headers.get('trace') === `t${m.key.slice(1)}`) headers++;
    if (keys.size === total) break;
  }
  const consume = total / ((performance.now() - started) / 1000);
  if (headers !== N) throw new Error(`platformatic: ${headers} headers of ${N}`);
  await stream.close();
  await consumer.close(true);
  return { produce, produceOne, consume, duplicates: seen - total };
}

async function kafkajsRound(): Promise<Result> {
  const t = await topic();
  const kafka = new Kafka({ clientId: 'kjs', brokers: [bootstrap], logLevel: logLevel.NOTHING });
  const producer = kafka.producer();
  await producer.connect();
  let started = performance.now();
  for (let i = 0; i < N; i += 1000) {
    const messages = [];
    for (let j = i; j < i + 1000 && j < N; j++)
      messages.push({ key: `k${j}`, value: PAYLOAD, headers: { trace: `t${j}` } });
    await producer.send({ topic: t, acks: -1, messages });
  }
  const produce = N / ((performance.now() - started) / 1000);
  started = performance.now();
  for (let i = 0; i < SINGLES; i++)
    await producer.send({ topic: t, acks: -1, messages: [{ key: `s${i}`, value: PAYLOAD }] });
  const produceOne = SINGLES / ((performance.now() - started) / 1000);
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `${t}-g` });
  started = performance.now();
  await consumer.connect();
  await consumer.subscribe({ topics: [t], fromBeginning: true });
  const total = N + SINGLES;
  const keys = new Set<string>();
  let seen = 0;
  let headers = 0;
  await new Promise<void>((resolve, reject) => {
    consumer
      .run({
        eachMessage: async ({ message }) => {
          const key = message.key?.toString() ?? '';
          seen++;
          if (keys.has(key)) return;
          keys.add(key);
          if (message.headers?.trace?.toString() === `t${key.slice(1)}`) headers++;
          if (keys.size === total) resolve();
        },
      })
      .catch(reject);
  });
  const consume = total / ((performance.now() - started) / 1000);
  if (headers !== N) throw new Error(`kafkajs: ${headers} headers of ${N}`);
  await consumer.disconnect();
  return { produce, produceOne, consume, duplicates: seen - total };
}

async function countPlatformatic(t: string, isolationLevel: number, expected: number): Promise<number> {
  const consumer = new Consumer({
    clientId: 'plt-count',
    groupId: `${t}-${isolationLevel}-${Math.random()}`,
    bootstrapBrokers: [bootstrap],
    isolationLevel,
  });
  const stream = await consumer.consume({ topics: [t], mode: MessagesStreamModes.EARLIEST, autocommit: false });
  let seen = 0;
  const deadline = Date.now() + 5_000;
  stream.on('data', () => seen++);
  while (Date.now() < deadline && seen < expected) await sleep(50);
  await sleep(300); // and nothing more after the expected count (bounded)
  await stream.close();
  await consumer.close(true);
  return seen;
}

async function platformaticTransactions(): Promise<string> {
  const t = await topic();
  const producer = new Producer({
    clientId: 'plt-tx',
    bootstrapBrokers: [bootstrap],
    idempotent: true,
    transactionalId: `${t}-tx`,
    serializers: stringSerializers,
  });
  const batch = (n: number, label: string) =>
    Array.from({ length: n }, (_, i) => ({ topic: t, key: `${label}${i}`, value: label }));
  let tx = await producer.beginTransaction();
  await tx.send({ messages: batch(5, 'c') });
  await tx.commit();
  tx = await producer.beginTransaction();
  await tx.send({ messages: batch(5, 'a') });
  await tx.abort();
  tx = await producer.beginTransaction();
  await tx.send({ messages: batch(1, 'd') });
  await tx.commit();
  await producer.close();
  const committed = await countPlatformatic(t, 1, 6);
  const uncommitted = await countPlatformatic(t, 0, 11);
  // KIP-848: the new consumer group protocol.
  const c848 = new Consumer({
    clientId: 'plt-848',
    groupId: `${t}-848`,
    bootstrapBrokers: [bootstrap],
    groupProtocol: GroupProtocols.CONSUMER,
  });
  const started = performance.now();
  const s = await c848.consume({ topics: [t], mode: MessagesStreamModes.EARLIEST, autocommit: false });
  let got = 0;
  for await (const _ of s) if (++got === 6) break;
  const joinMs = performance.now() - started;
  await s.close();
  await c848.close(true);
  return `read_committed ${committed}/6, read_uncommitted ${uncommitted}/11, KIP-848 group read ${got} in ${joinMs.toFixed(0)} ms`;
}

async function kafkajsTransactions(): Promise<string> {
  const t = await topic();
  const kafka = new Kafka({ clientId: 'kjs-tx', brokers: [bootstrap], logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: true, transactionalId: `${t}-tx`, maxInFlightRequests: 1 });
  await producer.connect();
  const batch = (n: number, label: string) =>
    Array.from({ length: n }, (_, i) => ({ key: `${label}${i}`, value: label }));
  let tx = await producer.transaction();
  await tx.send({ topic: t, messages: batch(5, 'c') });
  await tx.sendOffsets({
    consumerGroupId: `${t}-src`,
    topics: [{ topic: t, partitions: [{ partition: 0, offset: '1' }] }],
  });
  await tx.commit();
  tx = await producer.transaction();
  await tx.send({ topic: t, messages: batch(5, 'a') });
  await tx.abort();
  tx = await producer.transaction();
  await tx.send({ topic: t, messages: batch(1, 'd') });
  await tx.commit();
  await producer.disconnect();
  const count = async (readUncommitted: boolean, expected: number) => {
    const consumer = kafka.consumer({ groupId: `${t}-${readUncommitted}`, readUncommitted });
    await consumer.connect();
    await consumer.subscribe({ topics: [t], fromBeginning: true });
    let seen = 0;
    await consumer.run({ eachMessage: async () => void seen++ });
    const deadline = Date.now() + 8_000;
    while (Date.now() < deadline && seen < expected) await sleep(50);
    await sleep(300);
    await consumer.disconnect();
    return seen;
  };
  return `read_committed ${await count(false, 6)}/6, read_uncommitted ${await count(true, 11)}/11, sendOffsets ok`;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
try {
  const results: Record<string, Result[]> = { platformatic: [], kafkajs: [] };
  for (let r = 0; r < ROUNDS; r++) {
    results.platformatic?.push(await platformaticRound());
    results.kafkajs?.push(await kafkajsRound());
  }
  const rows = Object.entries(results).map(([client, rs]) => ({
    client,
    'produce msg/s': Math.round(median(rs.map((x) => x.produce))),
    'produce-one msg/s': Math.round(median(rs.map((x) => x.produceOne))),
    'consume msg/s': Math.round(median(rs.map((x) => x.consume))),
    'duplicates delivered': rs.map((x) => x.duplicates).join('/'),
  }));
  console.table(rows);
  console.log(`platformatic transactions: ${await platformaticTransactions()}`);
  console.log(`kafkajs transactions: ${await kafkajsTransactions()}`);
  console.log(JSON.stringify({ bench: 'kafka-clients', unit: 'msg/s', messages: N, rounds: ROUNDS, results: rows }));
} finally {
  await admin.close();
  await broker.close();
}
