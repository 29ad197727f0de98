import { describe, expect, test } from 'vitest';
import { DeadLetterBuffer } from '../../runtime/admin/deadLetterBuffer.ts';
import { createEnvelope } from '../../runtime/envelope.ts';

describe('dead-letter buffer bound', () => {
  test('evicts the oldest kept letter, passing over letters replayed or purged before it', () => {
    const buffer = new DeadLetterBuffer(3, () => 0);
    const keep = (i: number) => buffer.keep(createEnvelope(`$DLQ.${i % 2 === 0 ? 'even' : 'odd'}`, i));
    for (let i = 1; i <= 3; i++) keep(i);
    buffer.replayed(buffer.get(2) as NonNullable<ReturnType<typeof buffer.get>>);
    keep(4);
    keep(5); // over the bound: letter 1 goes
    keep(6); // letter 2 was replayed, so letter 3 goes
    expect(buffer.page(undefined, 0, 10).map((l) => l.envelope.data)).toEqual([4, 5, 6]);
    expect(buffer.purge('$DLQ.even')).toBe(2); // 4 and 6
    keep(7);
    keep(8);
    keep(9); // 4 and 6 were purged: letter 5 goes
    expect(buffer.page(undefined, 0, 10).map((l) => l.envelope.data)).toEqual([7, 8, 9]);
    const evicted = Object.fromEntries(buffer.subjects().map((s) => [s.subject, s.evicted]));
    expect(evicted).toEqual({ '$DLQ.odd': 3, '$DLQ.even': 0 });
  });

  test('lowering the bound drops the oldest at once', () => {
    const buffer = new DeadLetterBuffer(10, () => 0);
    for (let i = 1; i <= 6; i++) buffer.keep(createEnvelope('$DLQ.a', i));
    buffer.max = 2;
    expect(buffer.page(undefined, 0, 10).map((l) => l.envelope.data)).toEqual([5, 6]);
  });
});
