import { crc32 as zlibCrc } from 'node:zlib';
import { ClosedError, OptionsError } from 'sluice';
import { describe, expect, test } from 'vitest';
// Not exported from 'sluice' until durable subjects make the store public.
import { CorruptRecordError } from '../../../runtime/errors.ts';
import type { LogEntry, Store } from '../../../runtime/store/index.ts';
import { encodeRecord } from '../../../runtime/store/record.ts';
import { rejection, thrown } from '../helpers.ts';
import { lmdbHarness, memoryHarness, type StoreHarness } from './harness.ts';

// The same suite against both implementations: the memory store stands in for LMDB in tests only
// if it behaves the same, errors included.

function values(entries: LogEntry[]): unknown[] {
  return entries.map((e) => (e.error === undefined ? e.value : e.error));
}

describe.each<StoreHarness>([memoryHarness, lmdbHarness])('store conformance - $name', (harness) => {
  // ---- logs ----

  test('append gives contiguous sequences from 1, per stream', async () => {
    const store = harness.fresh();
    expect(await store.append('orders', ['a', 'b'])).toEqual({ first: 1, last: 2 });
    expect(await store.append('orders', ['c'])).toEqual({ first: 3, last: 3 });
    expect(await store.append('payments', ['x'])).toEqual({ first: 1, last: 1 });
    expect(store.bounds('orders')).toEqual({ first: 1, last: 3, count: 3 });
    expect(store.bounds('payments')).toEqual({ first: 1, last: 1, count: 1 });
    expect(store.bounds('never')).toEqual({ first: 1, last: 0, count: 0 });
    expect(store.streams()).toEqual(['orders', 'payments']);
  });

  test('concurrent appends to one stream get distinct sequences in call order', async () => {
    const store = harness.fresh();
    const ranges = await Promise.all(Array.from({ length: 50 }, (_, i) => store.append('s', [i, i])));
    expect(ranges.map((r) => r.first)).toEqual(Array.from({ length: 50 }, (_, i) => 2 * i + 1));
    expect(values(store.read('s', 1))).toEqual(Array.from({ length: 50 }, (_, i) => [i, i]).flat());
  });

  test('values round-trip exactly: big integers, bytes, dates, nested objects, a __proto__ key', async () => {
    const store = harness.fresh();
    const proto = JSON.parse('{"__proto__": {"x": 1}, "y": 2}');
    const sample = [
      { big: 2n ** 70n, small: -(2n ** 63n) },
      new Uint8Array([0, 1, 255]),
      new Date(1_700_000_000_000),
      { nested: { list: [1, 'two', null, true] } },
      proto,
      null,
      0,
      '',
    ];
    await store.append('s', sample);
    const back = values(store.read('s', 1));
    expect(back).toEqual(sample);
    expect(Object.hasOwn(back[4] as object, '__proto__')).toBe(true);
    expect(store.get('s', 1)).toEqual({ big: 2n ** 70n, small: -(2n ** 63n) });
  });

  test('read takes a range by sequence: from, to (inclusive), limit', async () => {
    const store = harness.fresh();
    await store.append(
      's',
      Array.from({ length: 10 }, (_, i) => i + 1),
    );
    expect(store.read('s', 4, { to: 6 }).map((e) => e.seq)).toEqual([4, 5, 6]);
    expect(store.read('s', 8).map((e) => e.seq)).toEqual([8, 9, 10]);
    expect(store.read('s', 0, { limit: 2 }).map((e) => e.seq)).toEqual([1, 2]);
    expect(store.read('s', 3, { to: 2 })).toEqual([]);
    expect(store.read('s', 11)).toEqual([]);
    expect(store.read('s', 1, { limit: 0 })).toEqual([]);
    expect(store.read('other', 1)).toEqual([]);
    expect(store.get('s', 10)).toBe(10);
    expect(store.get('s', 11)).toBeUndefined();
  });

  test('retention removes records through a sequence; the end of the stream stays and appends go on', async () => {
    const store = harness.fresh();
    await store.append('s', [1, 2, 3, 4, 5]);
    await store.deleteThrough('s', 3);
    expect(store.bounds('s')).toEqual({ first: 4, last: 5, count: 2 });
    expect(store.read('s', 0).map((e) => e.seq)).toEqual([4, 5]);
    expect(store.get('s', 2)).toBeUndefined();
    // Removing everything keeps the last sequence: sequences never repeat.
    await store.deleteThrough('s', 5);
    expect(store.bounds('s')).toEqual({ first: 6, last: 5, count: 0 });
    expect(await store.append('s', ['six'])).toEqual({ first: 6, last: 6 });
    // Retention past the end stops at the end, so it cannot move the next sequence.
    await store.deleteThrough('s', 1_000);
    expect(store.bounds('s')).toEqual({ first: 7, last: 6, count: 0 });
    expect(await store.append('s', ['seven'])).toEqual({ first: 7, last: 7 });
    // Again through an older sequence does nothing.
    await store.deleteThrough('s', 2);
    expect(store.read('s', 0).map((e) => e.seq)).toEqual([7]);
    expect(store.streams()).toEqual(['s']);
  });

  test('retention in the same commit as appends sees them', async () => {
    const store = harness.fresh();
    const appended = store.append('s', [1, 2, 3]);
    const retained = store.deleteThrough('s', 2);
    await Promise.all([appended, retained]);
    expect(store.bounds('s')).toEqual({ first: 3, last: 3, count: 1 });
  });

  // ---- key-value namespaces ----

  test('kv: put, get, overwrite, delete; namespaces are separate', async () => {
    const store = harness.fresh();
    await store.putKey('positions', 'orders/billing', 41);
    await store.putKey('state', 'orders/billing', { total: 10n });
    expect(store.getKey('positions', 'orders/billing')).toBe(41);
    expect(store.getKey('state', 'orders/billing')).toEqual({ total: 10n });
    await store.putKey('positions', 'orders/billing', 42);
    expect(store.getKey('positions', 'orders/billing')).toBe(42);
    await store.deleteKey('positions', 'orders/billing');
    expect(store.getKey('positions', 'orders/billing')).toBeUndefined();
    expect(store.getKey('state', 'orders/billing')).toEqual({ total: 10n });
    await store.deleteKey('positions', 'never-there');
    expect(store.getKey('positions', '')).toBeUndefined();
  });

  test('kv: scan by prefix, in UTF-8 byte order, with a limit, and never across namespaces', async () => {
    const store = harness.fresh();
    const keys = ['user:b', 'user:a', 'user:ä', 'user:\u{1F600}', 'user:\uFF5E', 'usex', 'use', 'user'];
    await Promise.all(keys.map((k, i) => store.putKey('state', k, i)));
    await store.putKey('state2', 'user:z', 'elsewhere');
    await store.putKey('stat', 'user:y', 'elsewhere');
    const scanned = store.scan('state', 'user:');
    const expected = keys
      .filter((k) => k.startsWith('user:'))
      .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    expect(scanned.map((e) => e.key)).toEqual(expected);
    expect(scanned.map((e) => e.value)).toEqual(expected.map((k) => keys.indexOf(k)));
    expect(store.scan('state', 'user:', { limit: 2 }).map((e) => e.key)).toEqual(expected.slice(0, 2));
    expect(store.scan('state', '').length).toBe(keys.length);
    expect(store.scan('state', 'nothing')).toEqual([]);
    expect(store.scan('empty', '')).toEqual([]);
  });

  // ---- commits ----

  test('a write is visible once it resolves, not before its commit', async () => {
    const store = harness.fresh();
    const pending = store.putKey('kv', 'k', 1);
    const appending = store.append('s', ['v']);
    expect(store.getKey('kv', 'k')).toBeUndefined();
    expect(store.bounds('s').last).toBe(0);
    await Promise.all([pending, appending]);
    expect(store.getKey('kv', 'k')).toBe(1);
    expect(store.bounds('s').last).toBe(1);
  });

  test('group commit: 1,000 concurrent appends share a few commits; awaited one by one, one commit each', async () => {
    const store = harness.fresh();
    const before = store.stats().commits;
    await Promise.all(Array.from({ length: 1_000 }, (_, i) => store.append('s', [i])));
    const grouped = store.stats().commits - before;
    expect(grouped).toBeGreaterThanOrEqual(1);
    expect(grouped).toBeLessThanOrEqual(2);
    const start = store.stats().commits;
    for (let i = 0; i < 20; i++) await store.append('s', [i]);
    expect(store.stats().commits - start).toBe(20);
    expect(store.stats()).toMatchObject({ writes: 1_020, appended: 1_020 });
  });

  test('group commit: writers that each await their last write share commits', async () => {
    const store = harness.fresh();
    const before = store.stats();
    const writer = async (w: number): Promise<void> => {
      for (let i = 0; i < 20; i++) await store.append(`s${w % 4}`, [i]);
    };
    await Promise.all(Array.from({ length: 40 }, (_, w) => writer(w)));
    const after = store.stats();
    expect(after.writes - before.writes).toBe(800);
    // 40 writers in step: each commit carries about 40 writes.
    expect(after.commits - before.commits).toBeLessThanOrEqual(800 / 20);
    for (let s = 0; s < 4; s++) expect(store.bounds(`s${s}`).count).toBe(200);
  });

  // ---- batches ----

  test('batch: appends, puts, deletes and retention commit together, with sequences known inside', async () => {
    const store = harness.fresh();
    await store.append('in', [1, 2, 3]);
    await store.putKey('dedup', 'old', true);
    const result = await store.batch((b) => {
      const out = b.append('out', ['r1', 'r2']);
      b.put('positions', 'job', 3);
      b.put('state', 'total', 6);
      b.delete('dedup', 'old');
      b.deleteThrough('in', 3);
      const more = b.append('out', ['r3']);
      return [out, more];
    });
    expect(result).toEqual([
      { first: 1, last: 2 },
      { first: 3, last: 3 },
    ]);
    expect(values(store.read('out', 1))).toEqual(['r1', 'r2', 'r3']);
    expect(store.getKey('positions', 'job')).toBe(3);
    expect(store.getKey('state', 'total')).toBe(6);
    expect(store.getKey('dedup', 'old')).toBeUndefined();
    expect(store.bounds('in')).toEqual({ first: 4, last: 3, count: 0 });
    expect(store.stats().commits).toBe(3);
  });

  test('batch: a build that throws midway writes nothing and gives out no sequence', async () => {
    const store = harness.fresh();
    await store.append('out', ['before']);
    const error = new Error('midway');
    const failed = store.batch((b) => {
      b.append('out', ['lost']);
      b.put('state', 'k', 1);
      throw error;
    });
    // Another writer in the same turn is not affected.
    const other = store.putKey('state', 'other', 2);
    expect(await rejection(failed)).toBe(error);
    await other;
    expect(store.getKey('state', 'k')).toBeUndefined();
    expect(store.getKey('state', 'other')).toBe(2);
    expect(values(store.read('out', 1))).toEqual(['before']);
    expect(await store.append('out', ['next'])).toEqual({ first: 2, last: 2 });
  });

  test('batch: a value that cannot be encoded fails the batch before anything is written', async () => {
    const store = harness.fresh();
    const failed = store.batch((b) => {
      b.append('out', ['ok']);
      b.put('state', 'k', undefined);
    });
    expect(await rejection(failed)).toBeInstanceOf(OptionsError);
    await store.putKey('state', 'after', 1);
    expect(store.bounds('out').last).toBe(0);
    expect(store.getKey('state', 'k')).toBeUndefined();
  });

  test('batch: an async build is refused, and a builder kept after its build cannot write', async () => {
    const store = harness.fresh();
    const error = await rejection(
      store.batch(async (b) => {
        b.put('state', 'k', 1);
      }),
    );
    expect(error).toBeInstanceOf(OptionsError);
    expect((error as OptionsError).option).toBe('store.batch');
    let kept: Parameters<Parameters<Store['batch']>[0]>[0] | undefined;
    await store.batch((b) => {
      kept = b;
    });
    expect(thrown(() => kept?.put('state', 'late', 1))).toBeInstanceOf(ClosedError);
    await store.putKey('state', 'flush', 0);
    expect(store.getKey('state', 'k')).toBeUndefined();
    expect(store.getKey('state', 'late')).toBeUndefined();
  });

  // ---- bad input ----

  test('bad input is refused with an OptionsError naming it, and nothing is written', async () => {
    const store = harness.fresh();
    const cases: [Promise<unknown>, string][] = [
      [store.append('', [1]), 'store.stream'],
      [store.append('s', []), 'store.append values'],
      [store.append('s', [undefined]), 'store.value'],
      [store.append('x'.repeat(1_000), [1]), 'store.stream'],
      [store.putKey('', 'k', 1), 'store.namespace'],
      [store.putKey('ns', 'k', undefined), 'store.value'],
      [store.putKey('ns', 'k'.repeat(5_000), 1), 'store.key'],
      [store.deleteThrough('s', -1), 'store.seq'],
      [store.deleteThrough('s', 1.5), 'store.seq'],
    ];
    for (const [promise, option] of cases) {
      const error = await rejection(promise);
      expect(error, option).toBeInstanceOf(OptionsError);
      expect((error as OptionsError).option).toBe(option);
    }
    expect((thrown(() => store.read('s', -1)) as OptionsError).option).toBe('store.from');
    expect((thrown(() => store.get('s', 0)) as OptionsError).option).toBe('store.seq');
    expect(store.stats().writes).toBe(0);
    expect(await store.append('s', [1])).toEqual({ first: 1, last: 1 });
  });

  // ---- closing ----

  test('close waits for accepted writes; afterwards reads and writes throw ClosedError', async () => {
    const store = harness.fresh();
    const write = store.append('s', ['v']);
    await store.close();
    expect(await write).toEqual({ first: 1, last: 1 });
    expect(await rejection(store.append('s', ['late']))).toBeInstanceOf(ClosedError);
    expect(thrown(() => store.read('s', 1))).toBeInstanceOf(ClosedError);
    expect(thrown(() => store.getKey('ns', 'k'))).toBeInstanceOf(ClosedError);
  });

  // ---- corruption ----

  test('a flipped byte in a stored record is reported for that sequence; the rest of the stream reads', async () => {
    let store = harness.fresh();
    await store.append('orders', [
      { id: 1, amount: 100 },
      { id: 2, amount: 200 },
      { id: 3, amount: 300 },
    ]);
    store = await harness.tamperRecord(store, 'orders', 2, (bytes) => {
      bytes[bytes.length - 2] = (bytes[bytes.length - 2] as number) ^ 0x01; // inside the payload: 200 -> 201
      return bytes;
    });
    const entries = store.read('orders', 1);
    expect(entries.map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(entries[0]?.value).toEqual({ id: 1, amount: 100 });
    expect(entries[2]?.value).toEqual({ id: 3, amount: 300 });
    const error = entries[1]?.error;
    expect(error).toBeInstanceOf(CorruptRecordError);
    expect(error).toMatchObject({ code: 'SLUICE_ERR_CORRUPT_RECORD', stream: 'orders', sequence: 2, retryable: false });
    expect(error?.message).toMatch(/^corrupt record at sequence 2 of stream 'orders': checksum mismatch/);
    const direct = thrown(() => store.get('orders', 2));
    expect(direct).toBeInstanceOf(CorruptRecordError);
    expect(direct).toMatchObject({ stream: 'orders', sequence: 2 });
    expect(store.get('orders', 3)).toEqual({ id: 3, amount: 300 });
    // The stream goes on: appends continue after the damaged record.
    expect(await store.append('orders', [{ id: 4 }])).toEqual({ first: 4, last: 4 });
  });

  test('a truncated msgpack record is reported, whether or not its checksum was fixed up to match', async () => {
    let store = harness.fresh();
    await store.append('s', [{ text: 'a long enough value to cut' }, 'ok', { list: [1, 2, 3] }, 'tail']);
    // Cut short as a torn write would: the checksum no longer matches.
    store = await harness.tamperRecord(store, 's', 1, (bytes) => bytes.subarray(0, bytes.length - 5));
    // Cut short and given a matching checksum: only the MessagePack decoder can tell.
    store = await harness.tamperRecord(store, 's', 3, () => {
      const whole = encodeRecord({ list: [1, 2, 3] });
      const cut = Buffer.from(whole.subarray(0, whole.length - 2));
      const payload = cut.subarray(5);
      cut.writeUInt32BE(zlibCrc(payload), 1);
      return cut;
    });
    // Cut below the header.
    store = await harness.tamperRecord(store, 's', 4, (bytes) => bytes.subarray(0, 3));
    const entries = store.read('s', 1);
    expect(entries.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    expect(entries[1]?.value).toBe('ok');
    expect(entries[0]?.error?.message).toMatch(/sequence 1 of stream 's': checksum mismatch/);
    expect(entries[2]?.error?.message).toMatch(/sequence 3 of stream 's': not decodable as msgpack/);
    expect(entries[2]?.error?.cause).toBeDefined();
    expect(entries[3]?.error?.message).toMatch(/sequence 4 of stream 's': truncated: 3 bytes/);
  });

  test('a corrupt kv value names its namespace and key; get throws, scan reports it and goes on', async () => {
    let store = harness.fresh();
    await store.putKey('state', 'a', 1);
    await store.putKey('state', 'b', { total: 2 });
    await store.putKey('state', 'c', 3);
    store = await harness.tamperValue(store, 'state', 'b', (bytes) => {
      bytes[6] = (bytes[6] as number) ^ 0xff;
      return bytes;
    });
    const error = thrown(() => store.getKey('state', 'b'));
    expect(error).toBeInstanceOf(CorruptRecordError);
    expect(error).toMatchObject({ namespace: 'state', key: 'b', stream: undefined });
    expect((error as Error).message).toMatch(/^corrupt record at key 'b' of namespace 'state'/);
    const scanned = store.scan('state', '');
    expect(scanned.map((e) => [e.key, e.value])).toEqual([
      ['a', 1],
      ['b', undefined],
      ['c', 3],
    ]);
    expect(scanned[1]?.error).toBeInstanceOf(CorruptRecordError);
    // Writing the key again repairs it.
    await store.putKey('state', 'b', 'fixed');
    expect(store.getKey('state', 'b')).toBe('fixed');
  });

  test('stats name the implementation and its durability', () => {
    const store = harness.fresh();
    expect(store.stats()).toEqual({
      kind: harness.name,
      durability: harness.name === 'lmdb' ? 'sync' : 'none',
      commits: 0,
      writes: 0,
      appended: 0,
    });
  });
});
