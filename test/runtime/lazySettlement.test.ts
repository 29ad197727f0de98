/**
 * Settlement by counting (docs/settlement.md): an input handed to a pipeline gets a settlement
 * record only when something still holds it after its synchronous run, or when the actor must
 * name it (a failure, a stop). Everything else settles by the counts its handle kept.
 */
import { delay, filter, map, tap } from 'rxjs';
import { type ActorRef, actor, type Envelope, type Lineage } from 'sluice';
import { agg, mapAsync, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { describe, expect, test } from 'vitest';
import { collect, flush, quietLogger, testRuntime } from './helpers.ts';

/** The records an actor made (an internal figure of the cell behind the ref). */
function records(ref: ActorRef): number {
  return (ref as ActorRef & { readonly records: number }).records;
}

const N = 500;

describe('settlement by counting', () => {
  test('mapped inputs whose outputs an idle subscriber takes at once settle with no record', async () => {
    const { rt } = testRuntime();
    const out = collect<number>(rt.bus, 'out');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'double',
        subscribe: 'in',
        output: 'out',
        pipeline: (in$) => in$.pipe(map((env) => ({ ...env, data: env.data * 2 }))),
      }),
    );
    for (let i = 0; i < N; i++) await rt.bus.publish('in', i);
    await ref.idle();
    expect(out.map((e) => e.data)).toEqual(Array.from({ length: N }, (_, i) => i * 2));
    expect(ref.counters).toMatchObject({ acked: N, dropped: 0, settlementErrors: 0 });
    expect(records(ref)).toBe(0);
    expect(ref.inFlight).toBe(0);
  });

  test('an envelope the bus made for one actor takes its handle in place; no other consumer ever sees it', async () => {
    const { rt } = testRuntime();
    const seen = new Map<string, Envelope<number>[]>();
    const watch = (name: string, subject: string) => {
      const got: Envelope<number>[] = [];
      seen.set(name, got);
      return rt.spawn(
        actor<number, number>({
          name,
          subscribe: subject,
          pipeline: (in$) =>
            in$.pipe(
              tap((env) => void got.push(env)),
              filter(() => false),
            ),
        }),
      );
    };
    const alone = watch('alone', 'solo');
    const first = watch('first', 'shared');
    const second = watch('second', 'shared');
    const plain = collect<number>(rt.bus, 'shared');
    const upstream: Lineage = { ids: ['u'], retain() {}, release() {}, absorb() {}, releaseAbsorbed() {} };
    rt.bus.tryPublish('solo', 1, { lineage: upstream });
    rt.bus.tryPublish('shared', 2, { lineage: upstream });
    await Promise.all([alone.idle(), first.idle(), second.idle()]);
    await flush();
    const [a] = seen.get('alone') ?? [];
    const [f] = seen.get('first') ?? [];
    const [g] = seen.get('second') ?? [];
    // Each actor's input carries its own handle, never the publisher's lineage or another's.
    for (const env of [a, f, g]) {
      expect(env?.lineage).toBeDefined();
      expect(env?.lineage).not.toBe(upstream);
    }
    expect(f?.lineage).not.toBe(g?.lineage);
    expect(f).not.toBe(g);
    // Two actors and a plain subscriber on one subject: the subscriber's copy is the bus's, untouched.
    expect(plain).toHaveLength(1);
    expect(plain[0]?.lineage).toBe(upstream);
    expect(plain[0]).not.toBe(f);
    expect(plain[0]).not.toBe(g);
    expect(records(alone) + records(first) + records(second)).toBe(0);
  });

  test('filtered inputs settle as dropped with no record', async () => {
    const { rt } = testRuntime();
    const ref = rt.spawn(
      actor<number, number>({
        name: 'odd',
        subscribe: 'in',
        output: 'out',
        pipeline: (in$) => in$.pipe(filter((env) => env.data % 2 === 1)),
      }),
    );
    collect(rt.bus, 'out');
    for (let i = 0; i < N; i++) await rt.bus.publish('in', i);
    await ref.idle();
    expect(ref.counters).toMatchObject({ acked: N / 2, dropped: N / 2 });
    expect(records(ref)).toBe(0);
  });

  test('an input an async step holds gets a record, and settles only when the step is done', async () => {
    const { rt, clock } = testRuntime();
    const out = collect<number>(rt.bus, 'out');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'slow',
        subscribe: 'in',
        output: 'out',
        pipeline: (in$) =>
          in$.pipe(
            mapAsync((data: number) => new Promise<number>((resolve) => clock.setTimeout(() => resolve(data + 1), 10))),
          ),
      }),
    );
    for (let i = 0; i < 3; i++) await rt.bus.publish('in', i);
    await flush();
    expect(records(ref)).toBe(3);
    expect(ref.inFlight).toBe(3);
    expect(ref.counters.acked).toBe(0);
    await clock.advance(10);
    await flush();
    await ref.idle();
    expect(out.map((e) => e.data)).toEqual([1, 2, 3]);
    expect(ref.counters).toMatchObject({ acked: 3, settlementErrors: 0 });
  });

  test('outputs a busy subscriber keeps in its mailbox give their inputs a record, settled when it takes them', async () => {
    const { rt } = testRuntime();
    const seen: number[] = [];
    let gate: (() => void) | undefined;
    rt.bus.subscribe<number>('out', {
      callback: async (env) => {
        seen.push(env.data);
        if (seen.length === 1) await new Promise<void>((resolve) => (gate = resolve));
      },
    });
    const ref = rt.spawn(
      actor<number, number>({ name: 'pass', subscribe: 'in', output: 'out', pipeline: (in$) => in$ }),
    );
    for (let i = 0; i < 3; i++) await rt.bus.publish('in', i);
    await flush();
    // The first output is being handled, the other two wait: all three inputs are held downstream.
    expect(records(ref)).toBeGreaterThanOrEqual(2);
    expect(ref.counters.acked).toBe(0);
    gate?.();
    await ref.idle();
    await flush();
    expect(seen).toEqual([0, 1, 2]);
    expect(ref.counters.acked).toBe(3);
  });

  test('inputs absorbed into a window without a store get records and settle when their window fires', async () => {
    const { rt } = testRuntime();
    const out = collect<WindowResult<number>>(rt.bus, 'out');
    const ref = rt.spawn(
      actor<number, WindowResult<number>>({
        name: 'w',
        subscribe: 'in',
        output: 'out',
        pipeline: (in$) =>
          in$.pipe(watermarks(), tumbling<number, number, number>({ name: 'w', sizeMs: 10, aggregate: agg.count() })),
      }),
    );
    for (const ts of [1, 2, 3]) await rt.bus.publish('in', ts, { eventTime: ts });
    await flush();
    expect(records(ref)).toBe(3);
    expect(ref.counters.acked).toBe(0);
    expect(ref.absorbed).toBe(3);
    await rt.bus.publish('in', 25, { eventTime: 25 });
    await flush();
    expect(out.map((e) => e.data.count)).toEqual([3]);
    expect(ref.counters.acked).toBe(3);
  });

  test('an output emitted after its input settled by counting is reported as a settlement error', async () => {
    const log = quietLogger();
    const { rt, clock } = testRuntime({ logger: log });
    const out = collect<number>(rt.bus, 'out');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'unheld',
        subscribe: 'in',
        output: 'out',
        // An async step that does not hold its input: the input settles as dropped at once.
        pipeline: (in$, ctx) => in$.pipe(delay(5, ctx.scheduler)),
      }),
    );
    await rt.bus.publish('in', 7);
    await flush();
    expect(ref.counters).toMatchObject({ dropped: 1, acked: 0 });
    await clock.advance(5);
    await flush();
    expect(out.map((e) => e.data)).toEqual([7]);
    expect(ref.counters.settlementErrors).toBe(1);
    expect(log.lines.join('\n')).toContain('emitted an output after the input settled');
    expect(records(ref)).toBe(0);
  });

  test('an input whose pipeline throws gets a record mid-run and is retried, then dead-lettered', async () => {
    const { rt, clock } = testRuntime({ logger: quietLogger() });
    const dead = collect(rt.bus, '$DLQ.thrower');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'thrower',
        subscribe: 'in',
        output: 'out',
        retry: { maxAttempts: 2, backoff: { initialMs: 10, jitter: 0 } },
        pipeline: (in$) =>
          in$.pipe(
            map((env) => {
              if (env.data === 13) throw new Error('unlucky');
              return env;
            }),
          ),
      }),
    );
    collect(rt.bus, 'out');
    await rt.bus.publish('in', 1);
    await rt.bus.publish('in', 13);
    await rt.bus.publish('in', 2);
    await flush();
    await clock.advance(10);
    await flush();
    await ref.idle();
    expect(ref.counters).toMatchObject({ acked: 2, retried: 1, deadLettered: 1 });
    expect(dead).toHaveLength(1);
    expect(dead[0]?.data).toBe(13);
    // All the failing input's: its record (made mid-run), the fresh one that carries each of its two
    // failures after the pipeline that threw is dropped, and its retry's. None for 1 and 2.
    expect(records(ref)).toBe(4);
  });

  test('an actor stopped from inside its pipeline dead-letters the input it was handling', async () => {
    const { rt } = testRuntime({ logger: quietLogger() });
    const dead = collect(rt.bus, '$DLQ.stopper');
    let self: ActorRef | undefined;
    const ref = rt.spawn(
      actor<number, number>({
        name: 'stopper',
        subscribe: 'in',
        output: 'out',
        pipeline: (in$) =>
          in$.pipe(
            map((env) => {
              if (env.data === 2) void self?.stop();
              return env;
            }),
          ),
      }),
    );
    self = ref;
    collect(rt.bus, 'out');
    await rt.bus.publish('in', 1);
    await rt.bus.publish('in', 2);
    await flush();
    expect(ref.state).toBe('stopped');
    expect(dead.map((e) => e.data)).toEqual([2]);
    expect(ref.counters.acked).toBe(1);
  });
});
