import { actor, IDEMPOTENCY_KEY_HEADER, type SourceRef, STREAM_HEADERS } from 'sluice';
import { expect, test } from 'vitest';
import { collect, flush, testRuntime } from './helpers.ts';

const position = (seq: number) => ({
  headers: { [STREAM_HEADERS.stream]: 'ORDERS', [STREAM_HEADERS.sequence]: String(seq) },
});

test('an actor on a durable source ref keys its outputs <stream>/<sequence>/<actor>/<index>', async () => {
  const { rt } = testRuntime();
  const ref: SourceRef<string> = { name: 'orders.in', schema: undefined, source: { stream: 'ORDERS', durable: true } };
  rt.spawn(
    actor<string, string>({
      name: 'split',
      subscribe: ref,
      output: 'out',
      handle: (env) => [`${env.data}1`, `${env.data}2`],
    }),
  );
  const out = collect(rt.bus, 'out');
  await rt.bus.publish('orders.in', 'a', position(7));
  await rt.bus.publish('orders.in', 'a', position(7)); // a redelivery: the same keys
  await flush();
  expect(out.map((e) => e.headers[IDEMPOTENCY_KEY_HEADER])).toEqual([
    'ORDERS/7/split/0',
    'ORDERS/7/split/1',
    'ORDERS/7/split/0',
    'ORDERS/7/split/1',
  ]);
});

test('a position from another stream, or through a plain or non-durable ref, gives no key', async () => {
  const { rt } = testRuntime();
  const core: SourceRef<string> = { name: 'live.in', schema: undefined, source: { stream: 'ORDERS', durable: false } };
  const js: SourceRef<string> = { name: 'orders.in', schema: undefined, source: { stream: 'ORDERS', durable: true } };
  rt.spawn(actor<string, string>({ name: 'core', subscribe: core, output: 'out.core', handle: (env) => env.data }));
  rt.spawn(
    actor<string, string>({ name: 'plain', subscribe: 'plain.in', output: 'out.plain', handle: (env) => env.data }),
  );
  rt.spawn(actor<string, string>({ name: 'js', subscribe: js, output: 'out.js', handle: (env) => env.data }));
  const out = collect(rt.bus, 'out.>');
  await rt.bus.publish('live.in', 'x', position(1));
  await rt.bus.publish('plain.in', 'y', position(2));
  await rt.bus.publish('orders.in', 'z', {
    headers: { [STREAM_HEADERS.stream]: 'OTHER', [STREAM_HEADERS.sequence]: '3' },
  });
  await flush();
  expect(out).toHaveLength(3);
  for (const env of out) expect(env.headers[IDEMPOTENCY_KEY_HEADER]).toBeUndefined();
});
