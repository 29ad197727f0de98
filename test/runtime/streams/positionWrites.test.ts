import { map } from 'rxjs';
import { actor, durable, MemoryStore } from 'sluice';
import { agg, eventTime, keyBy, tumbling, watermarks } from 'sluice/operators';
import { expect, test } from 'vitest';
import { POSITIONS_NAMESPACE, type StoredPosition } from '../../../runtime/streams/index.ts';
import { flush, testRuntime } from '../helpers.ts';
import { eventually } from './wait.ts';

/** Every position record the consumers of `store` write, in order. */
function positionWrites(store: MemoryStore): StoredPosition[] {
  const written: StoredPosition[] = [];
  const putKey = store.putKey.bind(store);
  store.putKey = (namespace, key, value) => {
    if (namespace === POSITIONS_NAMESPACE) written.push(structuredClone(value) as StoredPosition);
    return putKey(namespace, key, value);
  };
  return written;
}

test('position writes - acks given in one synchronous run are stored together, never a part of them', async () => {
  const store = new MemoryStore();
  const written = positionWrites(store);
  const { rt } = testRuntime({ store });
  const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
  for (let i = 1; i <= 3; i++) await rt.bus.publish('orders.eu', i);
  const consumer = orders.consumer('audit');
  await flush();
  written.length = 0;
  for (const m of consumer.fetch(3)) m.ack();
  await eventually(() => expect(written.at(-1)).toEqual({ floor: 4 }));
  // A record with floor 2 or 3 would, after a crash there, redeliver part of what was acked together.
  expect(written).toEqual([{ floor: 4 }]);
});

test('position writes - the inputs of a window are acknowledged in one stored position when its result is handled', async () => {
  const store = new MemoryStore();
  const written = positionWrites(store);
  const { rt } = testRuntime({ store });
  const events = rt.stream({ name: 'EVENTS', subjects: ['events.>'] });
  const results: unknown[] = [];
  rt.bus.subscribe('counts', { callback: (env) => void results.push(env.data) });
  rt.spawn(
    actor<{ k: string; t: number }, unknown>({
      name: 'counter',
      subscribe: durable<{ k: string; t: number }>('EVENTS', { consumer: 'counter' }),
      output: 'counts',
      pipeline: (in$) =>
        in$.pipe(
          eventTime((e) => e.t),
          keyBy((e) => e.k),
          watermarks({ maxOutOfOrdernessMs: 0 }),
          tumbling({ name: 'counter', sizeMs: 100, aggregate: agg.count() }),
          map((env) => ({ ...env, data: { key: env.data.key, value: env.data.value } })),
        ),
    }),
  );
  // Three inputs of window [0, 100) of key a, then one at 250 whose watermark closes it.
  for (const t of [10, 20, 30]) await rt.bus.publish('events.x', { k: 'a', t });
  await eventually(() => expect(events.consumer('counter').info().ackPending).toBe(3));
  await flush();
  written.length = 0;
  await rt.bus.publish('events.x', { k: 'a', t: 250 });
  await eventually(() => expect(results).toEqual([{ key: 'a', value: 3 }]));
  await eventually(() => expect(events.consumer('counter').position).toBe(4));
  expect(written.map((p) => p.floor)).toEqual([4]);
});
