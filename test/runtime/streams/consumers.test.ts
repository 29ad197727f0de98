import { DEAD_LETTER_HEADERS, type Envelope, type Runtime, type Store, StreamError, type StreamMessage } from 'sluice';
import { describe, expect, test } from 'vitest';
import { POSITIONS_NAMESPACE } from '../../../runtime/streams/index.ts';
import { collect, flush, testRuntime, thrown } from '../helpers.ts';
import { lmdbHarness, memoryHarness } from '../store/harness.ts';
import { eventually } from './wait.ts';

async function publishAll(rt: Runtime, subject: string, values: readonly unknown[]): Promise<void> {
  for (const v of values) await rt.bus.publish(subject, v);
}

const seqs = (messages: readonly StreamMessage[]) => messages.map((m) => m.seq);

describe.each([memoryHarness, lmdbHarness])('durable consumers ($name store)', (harness) => {
  test('consumers - an unacked message is delivered again once its ack wait expires, its attempt counting up', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c', { ackWaitMs: 1000 });
    await publishAll(rt, 's', ['a']);
    const [first] = c.fetch();
    expect(first).toMatchObject({ seq: 1, attempt: 1 });
    expect(first?.envelope).toMatchObject({ data: 'a', attempt: 1 });
    await clock.advance(999);
    expect(c.fetch()).toEqual([]);
    await clock.advance(1);
    const [again] = c.fetch();
    expect(again).toMatchObject({ seq: 1, attempt: 2 });
    expect(again?.envelope.attempt).toBe(2);
    expect(c.info().redelivered).toBe(1);
  });

  test('consumers - nack with a delay delivers again after the delay, not before', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c', { ackWaitMs: 60_000 });
    await publishAll(rt, 's', ['a']);
    c.fetch()[0]?.nack(500);
    await clock.advance(499);
    expect(c.fetch()).toEqual([]);
    await clock.advance(1);
    expect(c.fetch()[0]).toMatchObject({ seq: 1, attempt: 2 });
  });

  test('consumers - term settles a message for good: never delivered again, position moves on', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c', { ackWaitMs: 100 });
    await publishAll(rt, 's', ['a', 'b']);
    c.fetch()[0]?.term('bad order');
    await clock.advance(10_000);
    expect(seqs(c.fetch(10))).toEqual([2]);
    expect(c.info()).toMatchObject({ terminated: 1, position: 2 });
  });

  test('consumers - inProgress restarts the ack wait for long work', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c', { ackWaitMs: 1000 });
    await publishAll(rt, 's', ['a']);
    const [m] = c.fetch();
    await clock.advance(800);
    m?.inProgress();
    await clock.advance(800);
    expect(c.fetch()).toEqual([]);
    m?.inProgress();
    await clock.advance(999);
    expect(c.fetch()).toEqual([]);
    await clock.advance(1);
    expect(c.fetch()[0]).toMatchObject({ seq: 1, attempt: 2 });
  });

  test('consumers - after maxDeliver deliveries a message goes to the dead-letter subject with the reason in headers', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s.>'] }).consumer('c', { ackWaitMs: 100, maxDeliver: 2 });
    const dead = collect(rt.bus, '$DLQ.S.c');
    await rt.bus.publish('s.x', { id: 7 }, { id: 'm-7' });
    expect(c.fetch()[0]?.attempt).toBe(1);
    await clock.advance(100);
    expect(c.fetch()[0]?.attempt).toBe(2);
    await clock.advance(100);
    await flush();
    expect(c.fetch()).toEqual([]);
    expect(dead).toHaveLength(1);
    const letter = dead[0] as Envelope;
    expect(letter.data).toEqual({ id: 7 });
    expect(letter.headers).toMatchObject({
      [DEAD_LETTER_HEADERS.attempts]: '2',
      [DEAD_LETTER_HEADERS.subject]: 's.x',
      [DEAD_LETTER_HEADERS.messageId]: 'm-7',
      [DEAD_LETTER_HEADERS.actor]: 'S/c',
      [DEAD_LETTER_HEADERS.code]: 'SLUICE_ERR_STREAM',
      'sluice-stream-sequence': '1',
    });
    expect(letter.headers[DEAD_LETTER_HEADERS.error]).toMatch(/ack wait/);
    expect(c.info()).toMatchObject({ deadLettered: 1, position: 2 });
  });

  test('consumers - out-of-order acks commit only up to the lowest unsettled sequence, stored compactly', async () => {
    const store = harness.fresh();
    const { rt } = testRuntime({ store });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c');
    await publishAll(rt, 's', [1, 2, 3, 4, 5]);
    const m = c.fetch(5);
    for (const i of [1, 3, 4]) m[i]?.ack();
    expect(c.position).toBe(1);
    await eventually(() =>
      expect(store.getKey(POSITIONS_NAMESPACE, 'S/c')).toEqual({
        floor: 1,
        acked: [
          [2, 2],
          [4, 5],
        ],
      }),
    );
    m[0]?.ack();
    expect(c.position).toBe(3);
    m[2]?.ack();
    expect(c.position).toBe(6);
    await eventually(() => expect(store.getKey(POSITIONS_NAMESPACE, 'S/c')).toEqual({ floor: 6 }));
  });

  test('consumers - maxAckPending bounds what is delivered and not settled', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c', { maxAckPending: 2 });
    await publishAll(rt, 's', [1, 2, 3, 4]);
    const m = c.fetch(10);
    expect(seqs(m)).toEqual([1, 2]);
    m[1]?.ack();
    expect(seqs(c.fetch(10))).toEqual([3]);
    expect(c.lag()).toMatchObject({ messages: 3, ackPending: 2 });
  });

  test('consumers - readers of one consumer share it: each message to one of them', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'S', subjects: ['s'] });
    await publishAll(rt, 's', [1, 2, 3, 4, 5, 6]);
    const a = s.consumer('shared');
    const b = s.consumer('shared');
    const got = [...a.fetch(2), ...b.fetch(2), ...a.fetch(10)];
    expect(seqs(got)).toEqual([1, 2, 3, 4, 5, 6]);
    for (const m of got) m.ack();
    expect(b.fetch(10)).toEqual([]);
  });

  test('consumers - replay from a sequence, from a time, or only new messages; a filter subject', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'S', subjects: ['s.*'] });
    for (let i = 1; i <= 5; i++) {
      await rt.bus.publish(i % 2 === 0 ? 's.even' : 's.odd', i);
      await clock.advance(1000);
    }
    expect(seqs(s.consumer('from-3', { deliver: { fromSeq: 3 } }).fetch(10))).toEqual([3, 4, 5]);
    expect(seqs(s.consumer('from-t', { deliver: { fromTime: 1_003_000 } }).fetch(10))).toEqual([4, 5]);
    const fresh = s.consumer('new', { deliver: 'new' });
    expect(fresh.fetch(10)).toEqual([]);
    await rt.bus.publish('s.odd', 6);
    expect(seqs(fresh.fetch(10))).toEqual([6]);
    const even = s.consumer('even', { filter: 's.even' });
    const got = even.fetch(10);
    expect(got.map((m) => m.envelope.data)).toEqual([2, 4]);
    for (const m of got) m.ack();
    expect(even.position).toBe(7);
  });

  test('consumers - next() resolves when a message is published; lag tells messages and time behind', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c');
    const waiting = c.next();
    await publishAll(rt, 's', ['a', 'b']);
    const m = await waiting;
    expect(m.envelope.data).toBe('a');
    await clock.advance(250);
    expect(c.lag()).toEqual({ messages: 2, timeMs: 250, ackPending: 1 });
    m.ack();
    expect(c.lag().messages).toBe(1);
  });

  test('consumers - lag time is the age of the oldest unsettled message, also when newer ones settled first', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c');
    await publishAll(rt, 's', ['a']);
    await clock.advance(100);
    await publishAll(rt, 's', ['b']);
    await clock.advance(100);
    const [a, b] = c.fetch(2);
    expect(c.lag()).toMatchObject({ messages: 2, timeMs: 200 });
    // 'b' settles first: 'a' is still the oldest unsettled.
    b?.ack();
    expect(c.lag()).toMatchObject({ messages: 1, timeMs: 200 });
    a?.ack();
    expect(c.lag()).toEqual({ messages: 0, timeMs: 0, ackPending: 0 });
  });

  test('consumers - a corrupt record is dead-lettered with a CorruptRecordError naming stream and sequence; the rest is delivered', async () => {
    let store = harness.fresh();
    {
      const { rt } = testRuntime({ store });
      rt.stream({ name: 'S', subjects: ['s'] });
      await publishAll(rt, 's', ['a', 'b', 'c']);
      await rt.stop();
    }
    store = await harness.tamperRecord(store, 'S', 2, (bytes) => {
      bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0xff;
      return bytes;
    });
    const { rt, log } = testRuntime({ store });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c');
    const dead = collect(rt.bus, '$DLQ.S.c');
    const got = c.fetch(10);
    expect(got.map((m) => m.envelope.data)).toEqual(['a', 'c']);
    await flush();
    expect(dead).toHaveLength(1);
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_CORRUPT_RECORD');
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.error]).toMatch(/sequence 2 of stream 'S'/);
    expect(log.lines.some((l) => /corrupt record at sequence 2 of stream 'S'/.test(l))).toBe(true);
    for (const m of got) m.ack();
    expect(c.position).toBe(4);
  });

  test('consumers - backoff sets the ack wait of each delivery, the last one repeating', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c', { backoff: [100, 300], maxDeliver: 10 });
    await publishAll(rt, 's', ['a']);
    expect(c.fetch()[0]?.attempt).toBe(1);
    await clock.advance(100);
    expect(c.fetch()[0]?.attempt).toBe(2);
    await clock.advance(299);
    expect(c.fetch()).toEqual([]);
    await clock.advance(1);
    expect(c.fetch()[0]?.attempt).toBe(3);
    await clock.advance(300);
    expect(c.fetch()[0]?.attempt).toBe(4);
  });

  test('consumers - a settlement through the handle of an earlier delivery: ack counts, nack and inProgress do not', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c', { ackWaitMs: 100 });
    await publishAll(rt, 's', ['a']);
    const [old] = c.fetch();
    await clock.advance(100);
    const [current] = c.fetch();
    old?.nack();
    old?.inProgress();
    expect(c.fetch()).toEqual([]);
    expect(c.lag().ackPending).toBe(1);
    old?.ack();
    expect(c.position).toBe(2);
    current?.nack();
    expect(c.fetch()).toEqual([]);
  });

  test('consumers - bad options are an OptionsError naming the option', () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'S', subjects: ['s'] });
    expect((thrown(() => s.consumer('a', { ackWaitMs: 0 })) as Error).message).toMatch(/consumer 'a'.ackWaitMs/);
    expect((thrown(() => s.consumer('b', { deliver: 'latest' as 'new' })) as Error).message).toMatch(/deliver/);
    expect((thrown(() => s.consumer('c', { backoff: [] })) as Error).message).toMatch(/backoff/);
    expect((thrown(() => s.consumer('d.e')) as Error).message).toMatch(/consumer name/);
    expect(
      (thrown(() => rt.stream({ name: 'T', subjects: ['t'], retention: { maxAgeMs: -1 } })) as Error).message,
    ).toMatch(/retention.maxAgeMs/);
  });

  test('consumers - a consumer of a stopped runtime refuses with a StreamError', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c');
    await rt.stop();
    expect(thrown(() => c.fetch())).toBeInstanceOf(StreamError);
  });

  /** A stream S with messages 'a'..'c' whose consumer c acked 'a', then `change` applied to its stored position. */
  async function withStoredPosition(change: (store: Store) => Promise<Store>): Promise<Store> {
    const store = harness.fresh();
    {
      const { rt } = testRuntime({ store });
      const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c');
      await publishAll(rt, 's', ['a', 'b', 'c']);
      c.fetch()[0]?.ack();
      await rt.stop();
    }
    return change(store);
  }

  test('consumers - a damaged stored position refuses to open the consumer, naming the record and the way out', async () => {
    const store = await withStoredPosition((s) =>
      harness.tamperValue(s, POSITIONS_NAMESPACE, 'S/c', (bytes) => {
        bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0xff;
        return bytes;
      }),
    );
    const { rt } = testRuntime({ store });
    const stream = rt.stream({ name: 'S', subjects: ['s'] });
    const error = thrown(() => stream.consumer('c'));
    expect(error).toBeInstanceOf(StreamError);
    expect((error as Error).message).toMatch(
      /stored position of consumer 'c' \(key 'S\/c' of 'sluice.consumers'\) cannot be read: corrupt record/,
    );
    expect((error as Error).message).toMatch(/onUnreadablePosition: 'deliver'/);
  });

  test("consumers - with onUnreadablePosition: 'deliver', an unreadable position is logged and the consumer starts from its deliver policy, storing a new one", async () => {
    const store = await withStoredPosition(async (s) => {
      await s.putKey(POSITIONS_NAMESPACE, 'S/c', { position: 2 });
      return s;
    });
    {
      const { rt, log } = testRuntime({ store });
      const stream = rt.stream({ name: 'S', subjects: ['s'] });
      expect(() => stream.consumer('c')).toThrow(
        /its floor is not a positive integer \(the record is \{"position":2\}\)/,
      );
      const c = stream.consumer('c', { onUnreadablePosition: 'deliver', deliver: 'new' });
      expect(
        log.lines.some((l) =>
          /stored position of consumer 'c'.*cannot be read.*starts from its deliver policy/.test(l),
        ),
      ).toBe(true);
      expect(c.position).toBe(4);
      await publishAll(rt, 's', ['d']);
      const [d] = c.fetch();
      expect(d?.envelope.data).toBe('d');
      d?.ack();
      await rt.stop();
    }
    // The new position was stored: the next start reads it, with the default policy.
    const { rt } = testRuntime({ store });
    expect(rt.stream({ name: 'S', subjects: ['s'] }).consumer('c').position).toBe(5);
  });

  test('consumers - stored runs that are not sorted runs of positive integers are an unreadable position', async () => {
    const store = await withStoredPosition(async (s) => {
      await s.putKey(POSITIONS_NAMESPACE, 'S/c', {
        floor: 2,
        acked: [
          [5, 6],
          [4, 4],
        ],
      });
      return s;
    });
    const { rt } = testRuntime({ store });
    expect(() => rt.stream({ name: 'S', subjects: ['s'] }).consumer('c')).toThrow(
      /cannot be read: run 1 \[4, 4\] does not start above the run before it, which ends at 6/,
    );
  });

  test('consumers - a stored run spanning a billion sequences: what is below it is delivered, and acking it moves the position past the run', async () => {
    // A filter that skips most of a stream settles such runs above a message still out; the
    // restart takes the run whole (added a sequence at a time, this one took 7.6 s).
    const store = await withStoredPosition(async (s) => {
      await s.putKey(POSITIONS_NAMESPACE, 'S/c', { floor: 2, acked: [[4, 1_000_000_000]] });
      return s;
    });
    const { rt } = testRuntime({ store });
    const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c');
    expect(c.position).toBe(2);
    const got = c.fetch(10);
    expect(got.map((m) => m.envelope.data)).toEqual(['b', 'c']);
    for (const m of got) m.ack();
    expect(c.position).toBe(1_000_000_001);
  });
});
