/**
 * `npm run bench -- durable`: the embedded durable store against bare lmdb, the floor
 * (DESIGN.md section 10; issue 11). Both sides sync every commit (`overlappingSync: false`) and
 * batch the same way, so the difference is what the store adds: validation, the record format
 * with its checksum, sequence assignment and its own group commit.
 *
 * - `publish`: WRITERS concurrent publishers, each awaiting every append of one 64-byte order
 *   before the next, as publishers awaiting a durable publish do. Commits are shared by whatever
 *   was written while the previous one synced. lmdb: the same writers awaiting `db.put` of the
 *   order (lmdb's own msgpack encoding) under the key `[stream, seq]`.
 * - `publish-one`: the same with one writer: a commit, and a sync, per message.
 * - `consume`: the stream read back in pages of PAGE, every order decoded and its id summed.
 *   lmdb: `getRange` over the same keys.
 *
 * Figures are messages per second; each contender checks the count and the sum of ids.
 * Durable subjects and the pipeline case come with them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { LmdbStore } from '../../runtime/store/index.ts';
import { type Contender, defineBench, expectCount } from './harness.ts';

const WRITERS = 64;
const PAGE = 1_000;
const STREAM = 'orders';

interface Order {
  readonly id: number;
  readonly user: string;
  readonly amount: number;
  readonly pad: string;
}

const POOL = 1024;
const PAYLOADS: readonly Order[] = Array.from({ length: POOL }, (_, id) => {
  const base = { id, user: `u${(id * 7919) % 100_000}`, amount: (id * 37) % 1000 };
  return Object.freeze({ ...base, pad: 'x'.repeat(64 - JSON.stringify({ ...base, pad: '' }).length) });
});

function idSum(n: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += (PAYLOADS[i % POOL] as Order).id;
  return sum;
}

function tempPath(): { path: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-bench-durable-'));
  return { path: join(dir, 'db'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Runs `write(i)` for i in [0, n) from `count` concurrent loops, each awaiting its own writes. */
async function writers(n: number, write: (i: number) => Promise<unknown>, count = WRITERS): Promise<void> {
  let next = 0;
  const loop = async (): Promise<void> => {
    while (next < n) await write(next++);
  };
  await Promise.all(Array.from({ length: count }, loop));
}

const sluicePublish =
  (writerCount: number): Contender =>
  (n) => {
    const { path, remove } = tempPath();
    const store = new LmdbStore({ path });
    return {
      run: async () => {
        await writers(n, (i) => store.append(STREAM, [PAYLOADS[i % POOL]]), writerCount);
        expectCount('stored', store.bounds(STREAM).count, n);
        let sum = 0;
        for (const e of store.read(STREAM, 1)) sum += (e.value as Order).id;
        expectCount('id sum', sum, idSum(n));
      },
      dispose: async () => {
        await store.close();
        remove();
      },
    };
  };

const lmdbPublish =
  (writerCount: number): Contender =>
  (n) => {
    const { path, remove } = tempPath();
    const db = open<Order, [string, number]>({ path, overlappingSync: false });
    let seq = 0;
    return {
      run: async () => {
        await writers(
          n,
          () => {
            const i = seq++;
            return db.put([STREAM, i + 1], PAYLOADS[i % POOL] as Order);
          },
          writerCount,
        );
        let count = 0;
        let sum = 0;
        for (const { value } of db.getRange({ start: [STREAM, 0] })) {
          count++;
          sum += value.id;
        }
        expectCount('stored', count, n);
        expectCount('id sum', sum, idSum(n));
      },
      dispose: async () => {
        await db.close();
        remove();
      },
    };
  };

const sluiceConsume: Contender = async (n) => {
  const { path, remove } = tempPath();
  const store = new LmdbStore({ path });
  for (let i = 0; i < n; i += PAGE) {
    await store.append(
      STREAM,
      Array.from({ length: Math.min(PAGE, n - i) }, (_, j) => PAYLOADS[(i + j) % POOL]),
    );
  }
  return {
    run: async () => {
      let count = 0;
      let sum = 0;
      for (let from = 1; ; ) {
        const page = store.read(STREAM, from, { limit: PAGE });
        if (page.length === 0) break;
        for (const e of page) {
          if (e.error !== undefined) throw e.error;
          count++;
          sum += (e.value as Order).id;
        }
        from = (page.at(-1)?.seq as number) + 1;
      }
      expectCount('read', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await store.close();
      remove();
    },
  };
};

const lmdbConsume: Contender = async (n) => {
  const { path, remove } = tempPath();
  const db = open<Order, [string, number]>({ path, overlappingSync: false });
  for (let i = 0; i < n; i += PAGE) {
    await db.transaction(() => {
      for (let j = i; j < Math.min(i + PAGE, n); j++) db.put([STREAM, j + 1], PAYLOADS[j % POOL] as Order);
    });
  }
  return {
    run: async () => {
      let count = 0;
      let sum = 0;
      for (let from = 1; ; ) {
        let last = 0;
        for (const { key, value } of db.getRange({ start: [STREAM, from], end: [STREAM, from + PAGE] })) {
          count++;
          sum += value.id;
          last = key[1];
        }
        if (last === 0) break;
        from = last + 1;
      }
      expectCount('read', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await db.close();
      remove();
    },
  };
};

export default defineBench({
  bench: 'durable',
  unit: 'msg/s',
  contenders: ['sluice', 'lmdb'],
  cases: {
    publish: {
      messages: 200_000,
      description: `${WRITERS} writers, each awaiting a synced append of one 64-byte order before the next`,
      contenders: { sluice: sluicePublish(WRITERS), lmdb: lmdbPublish(WRITERS) },
    },
    'publish-one': {
      messages: 2_000,
      description: 'one writer awaiting each synced append: one commit and one sync per message (the cost of a sync)',
      contenders: { sluice: sluicePublish(1), lmdb: lmdbPublish(1) },
    },
    consume: {
      messages: 1_000_000,
      description: `read back in pages of ${PAGE}, each order decoded`,
      contenders: { sluice: sluiceConsume, lmdb: lmdbConsume },
    },
  },
  ratios: [['sluice', 'lmdb']],
  goals: [{ case: 'publish', contender: 'sluice', versus: 'lmdb', atLeast: 0.5 }],
  notes: ['both sides: overlappingSync off, every commit synced (fdatasync) before its writes resolve'],
});
