import { bufferTime, interval, Subject, take, timer } from 'rxjs';
import { systemClock, VirtualClock } from 'sluice';
import { describe, expect, test } from 'vitest';

describe('clock - VirtualClock timers', () => {
  test('clock - timers run in due order, each seeing now() equal to its due time', async () => {
    const clock = new VirtualClock(1_000);
    const ran: [string, number][] = [];
    clock.setTimeout(() => ran.push(['c', clock.now()]), 30);
    clock.setTimeout(() => ran.push(['a', clock.now()]), 10);
    clock.setTimeout(() => ran.push(['b', clock.now()]), 20);
    await clock.advance(30);
    expect(ran).toEqual([
      ['a', 1_010],
      ['b', 1_020],
      ['c', 1_030],
    ]);
    expect(clock.now()).toBe(1_030);
  });

  test('clock - timers due at the same time run in the order they were set', async () => {
    const clock = new VirtualClock();
    const ran: string[] = [];
    for (const name of ['first', 'second', 'third', 'fourth']) clock.setTimeout(() => ran.push(name), 10);
    clock.setTimeout(() => ran.push('earlier'), 5);
    await clock.advance(10);
    expect(ran).toEqual(['earlier', 'first', 'second', 'third', 'fourth']);
  });

  test('clock - advance runs only what falls due and stops at the target time', async () => {
    const clock = new VirtualClock();
    const ran: number[] = [];
    clock.setTimeout(() => ran.push(10), 10);
    clock.setTimeout(() => ran.push(20), 20);
    await clock.advance(15);
    expect(ran).toEqual([10]);
    expect(clock.now()).toBe(15);
    expect(clock.pending).toBe(1);
    expect(clock.nextDue()).toBe(20);
    await clock.advance(5);
    expect(ran).toEqual([10, 20]);
  });

  test('clock - a cancelled timer never runs; cancel twice is harmless', async () => {
    const clock = new VirtualClock();
    const ran: string[] = [];
    const t = clock.setTimeout(() => ran.push('cancelled'), 10);
    clock.setTimeout(() => ran.push('kept'), 10);
    t.cancel();
    t.cancel();
    expect(clock.pending).toBe(1);
    await clock.advance(100);
    expect(ran).toEqual(['kept']);
  });

  test('clock - a timer set by a timer runs in the same advance when it falls due', async () => {
    const clock = new VirtualClock();
    const ran: number[] = [];
    clock.setTimeout(() => {
      ran.push(clock.now());
      clock.setTimeout(() => ran.push(clock.now()), 0);
      clock.setTimeout(() => ran.push(clock.now()), 5);
      clock.setTimeout(() => ran.push(clock.now()), 50);
    }, 10);
    await clock.advance(20);
    expect(ran).toEqual([10, 10, 15]);
  });

  test('clock - a negative or NaN delay means now, as with Node timers', async () => {
    const clock = new VirtualClock(100);
    const ran: string[] = [];
    clock.setTimeout(() => ran.push('nan'), Number.NaN);
    clock.setTimeout(() => ran.push('negative'), -5);
    clock.setTimeout(() => ran.push('later'), 1);
    expect(clock.nextDue()).toBe(100);
    await clock.advance(0);
    expect(ran).toEqual(['nan', 'negative']);
    await clock.advance(1);
    expect(ran).toEqual(['nan', 'negative', 'later']);
  });

  test('clock - advanceTo never moves time backwards', async () => {
    const clock = new VirtualClock(500);
    await clock.advanceTo(100);
    expect(clock.now()).toBe(500);
  });

  test('clock - runAll runs every timer and stops a timer that re-arms forever', async () => {
    const clock = new VirtualClock();
    let runs = 0;
    clock.setTimeout(() => runs++, 1_000);
    clock.setTimeout(() => runs++, 5);
    await clock.runAll();
    expect(runs).toBe(2);
    expect(clock.now()).toBe(1_000);

    const rearm = () => void clock.setTimeout(rearm, 1);
    rearm();
    await expect(clock.runAll(50)).rejects.toThrow('more than 50 timers ran');
  });
});

