/**
 * `npm run memcheck -- [--events=2000000] [--keys=10000]`: checks that a checkpointed 10-minute
 * tumbling count holds memory proportional to its keys, not to its events (issue 11). It runs the
 * job twice, each in its own child process (`node --expose-gc`): once over a quarter of the events
 * and once over all of them, with the same keys. The job is a durable stream on LMDB (off the heap,
 * trimmed by retention as the consumer goes) read by an actor with a checkpoint whose pipeline
 * counts per key in one window that spans all the events. Each run reports, by counting:
 * - the window records in the store (must be one per key, their counts summing to the events);
 * - the open windows and the inputs the window and the actor hold (`absorbed`, must be 0), and the
 *   most inputs waiting for a checkpoint (at most `everyInputs`);
 * - the heap used after a forced GC (`v8.getHeapStatistics().used_heap_size`) before the job,
 *   after each chunk of 10,000 events (the highest is kept) and at the end, window still open.
 * The check fails (exit code 1) unless the counts hold in both runs and the heap retained (above
 * the baseline, at the end and at its highest) in the full run exceeds the quarter run's by less
 * than 2 bytes per extra event, or 2 MB, whichever is more: one retained object per event would
 * cost far more than that. Timing is
 * reported, never checked. The last line printed is the JSON of both runs.
 *
 * `--child` runs one measurement in this process (needs `--expose-gc`) and prints its JSON.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getHeapStatistics } from 'node:v8';
import { actor, createRuntime, durable, LmdbStore } from 'sluice';
import { agg, eventTime, keyBy, tumbling, watermarks } from 'sluice/operators';

/** What one run measured. Heap figures in bytes. */
export interface MemFigures {
  readonly events: number;
  readonly keys: number;
  readonly ms: number;
  readonly windowRecords: number;
  readonly windowCount: number;
  readonly openWindows: number;
  readonly absorbed: number;
  readonly maxHeld: number;
  readonly everyInputs: number;
  readonly commits: number;
  readonly heapBaseline: number;
  readonly heapMax: number;
  readonly heapEnd: number;
}

interface Click {
  readonly page: string;
  readonly ts: number;
}

const WINDOW_MS = 600_000;
const CHUNK = 10_000;
const EVERY_INPUTS = 1000;

function heapAfterGc(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('memcheck: run with node --expose-gc (npm run memcheck does)');
  gc();
  gc();
  return getHeapStatistics().used_heap_size;
}

