import { from } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { createEnvelope, type Envelope, OptionsError } from 'sluice';
import { eventTime, keyBy } from 'sluice/operators';
import { describe, expect, expectTypeOf, test } from 'vitest';
import { CountingLineage } from './helpers.ts';

const scheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));

describe('keyBy', () => {
  test('sets the key and keeps id, headers, event time and lineage; copies, never mutates', () => {
    scheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      const lineage = new CountingLineage('x');
      const a = createEnvelope('clicks', { user: 1 }, { headers: { trace: 't' }, eventTime: 5, lineage });
      const b = createEnvelope('clicks', { user: 2 });
      const src = cold('  -a-b-|', { a, b });
      expectObservable(src.pipe(keyBy((d) => `u${d.user}`))).toBe('-x-y-|', {
        x: { ...a, key: 'u1' },
        y: { ...b, key: 'u2' },
      });
      expectSubscriptions(src.subscriptions).toBe('^----!');
      expect(a.key).toBeUndefined();
    });
  });

  test('a selector that gives no string (a missing field, a number) fails the input with an error naming it, not a shared key', () => {
    for (const data of [{}, { page: 7 }, { page: null }]) {
      const errors: unknown[] = [];
      const env = createEnvelope('clicks', data as unknown as { page: string });
      from([env])
        .pipe(keyBy((d: { page: string }) => d.page))
        .subscribe({ error: (e: unknown) => errors.push(e) });
      expect(errors[0]).toBeInstanceOf(OptionsError);
      expect(String(errors[0])).toContain(`'keyBy'`);
      expect(String(errors[0])).toContain(env.id);
    }
  });

  test('types follow the data', () => {
    const op = keyBy((d: { page: string }) => d.page);
    expectTypeOf(op).parameter(0).toEqualTypeOf<import('rxjs').Observable<Envelope<{ page: string }>>>();
  });
});

describe('eventTime', () => {
  test('takes the event time from the data (a number or a Date), copying the envelope', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const a = createEnvelope('in', { ts: 90 }, { eventTime: 1_000 });
      const b = createEnvelope('in', { ts: new Date(75) }, { key: 'k' });
      const src = cold('-a-b-|', { a, b });
      expectObservable(src.pipe(eventTime((d: { ts: number | Date }) => d.ts))).toBe('-x-y-|', {
        x: { ...a, eventTime: 90 },
        y: { ...b, eventTime: 75 },
      });
      expect(a.eventTime).toBe(1_000);
    });
  });
});
