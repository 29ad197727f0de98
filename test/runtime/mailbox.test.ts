import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  Bus,
  createEnvelope,
  DEFAULT_MAILBOX_OPTIONS,
  type DropReason,
  type Envelope,
  type Lineage,
  Mailbox,
  MailboxFullError,
  OptionsError,
} from 'sluice';
import { describe, expect, test, vi } from 'vitest';
// The offer result is internal (the bus reads it), so it comes from its file.
import { Offer } from '../../runtime/bus/mailbox.ts';

const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

function env(n: number, lineage?: Lineage): Envelope<number> {
  return createEnvelope(`m.${n}`, n, lineage === undefined ? undefined : { lineage });
}

/** A Lineage that counts references, to check that whoever takes one gives it back. */
class CountingLineage implements Lineage {
  readonly ids: readonly string[];
  retained = 0;
  released = 0;
  absorbed = 0;
  releasedAbsorbed = 0;
  constructor(id: string) {
    this.ids = [id];
  }
  retain(): void {
    this.retained++;
  }
  release(): void {
    this.released++;
  }
  absorb(): void {
    this.absorbed++;
  }
  releaseAbsorbed(): void {
    this.releasedAbsorbed++;
  }
  /** References taken and not given back, of either kind. */
  get held(): number {
    return this.retained - this.released + (this.absorbed - this.releasedAbsorbed);
  }
  get taken(): number {
    return this.retained + this.absorbed;
  }
}

/** A mailbox that records what it drops, and why. */
function recording(options: ConstructorParameters<typeof Mailbox>[1]) {
  const box = new Mailbox('box', options);
  const drops: [number, DropReason][] = [];
  box.onDrop = (e, reason) => void drops.push([e.data as number, reason]);
  return { box, drops };
}

function takeAll(box: Mailbox): number[] {
  const out: number[] = [];
  for (let e = box.take(); e !== undefined; e = box.take()) out.push(e.data as number);
  return out;
}

describe('mailbox - options', () => {
  test('mailbox - defaults are a capacity of 1024 and the block policy', () => {
    const box = new Mailbox('m');
    expect(box.capacity).toBe(1024);
    expect(box.overflow).toBe('block');
    expect(DEFAULT_MAILBOX_OPTIONS).toEqual({ capacity: 1024, overflow: 'block' });
    expect(Object.isFrozen(DEFAULT_MAILBOX_OPTIONS)).toBe(true);
  });

  test.each([0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY])(
    'mailbox - capacity %s is refused naming mailbox.capacity',
    (capacity) => {
      let error: unknown;
      try {
        new Mailbox('m', { capacity });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(OptionsError);
      expect(error).toMatchObject({ code: 'SLUICE_ERR_OPTIONS', option: 'mailbox.capacity' });
      expect((error as Error).message).toContain('must be an integer >= 1');
    },
  );

  test('mailbox - an unknown overflow policy is refused naming the allowed ones', () => {
    expect(() => new Mailbox('m', { overflow: 'drop-random' as 'block' })).toThrow(
      "invalid option 'mailbox.overflow': must be one of 'block', 'drop-oldest', 'drop-newest', 'fail', got 'drop-random'",
    );
  });

  test('mailbox - subscription mailbox options are checked when subscribing', () => {
    const bus = new Bus();
    expect(() => bus.subscribe('a', { mailbox: { capacity: 0 } })).toThrow(OptionsError);
    expect(bus.subscriptions).toBe(0);
  });
});

describe('mailbox - capacity and order', () => {
  test('mailbox - holds up to its capacity, then applies its policy', () => {
    const { box } = recording({ capacity: 3 });
    expect([box.offer(env(1)), box.offer(env(2)), box.offer(env(3))]).toEqual([
      Offer.Accepted,
      Offer.Accepted,
      Offer.Accepted,
    ]);
    expect(box.depth).toBe(3);
    expect(box.hasSpace()).toBe(false);
    expect(box.offer(env(4))).toBe(Offer.Full);
    expect(box.depth).toBe(3);
  });

  test('mailbox - takes in FIFO order, across ring wrap-around and growth past the first allocation', () => {
    const box = new Mailbox('m', { capacity: 5000 });
    let next = 0;
    const out: number[] = [];
    // Interleave to move the ring head around, then fill beyond 1024 to force growth.
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 7; i++) box.offer(env(next++));
      for (let i = 0; i < 5; i++) out.push(box.take()?.data as number);
    }
    for (let i = 0; i < 3000; i++) box.offer(env(next++));
    out.push(...takeAll(box));
    expect(out).toEqual(Array.from({ length: next }, (_, i) => i));
    expect(box.take()).toBeUndefined();
  });

  test('mailbox - unshift puts a message back at the front, even over capacity', () => {
    const box = new Mailbox('m', { capacity: 2 });
    box.offer(env(1));
    box.offer(env(2));
    box.unshift(env(0));
    expect(box.depth).toBe(3);
    expect(takeAll(box)).toEqual([0, 1, 2]);
  });

  test('mailbox - onReadable fires when the empty mailbox gets a message and on unshift', () => {
    const box = new Mailbox('m', { capacity: 4 });
    let readable = 0;
    box.onReadable = () => void readable++;
    box.offer(env(1));
    box.offer(env(2)); // not empty before: no new signal
    expect(readable).toBe(1);
    takeAll(box);
    box.offer(env(3));
    expect(readable).toBe(2);
    box.unshift(env(2));
    expect(readable).toBe(3);
  });
});

