/**
 * The Kafka connector against a real Apache Kafka broker (test/services/kafka/broker.ts), started
 * once for this file: a round trip, exactly-once through a rebalance between two consumers of one
 * group, a broker restart mid-stream, and interoperability with kcat.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { Channel } from 'node:diagnostics_channel';
import { fileURLToPath } from 'node:url';
import {
  Admin,
  Connection,
  consumerGroupChannel,
  consumerOffsetsChannel,
  Producer,
  producerSendsChannel,
  producerTransactionsChannel,
  stringSerializers,
  TimeoutError,
} from '@platformatic/kafka';
import { map } from 'rxjs';
import { actor, ConnectorError, createRuntime, MemoryStore, type Runtime, sinkActor } from 'sluice';
import {
  type KafkaCommit,
  type KafkaSink,
  type KafkaSource,
  type KafkaTenure,
  kafkaSink,
  kafkaSource,
} from 'sluice/connectors/kafka';
import { mapAsync } from 'sluice/operators';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { WINDOW_PER_PENDING } from '../../connectors/kafka/source.ts';
import { type KafkaBroker, kafkaMissing, startKafka } from '../services/kafka/broker.ts';
import { createTopic, eventually, produce, readTopic, readWithKcat } from './kafkaHelpers.ts';

const skip = kafkaMissing('the Kafka connector tests');
const kcatMissing = missingKcat();

/** kcat is the client that is not Sluice; CI installs it (`.ci/run`), elsewhere its test is skipped. */
function missingKcat(): string | undefined {
  try {
    execFileSync('kcat', ['-V'], { stdio: 'ignore' });
    return undefined;
  } catch {
    if (process.env.CI === 'true') return undefined;
    const reason = 'the kcat interoperability test needs kcat: apt-get install kcat';
    console.warn(`skipped: ${reason}`);
    return reason;
  }
}
let broker: KafkaBroker;

beforeAll(async () => {
  if (skip === undefined) broker = await startKafka({ partitions: 3 });
}, 120_000);
afterAll(async () => {
  await broker?.close();
});

interface Order {
  readonly i: number;
}

const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

/** A runtime reading `source` through an actor that tags each order, into `sink`. */
function pipeline(
  source: KafkaSource<Order>,
  sink: KafkaSink,
  name: string,
  seen?: Set<number>,
  slowMs = 0,
  hold: () => Promise<void> = () => Promise.resolve(),
): Runtime {
  const runtime = createRuntime();
  runtime.spawn(
    actor<Order, Order & { by: string }>({
      name: `tag-${name}`,
      subscribe: source.ref,
      output: `tagged.${name}`,
      // `{ ...env }` keeps the record's headers (trace context included) on the output.
      pipeline: (order$) =>
        slowMs === 0
          ? order$.pipe(
              map((env) => {
                seen?.add(env.data.i);
                return { ...env, data: { ...env.data, by: name } };
              }),
            )
          : // An async step of `slowMs` per record (after `hold`), 8 at a time: work is in flight when a rebalance comes.
            order$.pipe(
              mapAsync(
                (data) =>
                  hold().then(
                    () =>
                      new Promise<Order & { by: string }>((r) => setTimeout(() => r({ ...data, by: name }), slowMs)),
                  ),
                {
                  concurrency: 8,
                },
              ),
            ),
    }),
  );
  runtime.spawn(
    sinkActor({
      name: `out-${name}`,
      subscribe: `tagged.${name}`,
      sink,
      batch: { maxSize: 200, maxWaitMs: 20 },
      retry: { maxAttempts: 50, backoff: { initialMs: 50, maxMs: 500 } },
    }),
  );
  return runtime;
}

