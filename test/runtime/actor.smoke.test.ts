import { map } from 'rxjs';
import { actor, createRuntime, VirtualClock } from 'sluice';
import { expect, test } from 'vitest';

test('actor - maps and publishes on, settling each input', async () => {
  const clock = new VirtualClock();
  const rt = createRuntime({ clock });
  const got: number[] = [];
  rt.bus.subscribe<number>('out', { callback: (e) => void got.push(e.data) });
  const ref = rt.spawn(
    actor<number, number>({
      name: 'double',
      subscribe: 'in',
      output: 'out',
      pipeline: (in$) => in$.pipe(map((e) => ({ ...e, data: e.data * 2 }))),
    }),
  );
  for (let i = 0; i < 10; i++) await rt.bus.publish('in', i);
  await rt.idle();
  await new Promise((r) => setImmediate(r));
  expect(got).toEqual([0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
  expect(ref.counters.acked).toBe(10);
  expect(ref.inFlight).toBe(0);
  const report = await rt.stop();
  expect(report.drained).toBe(true);
});