describe('mailbox - cost', () => {
  test('mailbox - letting 200,000 waiting publishers in, in order, never shifts an array', async () => {
    // shift() moves every element behind the first: one per take made the drain O(n²).
    const box = new Mailbox('box', { capacity: 1 });
    box.offer(env(0));
    const n = 200_000;
    const accepted: Promise<void>[] = [];
    for (let i = 1; i <= n; i++) accepted.push(box.wait(env(i)));
    expect(box.blocked).toBe(n);
    const shift = vi.spyOn(Array.prototype, 'shift');
    let shifts: number;
    let inOrder = true;
    let taken = 0;
    try {
      for (let e = box.take(); e !== undefined; e = box.take()) {
        if (e.data !== taken) inOrder = false;
        taken++;
      }
    } finally {
      shifts = shift.mock.calls.length;
      shift.mockRestore();
    }
    expect(shifts).toBe(0);
    expect(taken).toBe(n + 1);
    expect(inOrder).toBe(true);
    expect(box.blocked).toBe(0);
    await Promise.all(accepted);
  });

  test('mailbox - closing with waiting publishers after some were let in drops exactly the ones still waiting', async () => {
    const { box, drops } = recording({ capacity: 1 });
    box.offer(env(0));
    const waits = Array.from({ length: 3000 }, (_, i) => box.wait(env(i + 1)));
    for (let i = 0; i < 2000; i++) box.take();
    expect(box.blocked).toBe(1000);
    box.close();
    expect(drops.map(([n]) => n)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 2001));
    await Promise.all(waits);
  });

  test('mailbox - an idle subscription costs a few KB, not a preallocated ring of 1,024 slots', () => {
    // A full collection first, so garbage left by earlier tests is not collected during the count.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const bus = new Bus();
    const n = 20_000;
    const subs: unknown[] = [];
    gc();
    const before = process.memoryUsage().heapUsed;
    for (let i = 0; i < n; i++) subs.push(bus.subscribe(`idle.${i}`, { callback: () => {} }));
    const perSubscription = (process.memoryUsage().heapUsed - before) / n;
    // Under 1 KB per subscription plus the trie's node for each distinct subject (see the
    // subscription memory test); a 1,024-slot ring alone is 8 KB.
    expect(perSubscription).toBeLessThan(6000);
    expect(subs).toHaveLength(n);
  });
});

