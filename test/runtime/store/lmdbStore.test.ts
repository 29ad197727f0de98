import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { open } from 'lmdb';
import { OptionsError } from 'sluice';
import { describe, expect, test } from 'vitest';
import { LmdbStore } from '../../../runtime/store/index.ts';
import { lmdbStore, tempDir } from './harness.ts';

function lastTxnId(path: string): number {
  const env = open({ path, maxDbs: 8 });
  try {
    return (env.getStats() as { lastTxnId: number }).lastTxnId;
  } finally {
    void env.close();
  }
}

function hasStrace(): boolean {
  try {
    execFileSync('strace', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('LmdbStore', () => {
  test('reopening after close keeps records, keys, retention and the next sequence', async () => {
    const path = join(tempDir(), 'store');
    const first = new LmdbStore({ path });
    await first.append('orders', [{ id: 1 }, { id: 2 }, { id: 3 }]);
    await first.append('emptied', ['a', 'b']);
    await first.deleteThrough('orders', 1);
    await first.deleteThrough('emptied', 2);
    await first.batch((b) => {
      b.put('positions', 'billing', 2);
      b.put('state', 'total:eu', 12n ** 30n);
    });
    await first.close();

    const second = new LmdbStore({ path });
    try {
      expect(second.bounds('orders')).toEqual({ first: 2, last: 3, count: 2 });
      expect(second.read('orders', 0).map((e) => e.value)).toEqual([{ id: 2 }, { id: 3 }]);
      // A stream emptied by retention keeps its end across a restart: no sequence is given twice.
      expect(second.bounds('emptied')).toEqual({ first: 3, last: 2, count: 0 });
      expect(await second.append('emptied', ['c'])).toEqual({ first: 3, last: 3 });
      expect(await second.append('orders', [{ id: 4 }])).toEqual({ first: 4, last: 4 });
      expect(second.getKey('positions', 'billing')).toBe(2);
      expect(second.getKey('state', 'total:eu')).toBe(12n ** 30n);
      expect(second.streams()).toEqual(['emptied', 'orders']);
    } finally {
      await second.close();
    }
  });

  test('durability sync (the default) opens LMDB with overlappingSync off and syncing on', () => {
    const store = lmdbStore();
    expect(store.stats().durability).toBe('sync');
    expect(store.lmdbOptions).toMatchObject({ overlappingSync: false, noSync: false, noMetaSync: false });
  });

  test('the lazy mode says what it risks, and only it turns overlappingSync on', () => {
    const store = lmdbStore({ durability: 'lazy-may-lose-acknowledged-writes' });
    expect(store.stats().durability).toBe('lazy-may-lose-acknowledged-writes');
    expect(store.lmdbOptions).toMatchObject({ overlappingSync: true, noSync: false });
  });

  test('bad options are refused with an OptionsError naming them', () => {
    const dir = tempDir();
    const durability = (() => {
      try {
        new LmdbStore({ path: join(dir, 'x'), durability: 'lazy' as 'sync' });
      } catch (error) {
        return error;
      }
    })();
    expect(durability).toBeInstanceOf(OptionsError);
    expect((durability as OptionsError).option).toBe('store.durability');
    expect(() => new LmdbStore({ path: '' })).toThrow(OptionsError);
  });

  test('the commit counter counts LMDB transactions: concurrent writes share them', async () => {
    const path = join(tempDir(), 'store');
    await new LmdbStore({ path }).close();
    const before = lastTxnId(path);
    const store = new LmdbStore({ path });
    await Promise.all(Array.from({ length: 2_000 }, (_, i) => store.append(`s${i % 3}`, [i])));
    for (let i = 0; i < 10; i++) await store.putKey('kv', `k${i}`, i);
    const { commits, writes } = store.stats();
    await store.close();
    expect(writes).toBe(2_010);
    expect(lastTxnId(path) - before).toBe(commits);
    expect(commits).toBeLessThanOrEqual(12);
  });

  // Under strace, each acknowledgement must come after an fdatasync of the data file that
  // finished after the previous acknowledgement. This fails if writes were acknowledged unsynced
  // (noSync) or before their commit. At this pace the lazy mode also syncs before most acks (its
  // sync just is not waited for), so the trace cannot tell the two modes apart: the options test
  // above covers that.
  test.skipIf(!hasStrace())('an acknowledged append comes after a sync of its commit (strace)', () => {
    const dir = tempDir();
    const trace = join(dir, 'trace');
    const child = fileURLToPath(new URL('./fixtures/acks.ts', import.meta.url));
    const run = spawnSync(
      'strace',
      [
        '-f',
        '-e',
        'trace=fdatasync,fsync,write',
        '-o',
        trace,
        process.execPath,
        '--import',
        'tsx',
        child,
        join(dir, 'db'),
        'sync',
        '8',
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toContain('ack 8');
    const lines = readFileSync(trace, 'utf8').split('\n');
    const start = lines.findIndex((line) => line.includes('"ready\\n"'));
    expect(start).toBeGreaterThan(-1);
    let synced = 0;
    let acks = 0;
    for (const line of lines.slice(start + 1)) {
      if (/f(data)?sync(\(| resumed>).*= 0$/.test(line)) synced++;
      const ack = /write\(1, "ack (\d+)\\n"/.exec(line);
      if (ack === null) continue;
      acks++;
      expect(synced, `a sync completed before ack ${ack[1]}`).toBeGreaterThan(0);
      synced = 0;
    }
    expect(acks).toBe(8);
  });
});
