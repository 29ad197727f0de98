/**
 * Quick measure of checkpoints on LMDB: the same job (a durable stream in, a keyed running count,
 * one output per input to a stream) without a checkpoint (at-least-once: each input acknowledged
 * once its output is appended, positions stored by the consumer) and with one (state, positions
 * and outputs in one batch every `everyInputs`). Prints msg/s and the mean checkpoint commit.
 *
 *   npx tsx --conditions=sluice-source test/runtime/state/checkpointBench.ts [events] [everyInputs]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { actor, createRuntime, durable, LmdbStore } from 'sluice';

interface Event {
  readonly key: string;
  readonly n: number;
}

const events = Number(process.argv[2] ?? 50_000);
const everyInputs = Number(process.argv[3] ?? 1000);
const quiet = { ...console, debug() {}, info() {} };

async function run(checkpoint: boolean): Promise<{ rate: number; commits: number; commitMs: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-ckpt-bench-'));
  try {
    const store = new LmdbStore({ path: join(dir, 'store') });
    const rt = createRuntime({ store, logger: quiet });
    rt.stream({ name: 'IN', subjects: ['in.>'] });
    rt.stream({ name: 'OUT', subjects: ['out.>'] });
    for (let n = 0; n < events; n += 1000) {
      const sends: Promise<void>[] = [];
      for (let i = n; i < Math.min(n + 1000, events); i++)
        sends.push(rt.bus.publish('in.x', { key: `k${i % 1000}`, n: i }));
      await Promise.all(sends);
    }
    const counts = new Map<string, number>();
    const started = performance.now();
    const ref = rt.spawn(
      actor<Event, { key: string; count: number }>({
        name: 'count',
        subscribe: durable<Event>('IN', { consumer: 'count', maxAckPending: 5000 }),
        output: 'out.counts',
        maxInFlight: 5000,
        ...(checkpoint ? { checkpoint: { everyInputs, intervalMs: 1000 } } : {}),
        handle: (env, ctx) => {
          const key = env.data.key;
          const count = (checkpoint ? (ctx.state.get<number>(key) ?? 0) : (counts.get(key) ?? 0)) + 1;
          if (checkpoint) ctx.state.put(key, count);
          else counts.set(key, count);
          return { key, count };
        },
      }),
    );
    const consumer = rt.stream('IN').consumer('count');
    while (consumer.position <= events || (checkpoint && (ref.checkpoint?.held ?? 0) > 0)) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    // Outputs are on disk: the last checkpoint's commit (or the last append) resolved.
    while (store.bounds('OUT').last < events) await new Promise((resolve) => setTimeout(resolve, 1));
    const ms = performance.now() - started;
    const info = ref.checkpoint;
    await rt.stop();
    await store.close();
    return { rate: Math.round((events / ms) * 1000), commits: info?.commits ?? 0, commitMs: info?.commitMs ?? 0 };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const plain = await run(false);
const checkpointed = await run(true);
console.log(
  JSON.stringify({
    events,
    everyInputs,
    'at-least-once': plain.rate,
    checkpointed: checkpointed.rate,
    ratio: Number((checkpointed.rate / plain.rate).toFixed(2)),
    commits: checkpointed.commits,
    meanCommitMs: Number((checkpointed.commitMs / Math.max(1, checkpointed.commits)).toFixed(2)),
  }),
);