describe('mailbox - overflow policies', () => {
  test('mailbox - block: a waiting publisher is let in, in order, when a message is taken', async () => {
    const box = new Mailbox('m', { capacity: 2 });
    box.offer(env(1));
    box.offer(env(2));
    expect(box.offer(env(3))).toBe(Offer.Full);
    const entered: number[] = [];
    void box.wait(env(3)).then(() => entered.push(3));
    void box.wait(env(4)).then(() => entered.push(4));
    expect(box.blocked).toBe(2);
    expect(box.hasSpace()).toBe(false);
    expect(box.take()?.data).toBe(1);
    await flush();
    expect(entered).toEqual([3]);
    expect(box.depth).toBe(2);
    expect(takeAll(box)).toEqual([2, 3, 4]);
    await flush();
    expect(entered).toEqual([3, 4]);
    expect(box.blocked).toBe(0);
  });

  test('mailbox - drop-oldest: makes room by dropping the oldest, through onDrop', () => {
    const { box, drops } = recording({ capacity: 2, overflow: 'drop-oldest' });
    for (let i = 1; i <= 5; i++) expect(box.offer(env(i))).toBe(Offer.Accepted);
    expect(takeAll(box)).toEqual([4, 5]);
    expect(drops).toEqual([
      [1, 'drop-oldest'],
      [2, 'drop-oldest'],
      [3, 'drop-oldest'],
    ]);
  });

  test('mailbox - drop-newest: keeps what it has and drops the newcomer, through onDrop', () => {
    const { box, drops } = recording({ capacity: 2, overflow: 'drop-newest' });
    expect([1, 2, 3, 4].map((i) => box.offer(env(i)))).toEqual([
      Offer.Accepted,
      Offer.Accepted,
      Offer.Dropped,
      Offer.Dropped,
    ]);
    expect(takeAll(box)).toEqual([1, 2]);
    expect(drops).toEqual([
      [3, 'drop-newest'],
      [4, 'drop-newest'],
    ]);
  });

  test('mailbox - fail: a full mailbox throws MailboxFullError naming it and its capacity', () => {
    const box = new Mailbox('orders-writer', { capacity: 1, overflow: 'fail' });
    box.offer(env(1));
    let error: unknown;
    try {
      box.offer(env(2));
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(MailboxFullError);
    expect(error).toMatchObject({
      code: 'SLUICE_ERR_MAILBOX_FULL',
      mailbox: 'orders-writer',
      capacity: 1,
      retryable: true,
    });
    expect((error as Error).message).toContain("'orders-writer'");
    expect(takeAll(box)).toEqual([1]);
  });

  test.each(['drop-oldest', 'drop-newest'] as const)(
    'mailbox - %s through the bus: drops are counted and the dropped message lineage is given back',
    async (overflow) => {
      const bus = new Bus();
      const sub = bus.subscribe<number>('a', { mailbox: { capacity: 2, overflow } });
      const lineages = [0, 1, 2].map((i) => new CountingLineage(`in-${i}`));
      for (let i = 0; i < 3; i++) await bus.publish('a', i, { lineage: lineages[i] });
      expect(bus.telemetry.counters.dropped).toBe(1);
      const droppedIndex = overflow === 'drop-oldest' ? 0 : 2;
      const dropped = lineages[droppedIndex] as CountingLineage;
      expect(dropped.taken).toBeGreaterThan(0); // the mailbox did take a reference...
      expect(dropped.held).toBe(0); // ...and gave it back when it dropped the message
      const kept = lineages.filter((_, i) => i !== droppedIndex);
      expect(kept.map((l) => l.held)).toEqual([1, 1]); // still queued: still referenced
      // Consuming the rest gives their references back too.
      const got: number[] = [];
      for await (const e of sub) {
        got.push(e.data);
        if (got.length === 2) break;
      }
      expect(got).toEqual(overflow === 'drop-oldest' ? [1, 2] : [0, 1]);
      expect(kept.map((l) => l.held)).toEqual([0, 0]);
    },
  );

  test('mailbox - fail through the bus: the refused message keeps no reference', async () => {
    const bus = new Bus();
    bus.subscribe('a', { mailbox: { capacity: 1, overflow: 'fail' } });
    await bus.publish('a', 1);
    const lineage = new CountingLineage('x');
    await expect(bus.publish('a', 2, { lineage })).rejects.toBeInstanceOf(MailboxFullError);
    expect(lineage.held).toBe(0);
  });
});

describe('mailbox - closing', () => {
  test('mailbox - clear hands every queued message to onDrop as closed', () => {
    const { box, drops } = recording({ capacity: 4 });
    for (let i = 1; i <= 3; i++) box.offer(env(i));
    expect(box.clear()).toBe(3);
    expect(drops).toEqual([
      [1, 'closed'],
      [2, 'closed'],
      [3, 'closed'],
    ]);
    expect(box.depth).toBe(0);
  });

  test('mailbox - close keeps queued messages for take and accepts nothing new', () => {
    const { box, drops } = recording({ capacity: 4 });
    box.offer(env(1));
    box.close();
    expect(box.closed).toBe(true);
    expect(box.offer(env(2))).toBe(Offer.Dropped);
    expect(drops).toEqual([[2, 'closed']]);
    expect(takeAll(box)).toEqual([1]);
  });

  test('mailbox - close with a reason rejects waiting publishers with it; their messages go to onDrop', async () => {
    const { box, drops } = recording({ capacity: 1 });
    box.offer(env(1));
    const reason = new Error('shutting down');
    const waiting = box.wait(env(2));
    box.close(reason);
    await expect(waiting).rejects.toBe(reason);
    expect(drops).toEqual([[2, 'closed']]);
    expect(box.blocked).toBe(0);
  });

  test('mailbox - close without a reason lets waiting publishers go; their messages go to onDrop', async () => {
    const { box, drops } = recording({ capacity: 1 });
    box.offer(env(1));
    const waiting = box.wait(env(2));
    box.close();
    await expect(waiting).resolves.toBeUndefined();
    expect(drops).toEqual([[2, 'closed']]);
    expect(takeAll(box)).toEqual([1]);
  });

  test('mailbox - waiting on a closed mailbox drops at once instead of hanging', async () => {
    const { box, drops } = recording({ capacity: 1 });
    box.close();
    await expect(box.wait(env(7))).resolves.toBeUndefined();
    expect(drops).toEqual([[7, 'closed']]);
  });

  test('mailbox - space resolves once a take makes room, or on close', async () => {
    const box = new Mailbox('m', { capacity: 1 });
    await expect(box.space()).resolves.toBeUndefined();
    box.offer(env(1));
    let ready = false;
    void box.space().then(() => {
      ready = true;
    });
    await flush();
    expect(ready).toBe(false);
    box.take();
    await flush();
    expect(ready).toBe(true);

    box.offer(env(2));
    let released = false;
    void box.space().then(() => {
      released = true;
    });
    box.close();
    await flush();
    expect(released).toBe(true);
  });
});