function values(records: readonly { value: string }[]): number[] {
  return records.map((r) => (JSON.parse(r.value) as Order).i).sort((a, b) => a - b);
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

describe.skipIf(skip !== undefined)('kafka connector on a real broker', () => {
  test('a round trip keeps every record once, its headers and a key rooted in topic/partition/offset', async () => {
    const N = 600;
    await createTopic(broker.bootstrap, 'rt-in', 3);
    await produce(
      broker.bootstrap,
      'rt-in',
      range(N).map((i) => ({ key: `k${i % 20}`, value: { i }, headers: { traceparent: TRACEPARENT, n: String(i) } })),
    );
    const connection = { brokers: [broker.bootstrap] };
    const source = kafkaSource<Order>({ connection, groupId: 'rt', topics: 'rt-in' });
    const sink = await kafkaSink({ connection, topic: 'rt-out' });
    const runtime = pipeline(source, sink, 'rt');
    await source.start(runtime);
    expect(source.assignments.sort()).toEqual(['rt-in:0', 'rt-in:1', 'rt-in:2']);
    await eventually(() => sink.stats.written === N && source.stats.settled === N, 20_000, 'all records written');
    expect(source.lag()).toEqual({ messages: 0, timeMs: 0, ackPending: 0 });
    // In the runtime's status: connected, its lag and counts; closed after close().
    expect(runtime.status().sources).toEqual([
      expect.objectContaining({
        name: source.name,
        kind: 'kafka',
        connection: 'connected',
        counters: expect.objectContaining({ settled: N }),
      }),
    ]);
    await source.close();
    expect(runtime.status().sources[0]?.connection).toBe('closed');
    await runtime.stop();
    await sink.close();

    const out = await readTopic(broker.bootstrap, 'rt-out', { expected: N });
    expect(values(out)).toEqual(range(N));
    for (const r of out) {
      const i = (JSON.parse(r.value) as Order).i;
      expect(r.headers.traceparent).toBe(TRACEPARENT);
      expect(r.headers.n).toBe(String(i));
      expect(r.headers['sluice-idempotency-key']).toMatch(/^kafka\/rt-in\/[0-2]\/\d+\/tag-rt\/0$/);
      expect(r.key).toBe(`k${i % 20}`);
    }
    // The committed offsets reach the end of each partition: a restarted group reads nothing again.
    const again = kafkaSource<Order>({ connection, groupId: 'rt', topics: 'rt-in' });
    const seen: number[] = [];
    const rt2 = createRuntime();
    rt2.spawn(
      actor<Order, never>({ name: 'again', subscribe: again.ref, handle: (env) => void seen.push(env.data.i) }),
    );
    await again.start(rt2);
    expect(again.lag().messages).toBe(0);
    await again.close();
    await rt2.stop();
    expect(seen).toEqual([]);
  }, 60_000);

  test('a header whose name the bus refuses is left out, the record published: counted, and logged once per name', async () => {
    await createTopic(broker.bootstrap, 'hdr-in', 1);
    await produce(
      broker.bootstrap,
      'hdr-in',
      range(3).map((i) => ({ key: `k${i}`, value: { i }, headers: { 'bad name': 'x', ok: String(i) } })),
    );
    const warnings: string[] = [];
    const runtime = createRuntime({ logger: { ...quiet, warn: (m: string) => warnings.push(m) } });
    const got: { i: number; headers: Record<string, string> }[] = [];
    runtime.bus.subscribe<Order>('hdr-in', {
      callback: (env) => void got.push({ i: env.data.i, headers: { ...env.headers } }),
    });
    const source = kafkaSource<Order>({
      connection: { brokers: [broker.bootstrap] },
      groupId: 'hdr',
      topics: 'hdr-in',
    });
    await source.start({ bus: runtime.bus, logger: { ...quiet, warn: (m: string) => void warnings.push(m) } });
    try {
      await eventually(() => got.length === 3 && source.stats.settled === 3, 20_000, 'all three delivered');
      expect(got.map((g) => [g.i, g.headers.ok, g.headers['bad name']])).toEqual([
        [0, '0', undefined],
        [1, '1', undefined],
        [2, '2', undefined],
      ]);
      expect(source.stats.headersDropped).toBe(3);
      expect(warnings.filter((w) => w.includes('"bad name"'))).toHaveLength(1);
      expect(warnings.find((w) => w.includes('"bad name"'))).toMatch(
        /record hdr-in\/0\/0 has a header named "bad name"/,
      );
    } finally {
      await source.close();
      await runtime.stop();
    }
  });

  test('two consumers of one group share the partitions; a rebalance midway loses and doubles nothing (read_committed)', async () => {
    const N = 3000;
    await createTopic(broker.bootstrap, 'eo-in', 4);
    await produce(
      broker.bootstrap,
      'eo-in',
      range(N).map((i) => ({ key: `k${i}`, value: { i } })),
    );
    const connection = { brokers: [broker.bootstrap] };
    // Once a wrote its first part, its work waits at a gate until the partitions are split: records
    // are in flight when the rebalance comes, whatever the machine's speed (the source releases
    // them after drainTimeoutMs).
    let holding = false;
    let open!: () => void;
    const gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const hold = () => (holding ? gate : Promise.resolve());
    const make = async (name: string) => {
      const source = kafkaSource<Order>({
        connection,
        groupId: 'eo',
        topics: 'eo-in',
        commit: 'sink',
        maxPendingPerPartition: 100,
        sessionTimeoutMs: 6_000,
        drainTimeoutMs: 1_000,
      });
      const sink = await kafkaSink({
        connection,
        topic: 'eo-out',
        mode: 'transactional',
        transactionalId: `eo-${name}`,
        source,
        logger: quiet,
      });
      return { source, sink, runtime: pipeline(source, sink, name, undefined, 2, name === 'a' ? hold : undefined) };
    };
    const a = await make('a');
    await a.source.start(a.runtime);
    expect(a.source.assignments).toHaveLength(4);
    await eventually(() => a.sink.stats.written >= 300, 20_000, 'a first part written by a alone');
    holding = true;
    const b = await make('b');
    await b.source.start(b.runtime);
    await eventually(
      () => a.source.assignments.length === 2 && b.source.assignments.length === 2,
      20_000,
      'a 2/2 split',
    );
    open();
    expect([...a.source.assignments, ...b.source.assignments].sort()).toEqual([
      'eo-in:0',
      'eo-in:1',
      'eo-in:2',
      'eo-in:3',
    ]);
    // Done when the group's committed offsets (committed with the outputs) cover every record.
    await eventually(
      () => a.source.lag().messages + b.source.lag().messages === 0,
      40_000,
      'both consumers at the end',
    );
    await eventually(() => a.source.lag().ackPending + b.source.lag().ackPending === 0, 20_000, 'all settled');
    for (const x of [a, b]) {
      await x.source.close();
      await x.runtime.stop();
      await x.sink.close();
    }
    expect(a.source.stats.rebalances).toBeGreaterThanOrEqual(1);
    // The partitions a gave up still had records in flight: the rebalance came midway.
    expect(a.source.stats.released).toBeGreaterThan(0);
    expect(b.sink.stats.written).toBeGreaterThan(0);

    const out = await readTopic(broker.bootstrap, 'eo-out', { expected: N, readCommitted: true, settleMs: 500 });
    expect(values(out)).toEqual(range(N));
    const committed = await groupOffsets('eo', 'eo-in');
    expect(committed).toBe(N);
  }, 90_000);

  test('a member dropped from the group and joining again commits nothing with its new generation before it takes that generation’s partitions', async () => {
    // A member the group dropped (its session lapsed under load, or an admin removed it) hears it
    // only at its next heartbeat (UNKNOWN_MEMBER_ID) and joins again without a rebalance event.
    // The client takes the new generation from the JoinGroup answer, before SyncGroup gives the
    // partitions of that generation: a transaction started in between must not name the new
    // generation for the partitions it had before, which the broker would accept (it checks the
    // generation, not the assignment) while their new owner writes them too.
    await createTopic(broker.bootstrap, 'fence-in', 2);
    const connection = { brokers: [broker.bootstrap] };
    const member = (heartbeatIntervalMs: number) =>
      kafkaSource<Order>({ connection, groupId: 'fence', topics: 'fence-in', commit: 'sink', heartbeatIntervalMs });
    // a hears of being dropped only at its next heartbeat: by then b holds both partitions.
    const a = member(5_000);
    const rtA = createRuntime();
    const sink = await kafkaSink({
      connection,
      topic: 'fence-out',
      mode: 'transactional',
      transactionalId: 'fence-a',
      source: a,
      logger: quiet,
    });
    await a.start(rtA);
    expect(a.assignments.sort()).toEqual(['fence-in:0', 'fence-in:1']);
    const consumer = a.membership()?.consumer;
    const memberId = a.membership()?.memberId;
    expect(memberId).toBeDefined();

    // Records as an actor subscribed to the source would key them (position 0 of each partition).
    const record = (p: number, stage: string) => ({
      key: `kafka/fence-in/${p}/0/x/0`,
      value: { p, stage },
      revision: undefined,
      envelope: undefined,
    });
    // Once armed, a write begun the moment a's consumer asks for its partitions after joining again.
    let armed = false;
    let write: Promise<void> | undefined;
    let generationAtWrite: number | undefined;
    const onStart = (message: unknown) => {
      const context = message as { client?: unknown; operation?: string };
      if (write !== undefined || !armed || context.client !== consumer || context.operation !== 'syncGroup') return;
      generationAtWrite = consumer?.generationId;
      write = sink.write([record(0, 'new'), record(1, 'new')]);
    };
    consumerGroupChannel.start.subscribe(onStart);
    const b = member(1000);
    const rtB = createRuntime();
    try {
      // The group drops a right after one of its heartbeats; b joins and takes both partitions;
      // a's next heartbeat, seconds later, finds it dropped.
      await new Promise((resolve) => consumer?.once('consumer:heartbeat:end', resolve));
      const admin = new Admin({ clientId: 'test-admin', bootstrapBrokers: [broker.bootstrap] });
      try {
        await admin.removeMembersFromConsumerGroup({ groupId: 'fence', members: [{ memberId: memberId as string }] });
      } finally {
        await admin.close();
      }
      await b.start(rtB);
      expect(b.assignments.sort()).toEqual(['fence-in:0', 'fence-in:1']);
      // Not told yet, a names its old generation: the broker refuses the offsets and the
      // transaction aborts, its records with it (sent at the same time as the offsets).
      const stale = a.membership()?.generationId;
      expect(stale).toBeDefined();
      await expect(sink.write([record(0, 'stale')])).rejects.toThrow();
      expect(sink.stats.aborted).toBe(1);
      expect(a.membership()?.generationId).toBe(stale);
      armed = true;
      await eventually(
        () => write !== undefined && a.assignments.length === 1 && b.assignments.length === 1,
        30_000,
        'a back in the group with one partition',
      );
      await write;
      expect(generationAtWrite).toBe(a.membership()?.generationId);
      const mine = a.assignments[0] as string;
      const theirs = b.assignments[0] as string;
      expect(mine).not.toBe(theirs);
      // Only the record of the partition a holds in the generation its transaction named.
      // One transaction holds both records when the bug is there: the settle time sees the second.
      const out = await readTopic(broker.bootstrap, 'fence-out', { expected: 1, readCommitted: true, settleMs: 500 });
      expect(out.map((r) => JSON.parse(r.value))).toEqual([{ p: Number(mine.split(':')[1]), stage: 'new' }]);
      // The aborted transaction's record is in the log: read_committed readers skip it.
      const log = await readWithKcat(broker.bootstrap, 'fence-out', 'read_uncommitted');
      expect(log.map((r) => JSON.parse(r.value).stage)).toContain('stale');
      expect(sink.stats.skipped).toBe(1);
    } finally {
      consumerGroupChannel.start.unsubscribe(onStart);
      await a.close();
      await b.close();
      await rtA.stop();
      await rtB.stop();
      await sink.close();
    }
  }, 60_000);

  test('exactly-once: an output in flight since an earlier tenure of a partition (lost, processed and committed by another member, taken back) is not written again', async () => {
    await createTopic(broker.bootstrap, 'tenure-in', 2);
    const connection = { brokers: [broker.bootstrap] };
    const member = () =>
      kafkaSource<Order>({
        connection,
        groupId: 'tenure',
        topics: 'tenure-in',
        commit: 'sink',
        sessionTimeoutMs: 6_000,
      });
    const warnings: string[] = [];
    const a = member();
    const rtA = createRuntime();
    const sinkA = await kafkaSink({
      connection,
      topic: 'tenure-out',
      mode: 'transactional',
      transactionalId: 'tenure-a',
      source: a,
      logger: { ...quiet, warn: (m: string) => warnings.push(m) },
    });
    await a.start(rtA);
    expect(a.assignments.sort()).toEqual(['tenure-in:0', 'tenure-in:1']);
    const b = member();
    const sinkB = await kafkaSink({
      connection,
      topic: 'tenure-out',
      mode: 'transactional',
      transactionalId: 'tenure-b',
      source: b,
      logger: quiet,
    });
    const rtB = pipeline(b, sinkB, 'b');
    try {
      // b joins: a gives up one partition, while an output of its record at offset 2 is still on
      // its way to a's sink (made below: the sink sees only its key).
      await b.start(rtB);
      await eventually(() => a.assignments.length === 1 && b.assignments.length === 1, 30_000, 'a 1/1 split');
      const moved = b.assignments[0] as string;
      const partition = Number(moved.split(':')[1]);
      const producer = new Producer({
        clientId: 'test-producer',
        bootstrapBrokers: [broker.bootstrap],
        serializers: stringSerializers,
      });
      try {
        await producer.send({
          messages: range(5).map((i) => ({
            topic: 'tenure-in',
            partition,
            key: `k${i}`,
            value: JSON.stringify({ i }),
          })),
        });
      } finally {
        await producer.close();
      }
      // b processes the partition and commits its offsets with its outputs.
      await eventually(() => b.committedOffsets().get(moved) === 5, 30_000, 'b committed the partition');
      await b.close();
      await rtB.stop();
      await sinkB.close();
      await eventually(() => a.assignments.length === 2, 30_000, 'a holding both partitions again');
      expect(a.committedOffsets().get(moved)).toBe(5);
      const first = await readTopic(broker.bootstrap, 'tenure-out', { expected: 5, readCommitted: true, settleMs: 0 });
      const key = first.find((r) => JSON.parse(r.value).i === 2)?.headers['sluice-idempotency-key'];
      expect(key).toBeDefined();
      // The output of the earlier tenure reaches a's sink: below the committed offset, its input
      // processed by b, and a wrote no output of it in its new tenure.
      await sinkA.write([{ key: key as string, value: { i: 2, by: 'a' }, revision: undefined, envelope: undefined }]);
      expect(sinkA.stats).toMatchObject({ written: 0, skipped: 1 });
      expect(warnings).toEqual([]);
      const out = await readTopic(broker.bootstrap, 'tenure-out', { expected: 5, readCommitted: true, settleMs: 500 });
      expect(values(out)).toEqual(range(5));
    } finally {
      await a.close();
      await b.close();
      await rtA.stop();
      await rtB.stop();
      await sinkA.close();
      await sinkB.close();
    }
  }, 90_000);

  test('exactly-once: an output in flight since an earlier tenure, the partition taken back before anyone committed past its input, is not written; the new tenure writes it once', async () => {
    // a reads both partitions and its work waits at a gate. b joins, takes one of them, commits
    // nothing (its source leaves commits to a transactional sink it does not have) and leaves: a
    // takes the partition back from offset 0, a new tenure, while its outputs of the first tenure
    // are still at the gate. The gate opens once the new tenure's records reached it too, and the
    // sink gets the outputs of both tenures in one batch: above the committed offset, the old ones
    // looked like the new tenure's own.
    await createTopic(broker.bootstrap, 'revoke-in', 2);
    const N = 10;
    await produce(
      broker.bootstrap,
      'revoke-in',
      range(N).map((i) => ({ key: `k${i}`, value: { i }, partition: i % 2 })),
    );
    const connection = { brokers: [broker.bootstrap] };
    const member = () =>
      kafkaSource<Order>({
        connection,
        groupId: 'revoke',
        topics: 'revoke-in',
        commit: 'sink',
        sessionTimeoutMs: 6_000,
      });
    const a = member();
    const sink = await kafkaSink({
      connection,
      topic: 'revoke-out',
      mode: 'transactional',
      transactionalId: 'revoke-a',
      source: a,
      logger: quiet,
    });
    let entered = 0;
    let open!: () => void;
    const gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const rtA = createRuntime();
    const tag = rtA.spawn(
      actor<Order, Order>({
        name: 'tag-revoke',
        subscribe: a.ref,
        output: 'tagged.revoke',
        pipeline: (order$) =>
          order$.pipe(
            mapAsync(
              (data) => {
                entered++;
                return gate.then(() => data);
              },
              { concurrency: 64 },
            ),
          ),
      }),
    );
    // One batch of every output that reaches the gate: half of the records twice (both tenures).
    const BATCH = N + N / 2;
    const out = rtA.spawn(
      sinkActor({
        name: 'out-revoke',
        subscribe: 'tagged.revoke',
        sink,
        batch: { maxSize: BATCH, maxWaitMs: 60_000 },
        retry: { maxAttempts: 50, backoff: { initialMs: 50, maxMs: 500 } },
      }),
    );
    const b = member();
    const rtB = createRuntime();
    try {
      await a.start(rtA);
      expect(a.assignments.sort()).toEqual(['revoke-in:0', 'revoke-in:1']);
      await eventually(() => entered === N, 30_000, "a's first tenure of both partitions at the gate");
      await b.start(rtB);
      await eventually(() => a.assignments.length === 1 && b.assignments.length === 1, 30_000, 'a 1/1 split');
      const moved = b.assignments[0] as string;
      await eventually(() => b.stats.published === N / 2, 30_000, 'b read the partition');
      await b.close();
      await eventually(() => a.assignments.length === 2, 30_000, 'a holding both partitions again');
      // Nobody committed: the new tenure starts at 0 and reads the partition's records again.
      expect(a.committedOffsets().get(moved)).toBe(0);
      await eventually(() => entered === BATCH, 30_000, "a's new tenure of the moved partition at the gate");
      open();
      await eventually(
        () => a.committedOffsets().get('revoke-in:0') === N / 2 && a.committedOffsets().get('revoke-in:1') === N / 2,
        30_000,
        'both partitions committed',
      );
      await tag.idle();
      await out.idle();
      // The outputs dropped by the sink settled as the written ones did: nothing is left held.
      expect([tag.inFlight, tag.absorbed, out.inFlight, out.absorbed]).toEqual([0, 0, 0, 0]);
      const read = await readTopic(broker.bootstrap, 'revoke-out', { expected: N, readCommitted: true, settleMs: 500 });
      expect(values(read)).toEqual(range(N));
      expect(sink.stats).toMatchObject({ written: N, skipped: N / 2 });
      expect(await groupOffsets('revoke', 'revoke-in')).toBe(N);
    } finally {
      open();
      await a.close();
      await b.close();
      await rtA.stop();
      await rtB.stop();
      await sink.close();
    }
  }, 90_000);

  test('exactly-once with a fan-out: an input another branch still holds: no transaction commits its offset or past it, the offset never moves back, and each output is written once', async () => {
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
    const source = kafkaSource<Order>({ connection, groupId: 'fan', topics: topic, commit: 'sink' });
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
      actor<Order, Order>({
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
      actor<Order, never>({
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
      expect(written.map((r) => (JSON.parse(r.value) as Order).i).sort((a, b) => a - b)).toEqual(
        Array.from({ length: 30 }, (_, i) => i),
      );
    } finally {
      open();
      await source.close();
      await runtime.stop();
      await sink.close();
    }
  }, 90_000);

  test('a commit the broker made but whose answer was lost is sent again, not aborted: the batch is written once (read_committed)', async () => {
    const sink = await lostCommitAnswer('unheard', false);
    expect(sink.stats).toMatchObject({ aborted: 0, producersReplaced: 0 });
    expect(sink.stats.commitRetries).toBeGreaterThanOrEqual(1);
  }, 90_000);

  test('a commit never answered: the producer is replaced, the group offsets show the transaction committed, and its batch is not written again', async () => {
    const sink = await lostCommitAnswer('unheard2', true);
    expect(sink.stats).toMatchObject({ producersReplaced: 1, commitsFound: 1 });
    // The transaction sent beside it, if any, is aborted: it may not commit before the group's
    // offsets tell whether the unanswered one did.
    expect(sink.stats.aborted).toBeLessThanOrEqual(1);
    expect(sink.stats.skipped).toBeGreaterThanOrEqual(1);
  }, 90_000);

  test('exactly-once, pipelined: one transaction sends its records while the one before it commits, on the other producer; read_committed sees every record once and in order', async () => {
    const N = 3000;
    await createTopic(broker.bootstrap, 'pipe-in', 1);
    await createTopic(broker.bootstrap, 'pipe-out', 1);
    await produce(
      broker.bootstrap,
      'pipe-in',
      range(N).map((i) => ({ key: `k${i}`, value: { i } })),
    );
    const connection = { brokers: [broker.bootstrap] };
    const source = kafkaSource<Order>({ connection, groupId: 'pipe', topics: 'pipe-in', commit: 'sink' });
    const sink = await kafkaSink({
      connection,
      topic: 'pipe-out',
      mode: 'transactional',
      transactionalId: 'pipe',
      source,
      logger: quiet,
    });
    expect(sink.writesAtOnce).toBe(2);
    // Per producer (the client object), whether a transaction of it is open, and the sends made
    // while the other producer's transaction was open, committing.
    const open = new Map<object, boolean>();
    let overlapped = 0;
    const producers = new Set<object>();
    const onTransaction = (message: unknown) => {
      const { client, operation } = message as { client: object; operation: string };
      producers.add(client);
      if (operation === 'begin') open.set(client, true);
    };
    const onTransactionEnd = (message: unknown) => {
      const { client, operation } = message as { client: object; operation: string };
      if (operation === 'commit' || operation === 'abort') open.set(client, false);
    };
    const onSend = (message: unknown) => {
      const { client } = message as { client: object };
      for (const [other, isOpen] of open) if (other !== client && isOpen) overlapped++;
    };
    producerTransactionsChannel.start.subscribe(onTransaction);
    producerTransactionsChannel.asyncEnd.subscribe(onTransactionEnd);
    producerSendsChannel.start.subscribe(onSend);
    const runtime = pipeline(source, sink, 'pipe');
    try {
      await source.start(runtime);
      await eventually(() => source.committedOffsets().get('pipe-in:0') === N, 40_000, 'all committed');
    } finally {
      producerTransactionsChannel.start.unsubscribe(onTransaction);
      producerTransactionsChannel.asyncEnd.unsubscribe(onTransactionEnd);
      producerSendsChannel.start.unsubscribe(onSend);
      await source.close();
      await runtime.stop();
      await sink.close();
    }
    expect(producers.size).toBe(2);
    expect(overlapped).toBeGreaterThan(0);
    expect(sink.stats).toMatchObject({ aborted: 0, written: N });
    const out = await readTopic(broker.bootstrap, 'pipe-out', { expected: N, readCommitted: true, settleMs: 500 });
    // In the order read: one partition in, one out, and each transaction's records after the last one's.
    expect(out.map((r) => (JSON.parse(r.value) as Order).i)).toEqual(range(N));
    expect(await groupOffsets('pipe', 'pipe-in')).toBe(N);
  }, 90_000);

  /**
   * A member the group drops while it holds records in flight (an admin here; a session lapsed
   * under load in production): `a` handles 50 records of `<name>-in` and holds the next ones, so
   * its floors stay low; it hears of being dropped only at its next heartbeat, seconds later, and
   * commits only when told. Meanwhile `b` takes both partitions, reads to the end, commits and
   * leaves. `held` runs once `a` handled its 50, before the drop.
   */
  async function droppedMember(name: string, held: (a: KafkaSource<Order>) => void = () => undefined) {
    const N = 400;
    const topic = `${name}-in`;
    await createTopic(broker.bootstrap, topic, 2);
    await produce(
      broker.bootstrap,
      topic,
      range(N).map((i) => ({ key: `k${i}`, value: { i } })),
    );
    const connection = { brokers: [broker.bootstrap] };
    const a = kafkaSource<Order>({
      connection,
      groupId: name,
      topics: topic,
      heartbeatIntervalMs: 10_000,
      sessionTimeoutMs: 30_000,
      commitIntervalMs: 600_000,
      maxPendingPerPartition: 10,
    });
    const rtA = createRuntime();
    let handled = 0;
    let release: () => void = () => undefined;
    const stuck = new Promise<void>((r) => {
      release = r;
    });
    rtA.spawn(
      actor<Order, never>({
        name: `${name}-a`,
        subscribe: a.ref,
        handle: async () => {
          if (++handled > 50) await stuck;
        },
      }),
    );
    const b = kafkaSource<Order>({ connection, groupId: name, topics: topic });
    const rtB = createRuntime();
    rtB.spawn(actor<Order, never>({ name: `${name}-b`, subscribe: b.ref, handle: () => undefined }));
    const cleanup = async () => {
      release();
      await a.close(1_000);
      await b.close();
      await rtA.stop();
      await rtB.stop();
    };
    try {
      await a.start(rtA);
      const consumer = a.membership()?.consumer;
      const memberId = a.membership()?.memberId as string;
      await eventually(() => handled > 50, 20_000, 'a handled 50 records');
      held(a);
      await new Promise((resolve) => consumer?.once('consumer:heartbeat:end', resolve));
      const admin = new Admin({ clientId: 'test-admin', bootstrapBrokers: [broker.bootstrap] });
      try {
        await admin.removeMembersFromConsumerGroup({ groupId: name, members: [{ memberId }] });
      } finally {
        await admin.close();
      }
      await b.start(rtB);
      await eventually(() => b.stats.settled === N, 20_000, 'b at the end');
      await b.close();
      expect(await groupOffsets(name, topic)).toBe(N);
      return { N, a, memberId, cleanup };
    } catch (error) {
      await cleanup();
      throw error;
    }
  }

  test('commit by the source names the generation whose partitions it holds: a member dropped from the group does not commit its old floors with the new generation', async () => {
    const { N, a, memberId, cleanup } = await droppedMember('sc');
    try {
      // a has not heard yet: its commit names its old generation, which the broker refuses. The
      // client's own commit joined the group again and committed a's floors (about 50) with the
      // new generation, moving the group back over what b had done.
      expect(a.membership()?.memberId).toBe(memberId);
      await a.commit();
      expect(a.stats.commitsRefused).toBe(1);
      expect(a.stats.commits).toBe(0);
      expect(await groupOffsets('sc', 'sc-in')).toBe(N);
    } finally {
      await cleanup();
    }
  }, 60_000);

  test('an assignment whose start offsets cannot be read is taken again: the source goes on instead of stalling', async () => {
    await createTopic(broker.bootstrap, 'ra-in', 2);
    // The group's coordinator found (the offsets topic made, on a fresh broker) with kafkajs's patient retries.
    for (let attempt = 1; ; attempt++) {
      try {
        await groupOffsets('ra', 'ra-in');
        break;
      } catch (error) {
        if (attempt >= 20) throw error;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    // Short retries, so reading the start offsets from a frozen broker fails in seconds (and the
    // session outlasts it).
    const connection = { brokers: [broker.bootstrap], retries: 1, retryDelayMs: 100, requestTimeoutMs: 3_000 };
    const a = kafkaSource<Order>({ connection, groupId: 'ra', topics: 'ra-in', sessionTimeoutMs: 30_000 });
    const seen = new Set<number>();
    const rtA = createRuntime({ logger: quiet });
    rtA.spawn(actor<Order, never>({ name: 'ra-a', subscribe: a.ref, handle: (env) => void seen.add(env.data.i) }));
    await a.start(rtA);
    const consumer = a.membership()?.consumer;
    // b's JoinGroup waits for a to join again: longer than a's short requests.
    const b = kafkaSource<Order>({ connection: { brokers: [broker.bootstrap] }, groupId: 'ra', topics: 'ra-in' });
    const rtB = createRuntime({ logger: quiet });
    rtB.spawn(actor<Order, never>({ name: 'ra-b', subscribe: b.ref, handle: () => undefined }));
    let freeze: Freeze | undefined;
    try {
      await b.start(rtB);
      await eventually(() => a.assignments.length === 1, 20_000, 'a giving b a partition');
      // a's consumer asks where the partition it gets back starts (no offsets committed: the
      // earliest): the broker is frozen at that moment and thawed once the request failed.
      freeze = freezeAt(consumerOffsetsChannel, consumer, 'listOffsets');
      await b.close();
      await eventually(() => a.stats.assignmentRetries >= 1, 30_000, 'a failing to take both partitions');
      await eventually(() => a.assignments.length === 2, 30_000, 'a taking both partitions after all');
      expect(freeze.froze).toBe(true);
      await produce(
        broker.bootstrap,
        'ra-in',
        range(100).map((i) => ({ key: `k${i}`, value: { i } })),
      );
      await eventually(() => seen.size === 100, 30_000, 'a handling the records of both partitions');
    } finally {
      freeze?.stop();
      await a.close();
      await b.close();
      await rtA.stop();
      await rtB.stop();
    }
  }, 90_000);

  test("a committed offset below the log start (records deleted) is reset to the log start with start 'earliest', and the other partition on that broker is read meanwhile", async () => {
    await createTopic(broker.bootstrap, 'oor-in', 2);
    const onPartition = (partition: number, from: number, n: number) =>
      range(n).map((i) => ({ key: null, value: { i: from + i }, partition }));
    await produce(broker.bootstrap, 'oor-in', [...onPartition(0, 0, 10), ...onPartition(1, 100, 10)]);
    const first = reader('oor', 'oor-in', 'earliest');
    await first.source.start(first.host);
    await eventually(() => first.seen.length === 20, 20_000, 'the first reader at the end of both partitions');
    await first.close();
    expect(await groupOffsets('oor', 'oor-in')).toBe(20);
    // Partition 0 gets offsets 10 to 19 and loses those below 15: the group's offset, 10, is out of
    // range. The broker fails the partition in a fetch that also carries partition 1's new records.
    await produce(broker.bootstrap, 'oor-in', [...onPartition(0, 10, 10), ...onPartition(1, 110, 10)]);
    const admin = new Admin({ clientId: 'test-admin', bootstrapBrokers: [broker.bootstrap] });
    try {
      await admin.deleteRecords({ topics: [{ name: 'oor-in', partitions: [{ partition: 0, offset: 15n }] }] });
    } finally {
      await admin.close();
    }
    const second = reader('oor', 'oor-in', 'earliest');
    try {
      await second.source.start(second.host);
      await eventually(() => second.seen.length >= 15, 20_000, 'the second reader at the end of both partitions');
      expect(second.seen.sort((a, b) => a - b)).toEqual([15, 16, 17, 18, 19, ...range(10).map((i) => 110 + i)]);
      expect(second.source.stats.offsetResets).toBe(1);
      expect(second.warnings).toContainEqual(
        expect.stringMatching(/oor-in:0 offset 10 is out of range.*offsets 10 to 14 skipped, reading from 15/),
      );
    } finally {
      await second.close();
    }
    expect(await groupOffsets('oor', 'oor-in')).toBe(40);
  }, 60_000);

  test("a committed offset past the log end is reset to the end with start 'latest': only records written after are read", async () => {
    await createTopic(broker.bootstrap, 'oor2-in', 2);
    const onPartition = (partition: number, from: number, n: number) =>
      range(n).map((i) => ({ key: null, value: { i: from + i }, partition }));
    await produce(broker.bootstrap, 'oor2-in', [...onPartition(0, 0, 5), ...onPartition(1, 100, 5)]);
    // Offsets are not checked against the log when committed: 50 on a partition of 5 records is
    // what a log truncated under the group (or a topic made again) looks like.
    const admin = new Admin({ clientId: 'test-admin', bootstrapBrokers: [broker.bootstrap] });
    try {
      await admin.alterConsumerGroupOffsets({
        groupId: 'oor2',
        topics: [
          {
            name: 'oor2-in',
            partitionOffsets: [
              { partition: 0, offset: 50n },
              { partition: 1, offset: 2n },
            ],
          },
        ],
      });
    } finally {
      await admin.close();
    }
    const r = reader('oor2', 'oor2-in', 'latest');
    try {
      await r.source.start(r.host);
      await eventually(() => r.seen.length >= 3, 20_000, 'partition 1 read from its committed offset');
      await eventually(() => r.source.stats.offsetResets === 1, 20_000, 'partition 0 reset');
      await produce(broker.bootstrap, 'oor2-in', onPartition(0, 5, 2));
      await eventually(() => r.seen.length >= 5, 20_000, 'the records written after');
      expect(r.seen.sort((a, b) => a - b)).toEqual([5, 6, 102, 103, 104]);
      expect(r.warnings).toContainEqual(
        expect.stringMatching(
          /oor2-in:0 offset 50 is out of range.*reading from 5.*offsets 5 to 49 are read when written/,
        ),
      );
    } finally {
      await r.close();
    }
    expect(await groupOffsets('oor2', 'oor2-in')).toBe(7 + 5);
  }, 60_000);

  test('a source closed while start() joins the group leaves no commit timer running after it', async () => {
    await createTopic(broker.bootstrap, 'cs-in', 1);
    const COMMIT_MS = 4_321;
    const source = kafkaSource<Order>({
      connection: { brokers: [broker.bootstrap] },
      groupId: 'cs',
      topics: 'cs-in',
      commitIntervalMs: COMMIT_MS,
    });
    const runtime = createRuntime({ logger: quiet });
    runtime.spawn(actor<Order, never>({ name: 'cs', subscribe: source.ref, handle: () => undefined }));
    const setInterval = vi.spyOn(globalThis, 'setInterval');
    const clearInterval = vi.spyOn(globalThis, 'clearInterval');
    let closing: Promise<void> | undefined;
    // The join answered (the assignment taken), before start() goes on from it.
    const onJoined = (message: unknown) => {
      const m = message as { client?: { groupId?: unknown }; operation?: string };
      if (closing === undefined && m.operation === 'joinGroup' && m.client?.groupId === 'cs') closing = source.close();
    };
    consumerGroupChannel.asyncStart.subscribe(onJoined);
    try {
      await source.start(runtime);
      expect(closing).toBeDefined();
      await closing;
      const commitTimers = setInterval.mock.calls.flatMap((call, i) =>
        call[1] === COMMIT_MS ? [setInterval.mock.results[i]?.value] : [],
      );
      const cleared = new Set(clearInterval.mock.calls.map((call) => call[0]));
      expect(commitTimers.filter((t) => !cleared.has(t))).toEqual([]);
    } finally {
      consumerGroupChannel.asyncStart.unsubscribe(onJoined);
      setInterval.mockRestore();
      clearInterval.mockRestore();
      await source.close();
      await runtime.stop();
    }
  }, 60_000);

  test("a rejoin the client gives up on after a rebalance (the broker frozen at its JoinGroup) is made again by the source: it does not stay 'rebalancing' and takes its share", async () => {
    await createTopic(broker.bootstrap, 'rj2-in', 2);
    // The client's rejoin is one JoinGroup (a timeout is not retried), failing in 2 s here.
    const a = kafkaSource<Order>({
      connection: { brokers: [broker.bootstrap], retries: 1, retryDelayMs: 100, requestTimeoutMs: 2_000 },
      groupId: 'rj2',
      topics: 'rj2-in',
      sessionTimeoutMs: 10_000,
      heartbeatIntervalMs: 300,
    });
    const b = kafkaSource<Order>({ connection: { brokers: [broker.bootstrap] }, groupId: 'rj2', topics: 'rj2-in' });
    const seen = new Set<number>();
    const rtA = createRuntime({ logger: quiet });
    const rtB = createRuntime({ logger: quiet });
    rtA.spawn(actor<Order, never>({ name: 'rj2-a', subscribe: a.ref, handle: (env) => void seen.add(env.data.i) }));
    rtB.spawn(actor<Order, never>({ name: 'rj2-b', subscribe: b.ref, handle: (env) => void seen.add(env.data.i) }));
    await a.start({ bus: rtA.bus, logger: quiet });
    const consumer = a.membership()?.consumer;
    // b joining makes a's next heartbeat answer REBALANCE_IN_PROGRESS; the client's JoinGroup
    // after it meets a frozen broker, and the broker thaws once the client gave up.
    const freeze = freezeAt(consumerGroupChannel, consumer, 'joinGroup', (thaw) =>
      consumer?.once('consumer:rejoin', thaw),
    );
    try {
      await b.start({ bus: rtB.bus, logger: quiet });
      expect(freeze.froze).toBe(true);
      await eventually(
        () => a.membership() !== undefined && a.assignments.length === 1 && b.assignments.length === 1,
        30_000,
        'a back in the group with one of the two partitions',
      );
      expect([...a.assignments, ...b.assignments].sort()).toEqual(['rj2-in:0', 'rj2-in:1']);
      await produce(
        broker.bootstrap,
        'rj2-in',
        range(100).map((i) => ({ key: `k${i}`, value: { i } })),
      );
      await eventually(() => seen.size === 100, 20_000, 'both members handling their partition');
      expect(a.stats.settled).toBeGreaterThan(0);
    } finally {
      freeze.stop();
      await a.close();
      await b.close();
      await rtA.stop();
      await rtB.stop();
    }
  }, 90_000);

  test('read_committed: the source publishes no record of an aborted transaction, as kcat; read_uncommitted shows they are in the log', async () => {
    // The broker hands a read_committed fetch the aborted records with the list of aborted
    // transactions; the reader filters. Three cases the client's own filter let through:
    // p0, one producer aborting twice in one fetch; p1, an aborted transaction larger than one
    // fetch (its abort marker in a later response); p2, two producers' aborted transactions that
    // end in the other order than they began (the broker lists them by end).
    await createTopic(broker.bootstrap, 'ab-in', 3);
    const producer = (id: string) =>
      new Producer({
        clientId: id,
        bootstrapBrokers: [broker.bootstrap],
        serializers: stringSerializers,
        idempotent: true,
        transactionalId: id,
      });
    const x = producer('ab-x');
    const y = producer('ab-y');
    const begin = (p: typeof x) => p.beginTransaction({ producerId: -1n, producerEpoch: -1 });
    const send = async (t: Awaited<ReturnType<typeof begin>>, partition: number, values: readonly string[]) => {
      for (let i = 0; i < values.length; i += 40)
        await t.send({
          messages: values.slice(i, i + 40).map((v) => ({ topic: 'ab-in', partition, value: JSON.stringify(v) })),
        });
    };
    const once = async (p: typeof x, partition: number, values: readonly string[], commit: boolean) => {
      const t = await begin(p);
      await send(t, partition, values);
      await (commit ? t.commit() : t.abort());
    };
    try {
      await once(x, 0, ['p0-aborted-1'], false);
      await once(x, 0, ['p0-committed-1'], true);
      await once(x, 0, ['p0-aborted-2'], false);
      await once(x, 0, ['p0-committed-2'], true);
      const big = 'x'.repeat(10_000);
      await once(
        x,
        1,
        range(200).map((i) => `p1-aborted-${i}-${big}`),
        false,
      );
      await once(x, 1, ['p1-committed'], true);
      const tx = await begin(x);
      await send(tx, 2, ['p2-aborted-x']);
      const ty = await begin(y);
      await send(ty, 2, ['p2-aborted-y']);
      await ty.abort();
      await send(tx, 2, ['p2-aborted-x-2']);
      await tx.abort();
      await once(y, 2, ['p2-committed'], true);
    } finally {
      await x.close();
      await y.close();
    }
    const committed = ['p0-committed-1', 'p0-committed-2', 'p1-committed', 'p2-committed'];
    const all = (await readWithKcat(broker.bootstrap, 'ab-in', 'read_uncommitted')).map((r) => JSON.parse(r.value));
    expect(all).toHaveLength(committed.length + 205);
    const kcat = (await readWithKcat(broker.bootstrap, 'ab-in', 'read_committed')).map((r) => JSON.parse(r.value));
    expect(kcat.sort()).toEqual(committed);

    const source = kafkaSource<string>({ connection: { brokers: [broker.bootstrap] }, groupId: 'ab', topics: 'ab-in' });
    const seen: string[] = [];
    const runtime = createRuntime();
    runtime.spawn(
      actor<string, never>({
        name: 'ab',
        subscribe: source.ref,
        handle: (env) => void seen.push(env.data.slice(0, 20)),
      }),
    );
    await source.start(runtime);
    try {
      // Each partition's committed records come after its aborted ones: seen last.
      await eventually(
        () => committed.every((v) => seen.includes(v)) && source.lag().messages === 0,
        20_000,
        'the committed records of ab-in',
      );
    } finally {
      await source.close();
      await runtime.stop();
    }
    expect(seen.sort()).toEqual(committed);
  }, 60_000);

  test('a transaction that cannot be ended: the sink fails the write with a ConnectorError, replaces its producer and goes on; read_committed never sees the aborted records', async () => {
    await createTopic(broker.bootstrap, 'te-out', 1);
    // Few short retries: a request to the frozen broker fails in seconds.
    const connection = { brokers: [broker.bootstrap], retries: 1, retryDelayMs: 100, requestTimeoutMs: 2_000 };
    const sink = await kafkaSink<{ n: number; pad?: string }>({
      connection,
      // A record too large for the broker fails the write after the others of its request were written.
      topic: (r) => (r.value.pad === undefined ? 'te-out' : 'te-big'),
      mode: 'transactional',
      transactionalId: 'te',
      logger: quiet,
    });
    const record = (n: number, pad?: string) => ({
      key: `te/${n}`,
      value: pad === undefined ? { n } : { n, pad },
      revision: undefined,
      envelope: undefined,
    });
    // Frozen at the abort: the abort goes unanswered.
    const onAbort = (message: unknown) => {
      if ((message as { operation?: string }).operation === 'abort') broker.pause();
    };
    try {
      await sink.write([record(1)]);
      producerTransactionsChannel.start.subscribe(onAbort);
      let failed: unknown;
      await sink.write([record(2), record(99, 'x'.repeat(2 << 20))]).catch((e: unknown) => void (failed = e));
      producerTransactionsChannel.start.unsubscribe(onAbort);
      broker.resume();
      expect(failed).toBeInstanceOf(ConnectorError);
      expect((failed as ConnectorError).retryable).toBe(true);
      expect((failed as Error).message).toMatch(/could not be ended.*its abort failed/);
      expect(sink.stats.producersReplaced).toBe(1);
      // Without the replacement the client refused every later transaction ("There is already an
      // active transaction"). The new producer's registration aborts the one left open.
      await sink.write([record(3)]);
      // The sink's two producers take transactions in turn: this one makes the replacement.
      await sink.write([record(4)]);

      // Frozen before a transaction begins: the begin fails and leaves the client's transaction too.
      broker.pause();
      let unbegun: unknown;
      await sink.write([record(5)]).catch((e: unknown) => void (unbegun = e));
      broker.resume();
      expect(unbegun).toBeInstanceOf(ConnectorError);
      expect(sink.stats.producersReplaced).toBe(2);
      await sink.write([record(6)]);
    } finally {
      producerTransactionsChannel.start.unsubscribe(onAbort);
      broker.resume();
      await sink.close();
    }
    const committed = await readTopic(broker.bootstrap, 'te-out', { expected: 4, settleMs: 500 });
    expect(committed.map((r) => JSON.parse(r.value).n)).toEqual([1, 3, 4, 6]);
    // Record 2 was written in the transaction left open: in the log, aborted.
    const log = await readWithKcat(broker.bootstrap, 'te-out', 'read_uncommitted');
    expect(log.map((r) => JSON.parse(r.value).n)).toEqual([1, 2, 3, 4, 6]);
  }, 90_000);

  test('a broker restart mid-stream: the source and the sink go on, nothing is lost', async () => {
    const N = 2000;
    await createTopic(broker.bootstrap, 'rs-in', 2);
    await produce(
      broker.bootstrap,
      'rs-in',
      range(N / 2).map((i) => ({ key: `k${i}`, value: { i } })),
    );
    const connection = { brokers: [broker.bootstrap], retries: 20, retryDelayMs: 250 };
    const source = kafkaSource<Order>({ connection, groupId: 'rs', topics: 'rs-in', maxPendingPerPartition: 50 });
    const sink = await kafkaSink({ connection, topic: 'rs-out', logger: quiet });
    const seen = new Set<number>();
    const runtime = pipeline(source, sink, 'rs', seen);
    await source.start(runtime);
    await eventually(() => sink.stats.written >= 200, 20_000, 'some records written before the restart');
    // The source's connection state in the runtime's status, through the restart.
    const connection$ = () => runtime.status().sources.find((x) => x.name === source.name)?.connection;
    const states = [connection$()];
    const poll = setInterval(() => {
      const c = connection$();
      if (states.at(-1) !== c) states.push(c);
    }, 2);
    await broker.restart();
    await produce(
      broker.bootstrap,
      'rs-in',
      range(N / 2).map((i) => ({ key: `k${i}`, value: { i: i + N / 2 } })),
    );
    await eventually(
      () => seen.size === N && source.lag().messages === 0 && source.lag().ackPending === 0,
      45_000,
      'every record handled and settled after the restart',
    );
    await eventually(() => connection$() === 'connected', 20_000, 'connected again');
    clearInterval(poll);
    expect(states).toEqual(['connected', 'reconnecting', 'connected']);
    expect(runtime.status().sources[0]?.reconnects).toBe(1);
    // Still a member of the group (the client stops heartbeating after a failed heartbeat, and
    // the group drops it): the source's commits are taken.
    await source.commit();
    expect(await groupOffsets('rs', 'rs-in')).toBe(N);
    await source.close();
    await runtime.stop();
    await sink.close();
    const out = await readTopic(broker.bootstrap, 'rs-out', { expected: N });
    // At-least-once: records in flight at the restart may be written twice, none is missing.
    expect(new Set(values(out))).toEqual(new Set(range(N)));
  }, 90_000);

  /**
   * Produces `n` records into `job.input`, runs the crash job killed `killsWanted` times at a
   * random point of what is left (by committed records, not by time: a fast run finished before a
   * timed kill) and then to the end, and checks that read_committed sees each output once.
   */
  async function crashTest(job: CrashJob, n: number, killsWanted: number, key: (i: number) => string): Promise<void> {
    await createTopic(broker.bootstrap, job.input, 3);
    await produce(
      broker.bootstrap,
      job.input,
      range(n).map((i) => ({ key: key(i), value: { i } })),
    );
    let progress = 0;
    let kills = 0;
    for (let run = 0; ; run++) {
      const killAt =
        run < killsWanted
          ? progress + Math.max(1, Math.floor((n - progress) * (0.1 + Math.random() * 0.4)))
          : undefined;
      const ended = await runCrashJob(job, n, killAt, (p) => {
        progress = Math.max(progress, p);
      });
      if (ended === 'done') break;
      kills++;
      expect(run).toBeLessThan(killsWanted * 2);
    }
    expect(kills).toBe(killsWanted);
    expect(progress).toBe(n);
    const out = await readTopic(broker.bootstrap, job.output, { expected: n, readCommitted: true, settleMs: 500 });
    expect(values(out)).toEqual(range(n));
    expect(await groupOffsets(job.group, job.input)).toBe(n);
  }

  test('a job killed with SIGKILL again and again: read_committed sees every record once (Kafka as source and sink)', async () => {
    await crashTest(
      { input: 'cr-in', output: 'cr-out', group: 'crash', ordering: 'partition' },
      1500,
      4,
      (i) => `k${i}`,
    );
  }, 90_000);

  test("the same with ordering 'key' over 10 keys: each once, and no key ever ran two records at once or out of order", async () => {
    await crashTest(
      { input: 'ck-in', output: 'ck-out', group: 'crash-key', ordering: 'key' },
      400,
      2,
      (i) => `k${i % 10}`,
    );
  }, 90_000);

  test('lag: timeMs is the age of the oldest record not settled, by its timestamp, and 0 once all settled', async () => {
    await createTopic(broker.bootstrap, 'lt-in', 2);
    const minuteAgo = Date.now() - 60_000;
    await produce(
      broker.bootstrap,
      'lt-in',
      range(20).map((i) => ({ key: `k${i}`, value: { i }, timestamp: minuteAgo + i * 1_000 })),
    );
    const source = kafkaSource<Order>({ connection: { brokers: [broker.bootstrap] }, groupId: 'lt', topics: 'lt-in' });
    let open!: () => void;
    const gate = new Promise<void>((r) => {
      open = r;
    });
    const runtime = createRuntime();
    runtime.spawn(actor<Order, never>({ name: 'held', subscribe: source.ref, handle: () => gate }));
    await source.start(runtime);
    await eventually(() => source.lag().ackPending > 0, 20_000, 'a record in flight');
    const lag = source.lag();
    expect(lag.messages).toBe(20);
    // The oldest record not settled: the first of one of the two partitions, 59 or 60 s old.
    expect(lag.timeMs).toBeGreaterThanOrEqual(59_000);
    expect(lag.timeMs).toBeLessThanOrEqual(Date.now() - minuteAgo);
    open();
    await eventually(() => source.lag().messages === 0, 20_000, 'all settled');
    expect(source.lag()).toEqual({ messages: 0, timeMs: 0, ackPending: 0 });
    await source.close();
    await runtime.stop();
  }, 30_000);

  test('one record that never settles stops its partition once WINDOW_PER_PENDING × maxPendingPerPartition records were delivered from it on, the rest settled; it settling lets the partition go on', async () => {
    const N = 1_000;
    const MAX_PENDING = 10;
    const window = WINDOW_PER_PENDING * MAX_PENDING;
    await createTopic(broker.bootstrap, 'win-in', 1);
    await produce(
      broker.bootstrap,
      'win-in',
      range(N).map((i) => ({ key: `k${i}`, value: { i } })),
    );
    const source = kafkaSource<Order>({
      connection: { brokers: [broker.bootstrap] },
      groupId: 'win',
      topics: 'win-in',
      maxPendingPerPartition: MAX_PENDING,
    });
    let release: () => void = () => undefined;
    const stuck = new Promise<void>((r) => {
      release = r;
    });
    const handled = new Set<number>();
    const runtime = createRuntime();
    // Record 0 waits until released; the others settle at once, up to 16 at a time beside it.
    runtime.spawn(
      actor<Order, never>({
        name: 'win',
        subscribe: source.ref,
        concurrency: 16,
        handle: async (env) => {
          if (env.data.i === 0) await stuck;
          handled.add(env.data.i);
        },
      }),
    );
    try {
      await source.start(runtime);
      // Only the stuck record in flight, and all the others handed out settled: the partition
      // stopped (before, this held only at the end of the topic, every record published).
      await eventually(
        () => source.stats.settled >= window - 1 && source.lag().ackPending === 1,
        20_000,
        'only the stuck record unsettled',
      );
      expect(source.stats.published).toBe(window);
      expect(source.stats.settled).toBe(window - 1);
      expect([...handled].sort((a, b) => a - b)).toEqual(range(window).slice(1));
      // The committed offset stays below the stuck record.
      expect(source.lag().messages).toBe(N);
      release();
      await eventually(() => source.stats.settled === N, 20_000, 'every record settled');
      expect(handled.size).toBe(N);
      await source.commit();
      expect(await groupOffsets('win', 'win-in')).toBe(N);
    } finally {
      release();
      await source.close();
      await runtime.stop();
    }
  }, 60_000);

  test('a member dropped from the group takes its partitions again as new tenures from the group’s offsets: its old floors are not committed with its new member id', async () => {
    // a, told at its next commit, joins again with a new member id and no rebalance event, and
    // gets both partitions back.
    let before: Map<number, KafkaTenure> | undefined;
    const { N, a, memberId, cleanup } = await droppedMember('rj', (held) => {
      before = held.tenures().get('rj-in');
      expect(before?.size).toBe(2);
    });
    try {
      // Refused for the generation the group dropped: a joins again.
      await a.commit();
      expect(a.stats.commitsRefused).toBe(1);
      await eventually(
        () => {
          const m = a.membership();
          return m !== undefined && m.memberId !== memberId && a.assignments.length === 2;
        },
        30_000,
        'a back in the group with a new member id and both partitions',
      );
      expect(a.stats.rebalances).toBe(0);
      const after = a.tenures().get('rj-in');
      for (const p of [0, 1]) {
        // A new tenure: outputs of the records in flight since the old one are told apart.
        expect(after?.get(p)).toBeDefined();
        expect(after?.get(p)).not.toBe(before?.get(p));
      }
      // Taken from the group's offsets, which b moved to the end.
      expect([...a.committedOffsets().values()].reduce((x, y) => x + y, 0)).toBe(N);
      // Kept, the old floors (about 50 between them) were committed with the new member id here.
      await a.commit();
      expect(await groupOffsets('rj', 'rj-in')).toBe(N);
      expect(a.stats.released).toBeGreaterThan(0);
    } finally {
      await cleanup();
    }
  }, 90_000);

  test('dedupe mode keeps written keys in the store: a replay, also by a new sink on the same store, is not written again', async () => {
    const store = new MemoryStore();
    const connection = { brokers: [broker.bootstrap] };
    const records = (from: number, to: number, revision?: number) =>
      range(to - from).map((k) => ({ key: `dd/${from + k}`, value: { i: from + k }, revision, envelope: undefined }));
    const first = await kafkaSink({ connection, topic: 'dd-out', mode: 'dedupe', store, name: 'dd' });
    await first.write(records(0, 10));
    await first.write([...records(0, 10), ...records(10, 15)]);
    expect(first.stats).toMatchObject({ written: 15, skipped: 10 });
    await first.close();
    // A restarted process: a new sink on the same store.
    const second = await kafkaSink({ connection, topic: 'dd-out', mode: 'dedupe', store, name: 'dd' });
    await second.write(records(5, 15));
    await second.write(records(0, 2, 1)); // a newer revision is a new result
    expect(second.stats).toMatchObject({ written: 2, skipped: 10 });
    await second.close();
    const out = await readTopic(broker.bootstrap, 'dd-out', { expected: 17 });
    expect(out).toHaveLength(17);
  }, 30_000);

  test.skipIf(kcatMissing !== undefined)(
    'kcat produces records Sluice consumes, and reads what Sluice writes',
    async () => {
      const N = 100;
      const lines = range(N)
        .map((i) => `k${i}:${JSON.stringify({ i })}`)
        .join('\n');
      execFileSync('kcat', ['-b', broker.bootstrap, '-P', '-t', 'kc-in', '-K:'], {
        input: `${lines}\n`,
        timeout: 20_000,
      });
      const connection = { brokers: [broker.bootstrap] };
      const source = kafkaSource<Order>({ connection, groupId: 'kc', topics: 'kc-in' });
      const sink = await kafkaSink({ connection, topic: 'kc-out' });
      const runtime = pipeline(source, sink, 'kc');
      await source.start(runtime);
      await eventually(() => sink.stats.written === N && source.lag().ackPending === 0, 20_000, 'kcat records written');
      await source.close();
      await runtime.stop();
      await sink.close();
      const read = execFileSync(
        'kcat',
        [
          '-b',
          broker.bootstrap,
          '-G',
          'kcat-reader',
          '-X',
          'auto.offset.reset=earliest',
          '-e',
          '-q',
          '-f',
          '%k %s %h\n',
          'kc-out',
        ],
        { encoding: 'utf8', timeout: 30_000 },
      );
      const rows = read.trim().split('\n');
      expect(rows).toHaveLength(N);
      const got = rows.map((row) => {
        const [key, value, headers] = row.split(' ');
        const data = JSON.parse(value ?? '') as Order & { by: string };
        expect(key).toBe(`k${data.i}`);
        expect(data.by).toBe('kc');
        expect(headers).toMatch(/sluice-idempotency-key=kafka\/kc-in\/[0-2]\/\d+\/tag-kc\/0/);
        return data.i;
      });
      expect(got.sort((a, b) => a - b)).toEqual(range(N));
    },
    60_000,
  );
});

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/** A broker frozen at one request of one client (see {@link freezeAt}). */
interface Freeze {
  /** Whether the request came, and froze the broker. */
  readonly froze: boolean;
  /** Listens no more, and thaws the broker. */
  stop(): void;
}

/** The start, error and end channels of one of the client's tracing channels. */
interface RequestChannels {
  readonly start: Channel;
  readonly error: Channel;
  readonly asyncEnd: Channel;
}

/**
 * Freezes the broker the first time `client` starts `operation` (as `channels` trace it), and
 * thaws it when that client's request ends (failed or answered), or, given `thawWhen`, when it
 * calls back.
 */
function freezeAt(
  channels: RequestChannels,
  client: unknown,
  operation: string,
  thawWhen?: (thaw: () => void) => void,
): Freeze {
  let froze = false;
  const thaw = () => broker.resume();
  const onStart = (message: unknown) => {
    const m = message as { client?: unknown; operation?: string };
    if (froze || m.client !== client || m.operation !== operation) return;
    froze = true;
    broker.pause();
    thawWhen?.(thaw);
  };
  const onEnd = (message: unknown) => {
    if (thawWhen === undefined && froze && (message as { client?: unknown }).client === client) thaw();
  };
  channels.start.subscribe(onStart);
  channels.error.subscribe(onEnd);
  channels.asyncEnd.subscribe(onEnd);
  return {
    get froze() {
      return froze;
    },
    stop() {
      channels.start.unsubscribe(onStart);
      channels.error.unsubscribe(onEnd);
      channels.asyncEnd.unsubscribe(onEnd);
      thaw();
    },
  };
}

const root = fileURLToPath(new URL('../..', import.meta.url));
const crashJob = fileURLToPath(new URL('./fixtures/kafkaCrashJob.ts', import.meta.url));

interface CrashJob {
  readonly input: string;
  readonly output: string;
  readonly group: string;
  readonly ordering: 'partition' | 'key';
}

/**
 * Runs the crash job until it prints `done`, or kills it with SIGKILL once it reports `killAt`
 * records committed; rejects when it reports a broken key order.
 */

function runCrashJob(
  job: CrashJob,
  total: number,
  /** Killed with SIGKILL as soon as it reports this many records committed. */
  killAt: number | undefined,
  onProgress: (committed: number) => void,
): Promise<'done' | 'killed'> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        '--conditions=sluice-source',
        '--import',
        'tsx',
        crashJob,
        broker.bootstrap,
        job.input,
        job.output,
        String(total),
        job.ordering,
        job.group,
      ],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    let done = false;
    let killed = false;
    const violations: string[] = [];
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString();
    });
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      for (let nl = out.indexOf('\n'); nl !== -1; nl = out.indexOf('\n')) {
        const line = out.slice(0, nl);
        const [what, n] = line.split(' ');
        out = out.slice(nl + 1);
        if (what === 'done') done = true;
        if (what === 'violation') violations.push(line);
        if (what === 'progress') {
          onProgress(Number(n));
          if (killAt !== undefined && !killed && Number(n) >= killAt) {
            killed = true;
            child.kill('SIGKILL');
          }
        }
      }
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(guard);
      if (violations.length > 0) reject(new Error(`the job broke key order:\n${violations.join('\n')}`));
      else if (done && code === 0) resolve('done');
      else if (signal === 'SIGKILL' && killed) resolve('killed');
      else reject(new Error(`crash job exited (${code ?? signal}) unexpectedly:\n${err}`));
    });
  });
}

