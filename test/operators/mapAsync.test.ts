import { type Observable, Subject } from 'rxjs';
import { createEnvelope, type Envelope } from 'sluice';
import { mapAsync } from 'sluice/operators';
import { testPipeline } from 'sluice/testing';
import { describe, expect, test } from 'vitest';
import { CountingLineage } from './helpers.ts';

function deferred<T>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

describe('mapAsync', () => {
  test('keeps each input in flight until its result is emitted, then gives it back', async () => {
    const gate = deferred<number>();
    const source = new Subject<Envelope<number>>();
    const out: number[] = [];
    source.pipe(mapAsync(() => gate.promise)).subscribe((e) => out.push(e.data));
    const lineage = new CountingLineage('a');
    source.next(createEnvelope('in', 1, { lineage }));
    expect(lineage.retained).toBe(1);
    expect(lineage.released).toBe(0);
    gate.resolve(10);
    await gate.promise;
    await Promise.resolve();
    expect(out).toEqual([10]);
    expect(lineage.released).toBe(1);
    expect(lineage.errors).toEqual([]);
  });

  test('a rejected call fails its input (to be retried) and the stream goes on', async () => {
    const h = testPipeline<number, number>((in$) =>
      (in$ as Observable<Envelope<number>>).pipe(
        mapAsync(async (n: number) => {
          if (n === 2) throw new Error('nope');
          return n * 10;
        }),
      ),
    );
    const records = [1, 2, 3].map((n) => h.send(n));
    await h.advance(0);
    expect(h.values).toEqual([10, 30]);
    expect(records.map((r) => r.outcome)).toEqual(['acked', 'failed', 'acked']);
    expect(String(records[1]?.error)).toContain('nope');
  });

  test('ordered: results come out in input order; concurrency bounds the calls running', async () => {
    const gates = [deferred<number>(), deferred<number>(), deferred<number>()];
    let running = 0;
    let most = 0;
    const source = new Subject<Envelope<number>>();
    const out: number[] = [];
    source
      .pipe(
        mapAsync(
          async (i: number) => {
            running++;
            most = Math.max(most, running);
            const v = await (gates[i] as { promise: Promise<number> }).promise;
            running--;
            return v;
          },
          { ordered: true, concurrency: 2 },
        ),
      )
      .subscribe((e) => out.push(e.data));
    for (const i of [0, 1, 2]) source.next(createEnvelope('in', i));
    gates[1]?.resolve(11);
    gates[0]?.resolve(10);
    gates[2]?.resolve(12);
    for (let i = 0; i < 10; i++) await Promise.resolve();
    expect(out).toEqual([10, 11, 12]);
    expect(most).toBe(2);
  });

  test('unsubscribing fails what was taken and not emitted, instead of acknowledging it', async () => {
    const gate = deferred<number>();
    const source = new Subject<Envelope<number>>();
    const sub = source.pipe(mapAsync(() => gate.promise, { concurrency: 1 })).subscribe();
    const running = new CountingLineage('running');
    const waiting = new CountingLineage('waiting');
    source.next(createEnvelope('in', 1, { lineage: running }));
    source.next(createEnvelope('in', 2, { lineage: waiting }));
    sub.unsubscribe();
    expect(waiting.errors).toHaveLength(1);
    gate.resolve(1);
    await gate.promise;
    await Promise.resolve();
    expect(running.errors).toHaveLength(1);
    expect(String(running.errors[0])).toContain('unsubscribed');
  });

  test('a function that returns a plain value (no promise) maps it, instead of throwing out of the source', async () => {
    const source = new Subject<Envelope<number>>();
    const out: number[] = [];
    const errors: unknown[] = [];
    source
      .pipe(mapAsync((n: number) => (n * 10) as unknown as Promise<number>))
      .subscribe({ next: (e) => out.push(e.data), error: (e: unknown) => errors.push(e) });
    const lineage = new CountingLineage('a');
    source.next(createEnvelope('in', 1, { lineage }));
    await Promise.resolve();
    await Promise.resolve();
    expect(out).toEqual([10]);
    expect(errors).toEqual([]);
    expect(lineage.released).toBe(1);
  });

  test('ordered: a call that rejects after the unsubscribe still gives its input back, failed', async () => {
    let reject!: (error: unknown) => void;
    const call = new Promise<number>((_resolve, r) => {
      reject = r;
    });
    const source = new Subject<Envelope<number>>();
    const sub = source.pipe(mapAsync(() => call, { ordered: true })).subscribe();
    const running = new CountingLineage('running');
    source.next(createEnvelope('in', 1, { lineage: running }));
    sub.unsubscribe();
    reject(new Error('backend down'));
    await call.catch(() => undefined);
    await Promise.resolve();
    expect(running.released).toBe(1);
    expect(running.errors).toHaveLength(1);
  });
});
