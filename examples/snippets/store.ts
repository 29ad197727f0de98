// The TypeScript block of docs/store.md, verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual } from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LmdbStore } from '../../runtime/store/index.ts';

export async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-store-snippet-'));
  const cwd = process.cwd();
  process.chdir(dir);
  const order1 = { id: 'o-1', total: 12.5 };
  const order2 = { id: 'o-2', total: 7 };
  const total = 19.5;
  try {
    const store = new LmdbStore({ path: './data/sluice' }); // a directory
    const { first, last } = await store.append('orders', [order1, order2]); // resolves once on disk
    store.read('orders', first, { limit: 100 }); // [{ seq, value }] or { seq, error } per record
    await store.batch((b) => {
      const out = b.append('totals', [total]); // sequences known at once
      b.put('state', 'total:eu', { total, seq: out.first });
      b.put('positions', 'billing', 41);
    }); // one transaction: all of it or nothing

    deepStrictEqual([first, last], [1, 2]);
    deepStrictEqual(
      store.read('orders', first, { limit: 100 }).map((r) => ('value' in r ? r.value : r.error)),
      [order1, order2],
    );
    deepStrictEqual(store.getKey('state', 'total:eu'), { total, seq: 1 });
    deepStrictEqual(store.getKey('positions', 'billing'), 41);
    deepStrictEqual(store.bounds('totals').last, 1);
    await store.close();
  } finally {
    process.chdir(cwd);
    rmSync(dir, { recursive: true, force: true });
  }
}
