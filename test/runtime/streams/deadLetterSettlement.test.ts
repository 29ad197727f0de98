import { MemoryStore } from 'sluice';
import { describe, expect, test } from 'vitest';
import type { ConsumerImpl } from '../../../runtime/streams/consumer.ts';
import { flush, gate, testRuntime } from '../helpers.ts';

describe('a consumer’s dead letters and its lifecycle', () => {
  test('consumers - a dead letter refused after the consumer closed sets no redelivery timer that could keep the process alive', async () => {
    const { rt, clock } = testRuntime({ store: new MemoryStore() });
    const s = rt.stream({ name: 'S', subjects: ['s'] });
    // The dead-letter subject refuses: a `fail` mailbox, full, that nobody drains.
    rt.bus.subscribe('$DLQ.S.c', { mailbox: { capacity: 1, overflow: 'fail' } });
    await rt.bus.publish('$DLQ.S.c', 'filler');
    const c = s.consumer('c', { maxDeliver: 1, ackWaitMs: 1000 }) as ConsumerImpl;
    await rt.bus.publish('s', 'a');
    await flush();
    const timers = clock.pending;
    const [m] = c.fetch();
    // The only delivery fails: dead-lettered, and the refusal comes back once the consumer closed.
    m?.nack();
    await c.close();
    await flush();
    expect(clock.pending).toBe(timers);
  });

  test('consumers - a dead letter accepted after a forced reset does not settle the newer delivery of its sequence', async () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    const s = rt.stream({ name: 'S', subjects: ['s'] });
    // A slow dead-letter reader: one letter in its callback, one in its mailbox, the next waits for room.
    const slow = gate();
    rt.bus.subscribe('$DLQ.S.c', {
      mailbox: { capacity: 1, overflow: 'block' },
      callback: async () => {
        await slow.promise;
      },
    });
    await rt.bus.publish('$DLQ.S.c', 'first');
    await flush();
    await rt.bus.publish('$DLQ.S.c', 'second');
    const c = s.consumer('c', { maxDeliver: 1, ackWaitMs: 60_000 }) as ConsumerImpl;
    await rt.bus.publish('s', 'a');
    await flush();
    c.fetch()[0]?.nack();
    await flush();
    expect(c.info()).toMatchObject({ position: 1, deadLettered: 0 });
    c.reset({ fromSeq: 1 }, true);
    const [again] = c.fetch();
    expect(again).toMatchObject({ seq: 1, attempt: 1 });
    slow.open();
    await flush();
    // The letter of the dropped delivery went out; the delivery out now is still unsettled.
    expect(c.info()).toMatchObject({ position: 1, ackPending: 1 });
    again?.ack();
    expect(c.info()).toMatchObject({ position: 2, ackPending: 0 });
  });
});
