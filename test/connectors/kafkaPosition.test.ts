import fc from 'fast-check';
import type { SinkRecord } from 'sluice';
import { type KafkaSource, positionOf } from 'sluice/connectors/kafka';
import { describe, expect, test } from 'vitest';

// The transactional sink reads each record's input position from its idempotency key, for every
// record of a transaction, so it cuts the key at its slashes. This is the rule it must keep: the
// key split on '/', `<stream>/<topic>/<partition>/<offset>[/...]`, partition and offset safe integers.
function reference(key: string, stream: string): { topic: string; partition: number; offset: number } | undefined {
  if (!key.startsWith(`${stream}/`)) return undefined;
  const parts = key.slice(stream.length + 1).split('/');
  const partition = Number(parts[1]);
  const offset = Number(parts[2]);
  if (parts.length >= 3 && Number.isSafeInteger(partition) && Number.isSafeInteger(offset))
    return { topic: parts[0] as string, partition, offset };
  return undefined;
}

const record = (key: string): SinkRecord<unknown> => ({ key, value: null, revision: undefined, envelope: undefined });

describe('positionOf (the transactional sink reading an input position from a key)', () => {
  const stream = 'kafka';
  const source = { stream } as KafkaSource<unknown>;

  test('reads topic, partition and offset, with or without the actor and output index after them', () => {
    expect(positionOf(record('kafka/orders.eu/2/1234/price/0'), source)).toEqual({
      topic: 'orders.eu',
      partition: 2,
      offset: 1234,
    });
    expect(positionOf(record('kafka/orders/0/7'), source)).toEqual({ topic: 'orders', partition: 0, offset: 7 });
    expect(positionOf(record('kafka/orders/0'), source)).toBeUndefined();
    expect(positionOf(record('kafkaX/orders/0/7'), source)).toBeUndefined();
    expect(positionOf(record('kafka/orders/x/7'), source)).toBeUndefined();
    expect(positionOf(record('other/orders/0/7'), source)).toBeUndefined();
  });

  test('agrees with splitting the key on every key, well-formed or not', () => {
    const token = fc.oneof(
      fc.constantFrom('', '0', '1', '42', '-1', '1.5', '9007199254740993', 'x', 'orders', 'a.b-c_d'),
      fc.string({ maxLength: 6 }),
    );
    const key = fc.oneof(
      fc.array(token, { maxLength: 7 }).map((parts) => [stream, ...parts].join('/')),
      fc.array(token, { maxLength: 7 }).map((parts) => parts.join('/')),
      fc.string({ maxLength: 30 }),
    );
    fc.assert(
      fc.property(key, (k) => {
        expect(positionOf(record(k), source)).toEqual(reference(k, stream));
      }),
      { numRuns: 5000 },
    );
  });
});
