/**
 * A Kafka source whose records go to two branches, one of them through a transactional sink,
 * against a real broker: the sink's transactions commit only offsets every branch is done with.
 */

import { map } from 'rxjs';
import { actor, createRuntime, sinkActor } from 'sluice';
import { type KafkaCommit, kafkaSink, kafkaSource } from 'sluice/connectors/kafka';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type KafkaBroker, kafkaMissing, startKafka } from '../services/kafka/broker.ts';
import { createTopic, eventually, produce, readTopic } from './kafkaHelpers.ts';

const skip = kafkaMissing('the Kafka fan-out tests');
let broker: KafkaBroker;

beforeAll(async () => {
  if (skip === undefined) broker = await startKafka({ partitions: 1 });
}, 120_000);
afterAll(async () => {
  await broker?.close();
});

interface Item {
  readonly i: number;
}

describe.skipIf(skip !== undefined)('kafka transactional sink with a fan-out', () => {
  test('an input another branch still holds: no transaction commits its offset or past it, the offset never moves back, and each output is written once', async () => {
    const topic = 'fan-in';
    const out = 'fan-out';
    const HELD = 5;
    await createTopic(broker.bootstrap, topic, 1);
    await produce(
      broker.bootstrap,
      topic,
      Array.from({ length: 20 }, (_, i) => ({ key: `k${i}`, value: { i } })),
    );
    const connection = { brokers: [broker.bootstrap] };
    const source = kafkaSource<Item>({ connection, groupId: 'fan', topics: topic, commit: 'sink' });
    const sink = await kafkaSink({ connection, topic: out, mode: 'transactional', transactionalId: 'fan', source });
    // Each transaction's offset, with the lowest record the other branch had not finished then.
    const commits: { offset: number; unfinished: number }[] = [];
    const finished = new Set<number>();
    const unfinished = () => {
      let i = 0;
      while (finished.has(i)) i++;
      return i;
    };
    const committedBySink = source.committedBySink.bind(source);
    source.committedBySink = (offsets: readonly KafkaCommit[]) => {
      for (const o of offsets) commits.push({ offset: o.offset, unfinished: unfinished() });
      committedBySink(offsets);
    };
    let open: () => void = () => undefined;
    const gate = new Promise<void>((r) => {
      open = r;
    });
    const runtime = createRuntime();
    runtime.spawn(
      actor<Item, Item>({
        name: 'fan-tag',
        subscribe: source.ref,
        output: 'fan.tagged',
        pipeline: (item$) => item$.pipe(map((env) => ({ ...env, data: { i: env.data.i } }))),
      }),
    );
    runtime.spawn(
      sinkActor({ name: 'fan-sink', subscribe: 'fan.tagged', sink, batch: { maxSize: 10, maxWaitMs: 20 } }),
    );
    // The other branch: slow on one record, so it holds that record and those behind it.
    runtime.spawn(
      actor<Item, never>({
        name: 'fan-slow',
        subscribe: source.ref,
        handle: async (env) => {
          if (env.data.i === HELD) await gate;
          finished.add(env.data.i);
        },
      }),
    );
    try {
      await source.start(runtime);
      await eventually(() => sink.stats.written === 20 && sink.stats.transactions >= 2, 20_000, 'both batches written');
      expect(finished.has(HELD)).toBe(false);
      // The other branch goes on; the next records' transaction commits past what it did meanwhile.
      open();
      await eventually(() => finished.size === 20, 20_000, 'the other branch done');
      await produce(
        broker.bootstrap,
        topic,
        Array.from({ length: 10 }, (_, k) => ({ key: `k${20 + k}`, value: { i: 20 + k } })),
      );
      await eventually(() => sink.stats.written === 30 && finished.size === 30, 20_000, 'the last records written');
      await eventually(() => commits.at(-1)?.offset === 30, 20_000, 'the last transaction committed to the end');
      const offsets = commits.map((c) => c.offset);
      expect({ past: commits.filter((c) => c.offset > c.unfinished), offsets }).toEqual({
        past: [],
        offsets: [...offsets].sort((a, b) => a - b),
      });
      const written = await readTopic(broker.bootstrap, out, { expected: 30, readCommitted: true, settleMs: 500 });
      expect(written.map((r) => (JSON.parse(r.value) as Item).i).sort((a, b) => a - b)).toEqual(
        Array.from({ length: 30 }, (_, i) => i),
      );
    } finally {
      open();
      await source.close();
      await runtime.stop();
      await sink.close();
    }
  }, 90_000);
});
