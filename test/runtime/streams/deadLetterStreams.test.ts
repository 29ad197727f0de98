import { actor, durable, type Envelope, MemoryStore } from 'sluice';
import { describe, expect, test } from 'vitest';
import { flush, testRuntime } from '../helpers.ts';
import { eventually } from './wait.ts';

// Dead letters are replayable only if kept: a stream on `$DLQ.>` (and one on `$DEAD.>`) keeps them
// in the store, where the replay command (scripts/replay.ts) reads them back.
describe('streams that keep dead letters', () => {
  test('dead letters - a stream on $DLQ.> stores what actors and consumers dead-letter, one on $DEAD.> the dead letters of dead letters', async () => {
    const { rt, clock } = testRuntime({ store: new MemoryStore() });
    const dlq = rt.stream({ name: 'DLQ', subjects: ['$DLQ.>'] });
    const dead = rt.stream({ name: 'DEAD', subjects: ['$DEAD.>'] });
    const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    rt.spawn(
      actor<{ id: number }, never>({
        name: 'billing',
        subscribe: 'invoices.>',
        retry: { maxAttempts: 1 },
        handle: () => {
          throw new Error('payment service down');
        },
      }),
    );
    // Reads dead letters and fails on them too: its dead letters go to $DEAD.audit.
    rt.spawn(
      actor<unknown, never>({
        name: 'audit',
        subscribe: '$DLQ.billing',
        retry: { maxAttempts: 1 },
        handle: () => {
          throw new Error('audit down');
        },
      }),
    );
    // A consumer that gives up on a message after one delivery dead-letters it to $DLQ.ORDERS.slow.
    const slow = orders.consumer('slow', { maxDeliver: 1, ackWaitMs: 10 });
    await rt.bus.publish('invoices.eu', { id: 1 });
    await rt.bus.publish('orders.eu', { id: 2 });
    expect(slow.fetch(1)).toHaveLength(1); // never acknowledged
    await clock.advance(20);
    await flush(5);
    await eventually(() => expect(dlq.info().messages).toBe(2));
    await eventually(() => expect(dead.info().messages).toBe(1));
    const letters = [dlq.get(1), dlq.get(2)] as Envelope[];
    expect(letters.map((l) => [l.subject, l.headers['sluice-original-subject']]).sort()).toEqual([
      ['$DLQ.ORDERS.slow', 'orders.eu'],
      ['$DLQ.billing', 'invoices.eu'],
    ]);
    expect(dead.get(1)).toMatchObject({ subject: '$DEAD.audit', data: { id: 1 } });
    expect(dead.get(1)?.headers['sluice-original-subject']).toBe('$DLQ.billing');
  });

  test('dead letters - an actor reading durably from ORDERS dead-letters into a DLQ stream, and its input is acknowledged', async () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    const dlq = rt.stream({ name: 'DLQ', subjects: ['$DLQ.>'] });
    const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    rt.spawn(
      actor<{ id: number }, never>({
        name: 'billing',
        subscribe: durable('ORDERS', { consumer: 'billing' }),
        retry: { maxAttempts: 1 },
        handle: () => {
          throw new Error('payment service down');
        },
      }),
    );
    for (let id = 1; id <= 3; id++) await rt.bus.publish('orders.eu', { id });
    await eventually(() => expect(dlq.info().messages).toBe(3));
    await eventually(() => expect(orders.consumer('billing').info()).toMatchObject({ acked: 3, position: 4 }));
    expect(dlq.get(3)?.headers).toMatchObject({
      'sluice-original-subject': 'orders.eu',
      'sluice-stream': 'DLQ',
      'sluice-actor': 'billing',
    });
  });

  test('dead letters - a consumer of the DLQ stream that gives up on a letter sends it to $DEAD.<stream>.<consumer>, not back into DLQ', async () => {
    const { rt, clock, log } = testRuntime({ store: new MemoryStore() });
    const dlq = rt.stream({ name: 'DLQ', subjects: ['$DLQ.>'] });
    const dead = rt.stream({ name: 'DEAD', subjects: ['$DEAD.>'] });
    const letters = dlq.consumer('ops', { maxDeliver: 1, ackWaitMs: 10 });
    const deadReader = dead.consumer('ops', { maxDeliver: 1, ackWaitMs: 10 });
    await rt.bus.publish('$DLQ.billing', { id: 1 }, { headers: { 'sluice-error': 'payment service down' } });
    for (let round = 0; round < 4; round++) {
      letters.fetch(10); // never acknowledged
      deadReader.fetch(10);
      await clock.advance(20);
      await flush(5);
    }
    // Its default dead-letter subject, $DLQ.DLQ.ops, is one DLQ captures: the letter would come back forever.
    expect(dlq.info().last).toBe(1);
    expect(dead.info().last).toBe(1);
    expect(dead.get(1)).toMatchObject({ subject: '$DEAD.DLQ.ops', data: { id: 1 } });
    // Given up on in $DEAD.> too: it stays there, logged, and is sent nowhere.
    expect(deadReader.info()).toMatchObject({ terminated: 1, position: 2 });
    expect(log.lines.join('\n')).toContain("sequence 1 from '$DEAD.DLQ.ops'");
  });
});