async function until(what: string, ok: () => boolean, deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`memcheck: timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Runs the job once in this process. */
export async function measure(events: number, keys: number): Promise<MemFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-memcheck-'));
  try {
    const store = new LmdbStore({ path: join(dir, 'store') });
    const rt = createRuntime({ store, logger: { ...console, debug() {}, info() {} } });
    rt.stream({ name: 'CLICKS', subjects: ['clicks.>'], retention: { maxMessages: 4 * CHUNK } });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const op = tumbling<Click, number, number>({ name: 'views', sizeMs: WINDOW_MS, aggregate: agg.count() });
    const ref = rt.spawn(
      actor<Click, unknown>({
        name: 'views',
        subscribe: durable<Click>('CLICKS', { consumer: 'views' }),
        output: 'totals.views',
        checkpoint: { everyInputs: EVERY_INPUTS, intervalMs: 50 },
        pipeline: (input$) =>
          input$.pipe(
            eventTime((c) => c.ts),
            keyBy((c) => c.page),
            watermarks({ maxOutOfOrdernessMs: 0 }),
            op,
          ),
      }),
    );
    const consumer = rt.stream('CLICKS').consumer('views');
    const started = performance.now();
    const heapBaseline = heapAfterGc();
    let heapMax = 0;
    let maxHeld = 0;
    let absorbed = 0;
    const sample = setInterval(() => {
      maxHeld = Math.max(maxHeld, ref.checkpoint?.held ?? 0);
      absorbed = Math.max(absorbed, ref.absorbed, op.stats().absorbed);
    }, 1);
    // Every event in the first 10-minute window: one open window per key all along.
    const step = (WINDOW_MS - 1) / events;
    for (let from = 0; from < events; from += CHUNK) {
      const to = Math.min(from + CHUNK, events);
      const sends: Promise<void>[] = [];
      for (let i = from; i < to; i++) {
        sends.push(rt.bus.publish('clicks.x', { page: `p${i % keys}`, ts: Math.floor(i * step) } satisfies Click));
      }
      await Promise.all(sends);
      // Consumed before the next chunk, so retention never removes an unread event.
      await until(`${to} events acknowledged`, () => consumer.info().acked >= to, 120_000);
      heapMax = Math.max(heapMax, heapAfterGc());
    }
    await until('the last checkpoint', () => ref.checkpoint?.held === 0 && ref.checkpoint.pendingWrites === 0, 60_000);
    clearInterval(sample);
    const heapEnd = heapAfterGc();
    heapMax = Math.max(heapMax, heapEnd);
    const stats = op.stats();
    const commits = ref.checkpoint?.commits ?? 0;
    const ms = performance.now() - started;
    await rt.stop();
    const records = store.scan('sluice.windows/views', 'views/0/').filter((e) => !e.key.endsWith('$watermark'));
    await store.close();
    return {
      events,
      keys,
      ms: Math.round(ms),
      windowRecords: records.length,
      windowCount: records.reduce((sum, e) => sum + (e.value as { c: number }).c, 0),
      openWindows: stats.openWindows,
      absorbed,
      maxHeld,
      everyInputs: EVERY_INPUTS,
      commits,
      heapBaseline,
      heapMax,
      heapEnd,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What is wrong with one run's counts, if anything. */
export function countProblems(f: MemFigures): string[] {
  const problems: string[] = [];
  if (f.windowRecords !== f.keys) problems.push(`${f.windowRecords} window records for ${f.keys} keys`);
  if (f.windowCount !== f.events) problems.push(`the window records count ${f.windowCount} of ${f.events} events`);
  if (f.openWindows !== f.keys) problems.push(`${f.openWindows} open windows for ${f.keys} keys`);
  if (f.absorbed !== 0) problems.push(`${f.absorbed} inputs held by the window or the actor`);
  if (f.maxHeld > f.everyInputs)
    problems.push(`${f.maxHeld} inputs waited for a checkpoint (everyInputs ${f.everyInputs})`);
  return problems;
}

/**
 * The heap the full run may retain beyond the quarter run's: 2 bytes per extra event, or 2 MB
 * (what GC and compiled code vary by between runs, measured at about 0.5 MB).
 */
export function heapAllowance(quarter: MemFigures, full: MemFigures): number {
  return Math.max(2 * 1024 * 1024, 2 * (full.events - quarter.events));
}

function child(events: number, keys: number): Promise<MemFigures> {
  const script = fileURLToPath(import.meta.url);
  return new Promise((resolve, reject) => {
    const p = spawn(
      process.execPath,
      [
        '--expose-gc',
        '--import',
        'tsx',
        '--conditions=sluice-source',
        script,
        '--child',
        `--events=${events}`,
        `--keys=${keys}`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    p.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
    });
    p.on('error', reject);
    p.on('close', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code !== 0) reject(new Error(`memcheck child (${events} events) exited with ${code}: ${out}`));
      else resolve(JSON.parse(last) as MemFigures);
    });
  });
}

/** Both runs and the verdict. */
export async function memcheck(events: number, keys: number): Promise<{ runs: MemFigures[]; problems: string[] }> {
  const quarter = await child(Math.floor(events / 4), keys);
  const full = await child(events, keys);
  const problems = [
    ...countProblems(quarter).map((p) => `quarter: ${p}`),
    ...countProblems(full).map((p) => `full: ${p}`),
  ];
  const allowed = heapAllowance(quarter, full);
  for (const [what, at] of [
    ['at the end', (f: MemFigures) => f.heapEnd],
    ['at most', (f: MemFigures) => f.heapMax],
  ] as const) {
    const grown = at(full) - full.heapBaseline - (at(quarter) - quarter.heapBaseline);
    if (grown > allowed) {
      problems.push(
        `the heap retained ${what} grew by ${grown} bytes with ${full.events - quarter.events} more events (allowed ${allowed})`,
      );
    }
  }
  return { runs: [quarter, full], problems };
}

function arg(name: string, fallback: number): number {
  const given = process.argv.find((a) => a.startsWith(`--${name}=`));
  if (given === undefined) return fallback;
  const n = Number(given.slice(name.length + 3));
  if (!Number.isInteger(n) || n < 1) throw new Error(`memcheck: --${name} must be a positive integer, got ${given}`);
  return n;
}

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const events = arg('events', 2_000_000);
  const keys = arg('keys', 10_000);
  if (process.argv.includes('--child')) {
    const f = await measure(events, keys);
    console.log(JSON.stringify(f));
    process.exit(0);
  }
  const { runs, problems } = await memcheck(events, keys);
  for (const f of runs) {
    console.log(
      `${f.events} events, ${f.keys} keys: ${f.windowRecords} window records (count ${f.windowCount}), ` +
        `absorbed ${f.absorbed}, at most ${f.maxHeld} awaiting a checkpoint, ${f.commits} commits; ` +
        `heap after GC: ${mb(f.heapBaseline)} before, ${mb(f.heapMax)} at most, ${mb(f.heapEnd)} at the end ` +
        `(retained ${mb(f.heapEnd - f.heapBaseline)}); ${(f.ms / 1000).toFixed(1)} s`,
    );
  }
  for (const p of problems) console.log(`FAIL: ${p}`);
  if (problems.length === 0)
    console.log('ok: window state holds one record per key, and the heap does not grow with events');
  console.log(JSON.stringify({ memcheck: runs, ok: problems.length === 0 }));
  process.exit(problems.length === 0 ? 0 : 1);
}