describe('clock - sleep', () => {
  test('clock - sleep resolves when time is advanced past it, not before', async () => {
    const clock = new VirtualClock();
    let woke = false;
    void clock.sleep(100).then(() => {
      woke = true;
    });
    await clock.advance(99);
    expect(woke).toBe(false);
    await clock.advance(1);
    expect(woke).toBe(true);
  });

  test('clock - advance runs chained sleeps within its span', async () => {
    const clock = new VirtualClock();
    const wokeAt: number[] = [];
    const chain = (async () => {
      for (let i = 0; i < 3; i++) {
        await clock.sleep(10);
        wokeAt.push(clock.now());
      }
    })();
    await clock.advance(30);
    await chain;
    expect(wokeAt).toEqual([10, 20, 30]);
  });

  test('clock - an abort rejects the sleep with the signal reason and cancels its timer', async () => {
    const clock = new VirtualClock();
    const controller = new AbortController();
    const sleeping = clock.sleep(100, controller.signal);
    const reason = new Error('stop waiting');
    controller.abort(reason);
    await expect(sleeping).rejects.toBe(reason);
    expect(clock.pending).toBe(0);
  });

  test('clock - sleep with an already aborted signal rejects at once', async () => {
    const clock = new VirtualClock();
    const reason = new Error('already');
    await expect(clock.sleep(100, AbortSignal.abort(reason))).rejects.toBe(reason);
    expect(clock.pending).toBe(0);
    // The system clock behaves the same, without any time passing.
    await expect(systemClock.sleep(60_000, AbortSignal.abort(reason))).rejects.toBe(reason);
  });

  test('clock - a sleep that ends normally ignores a later abort', async () => {
    const clock = new VirtualClock();
    const controller = new AbortController();
    const sleeping = clock.sleep(10, controller.signal);
    await clock.advance(10);
    controller.abort(new Error('too late'));
    await expect(sleeping).resolves.toBeUndefined();
  });
});

describe('clock - RxJS scheduler', () => {
  test('clock - timer on the clock scheduler fires on virtual time', async () => {
    const clock = new VirtualClock();
    const fired: number[] = [];
    timer(100, clock.scheduler).subscribe(() => fired.push(clock.now()));
    await clock.advance(99);
    expect(fired).toEqual([]);
    await clock.advance(1);
    expect(fired).toEqual([100]);
  });

  test('clock - interval on the clock scheduler ticks every period and stops when unsubscribed', async () => {
    const clock = new VirtualClock();
    const ticks: [number, number][] = [];
    const sub = interval(10, clock.scheduler)
      .pipe(take(5))
      .subscribe((n) => ticks.push([n, clock.now()]));
    await clock.advance(35);
    expect(ticks).toEqual([
      [0, 10],
      [1, 20],
      [2, 30],
    ]);
    sub.unsubscribe();
    await clock.advance(100);
    expect(ticks).toHaveLength(3);
    expect(clock.pending).toBe(0);
  });

  test('clock - bufferTime on the clock scheduler groups by virtual time, deterministically', async () => {
    const clock = new VirtualClock();
    const source = new Subject<string>();
    const buffers: [number, string[]][] = [];
    source.pipe(bufferTime(100, clock.scheduler)).subscribe((b) => buffers.push([clock.now(), b]));
    // Values arrive at chosen virtual times.
    const at: [number, string][] = [
      [10, 'a'],
      [50, 'b'],
      [120, 'c'],
      [250, 'd'],
      [299, 'e'],
    ];
    for (const [t, v] of at) {
      await clock.advanceTo(t);
      source.next(v);
    }
    await clock.advanceTo(400);
    expect(buffers).toEqual([
      [100, ['a', 'b']],
      [200, ['c']],
      [300, ['d', 'e']],
      [400, []],
    ]);
  });

  test('clock - the scheduler now() is the clock time', async () => {
    const clock = new VirtualClock(5_000);
    expect(clock.scheduler.now()).toBe(5_000);
    await clock.advance(250);
    expect(clock.scheduler.now()).toBe(5_250);
  });
});