/**
 * Runs 300 records through a transactional sink whose first EndTxn commit is made by the broker
 * but answered, to the client, by a timeout; with `untilReplaced`, every EndTxn answer is lost
 * until the sink gives up on the transaction and replaces its producer.
 */
async function lostCommitAnswer(name: string, untilReplaced: boolean): Promise<KafkaSink> {
  const N = 300;
  await createTopic(broker.bootstrap, `${name}-in`, 1);
  await produce(
    broker.bootstrap,
    `${name}-in`,
    range(N).map((i) => ({ key: `k${i}`, value: { i } })),
  );
  const connection = { brokers: [broker.bootstrap] };
  const source = kafkaSource<Order>({ connection, groupId: name, topics: `${name}-in`, commit: 'sink' });
  const sink = await kafkaSink({
    // A short request timeout: the sink stops sending the commit again after two of them.
    connection: { ...connection, requestTimeoutMs: 1_500 },
    topic: `${name}-out`,
    mode: 'transactional',
    transactionalId: name,
    source,
    logger: quiet,
  });
  const send = Connection.prototype.send;
  let lost = 0;
  Connection.prototype.send = function (this: Connection, ...args: Parameters<Connection['send']>) {
    if (args[0] === 26 && (lost === 0 || (untilReplaced && sink.stats.producersReplaced === 0))) {
      const callback = args[args.length - 1] as (error: unknown, result?: unknown) => void;
      args[args.length - 1] = ((error: unknown, result: unknown) => {
        if (error === null || error === undefined) {
          lost++;
          callback(new TimeoutError('Request timed out (the test lost the answer).'));
        } else callback(error, result);
      }) as never;
    }
    return send.apply(this, args);
  } as Connection['send'];
  const runtime = pipeline(source, sink, name);
  try {
    await source.start(runtime);
    await eventually(() => source.committedOffsets().get(`${name}-in:0`) === N, 40_000, 'all committed');
    expect(lost).toBeGreaterThanOrEqual(1);
    const out = await readTopic(broker.bootstrap, `${name}-out`, { expected: N, readCommitted: true, settleMs: 500 });
    expect(values(out)).toEqual(range(N));
    expect(await groupOffsets(name, `${name}-in`)).toBe(N);
  } finally {
    Connection.prototype.send = send;
    await source.close();
    await runtime.stop();
    await sink.close();
  }
  return sink;
}

