import { map } from 'rxjs';
import { actor, Bus, ClosedError, createRuntime, VirtualClock } from 'sluice';
import { describe, expect, test } from 'vitest';

describe('bus - refusing outside input', () => {
  test('after refuse, publish, tryPublish and request from outside fail with ClosedError naming the reason', async () => {
    const bus = new Bus();
    bus.subscribe('a', { callback: () => {} });
    bus.refuse('maintenance');
    const err = await bus.publish('a', 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClosedError);
    expect((err as Error).message).toContain('maintenance');
    expect(() => bus.tryPublish('a', 1)).toThrow(ClosedError);
    await expect(bus.request('a', 1)).rejects.toBeInstanceOf(ClosedError);
    await expect(bus.client('c').publish('a', 1)).rejects.toBeInstanceOf(ClosedError);
  });

  test('runtime.stop refuses new outside publishes while actors still finish and publish their outputs', async () => {
    const clock = new VirtualClock();
    const rt = createRuntime({ clock });
    const out: number[] = [];
    rt.bus.subscribe<number>('out', { callback: (e) => void out.push(e.data) });
    rt.spawn(
      actor<number, number>({
        name: 'inc',
        subscribe: 'in',
        output: 'out',
        pipeline: (in$) => in$.pipe(map((e) => ({ ...e, data: e.data + 1 }))),
      }),
    );
    await rt.bus.publish('in', 1);
    const stopping = rt.stop();
    await expect(rt.bus.publish('in', 2)).rejects.toBeInstanceOf(ClosedError);
    const report = await stopping;
    expect(report.drained).toBe(true);
    expect(out).toEqual([2]);
  });
});
