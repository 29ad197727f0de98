import { Bus } from 'sluice';
import { expect, test } from 'vitest';
test('smoke', async () => {
  const bus = new Bus();
  const got: unknown[] = [];
  bus.subscribe('a.*', { callback: (e) => { got.push(e.data); } });
  await bus.publish('a.b', 1);
  expect(bus.tryPublish('a.c', 2)).toBe(true);
  await new Promise((r) => setTimeout(r, 5));
  expect(got).toEqual([1, 2]);
});