async function groupOffsets(groupId: string, topic: string): Promise<number> {
  const { Kafka, logLevel } = await import('kafkajs');
  const admin = new Kafka({ brokers: [broker.bootstrap], logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    const [t] = await admin.fetchOffsets({ groupId, topics: [topic] });
    return (t?.partitions ?? []).reduce((sum, p) => sum + Number(p.offset), 0);
  } finally {
    await admin.disconnect();
  }
}

/** A source of `groupId` on `topic` whose actor collects each record's `i`, with the warnings it logs. */
function reader(groupId: string, topic: string, start: 'earliest' | 'latest') {
  const source = kafkaSource<Order>({ connection: { brokers: [broker.bootstrap] }, groupId, topics: topic, start });
  const seen: number[] = [];
  const warnings: string[] = [];
  const runtime = createRuntime({ logger: quiet });
  runtime.spawn(
    actor<Order, never>({
      name: `read-${groupId}`,
      subscribe: source.ref,
      handle: (env) => void seen.push(env.data.i),
    }),
  );
  const host = {
    bus: runtime.bus,
    telemetry: runtime.telemetry,
    logger: { ...quiet, warn: (m: string) => warnings.push(m) },
  };
  const close = async () => {
    await source.close();
    await runtime.stop();
  };
  return { source, seen, warnings, host, close };
}
