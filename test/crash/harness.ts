/**
 * The crash harness: feeds a fixed, seeded input into a durable subject, then runs job.ts in a
 * child process again and again, killing it with SIGKILL at seeded random moments and letting it
 * kill itself at fault points, until a run completes. Then it compares what the sinks hold with
 * the results computed from the input (input.ts): none missing, none twice, aggregates equal.
 *
 * Used by crash.test.ts (the short form, in `npm test`) and run.ts (`npm run crash -- --kills 50`).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRuntime, IDEMPOTENCY_KEY_HEADER, LmdbStore } from 'sluice';
import { seededRandom } from 'sluice/testing';
import { createTestSchema, type TestSchema } from '../services/postgres.ts';
import { type CrashEvent, events, expectedWindows, transform, type WindowTotals } from './input.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const jobs = {
  'at-least-once': fileURLToPath(new URL('job.ts', import.meta.url)),
  checkpointed: fileURLToPath(new URL('checkpointJob.ts', import.meta.url)),
};
const feeder = jobs['at-least-once'];

/**
 * - `at-least-once` (job.ts): the actors acknowledge their inputs once the sinks wrote their
 *   results; windows hold their inputs; the sinks' idempotency keys make replays harmless.
 * - `checkpointed` (checkpointJob.ts): the actors checkpoint their state (window accumulators),
 *   positions and outputs into streams in one transaction (exactly-once in the store, no
 *   de-duplication); sinks read those streams. The streams are checked too: each result once.
 */
export type CrashVariant = keyof typeof jobs;

export interface CrashOptions {
  /** Which job. @default 'at-least-once' */
  variant?: CrashVariant;
  /** Events in the input. @default 200_000 */
  events?: number;
  /** Random kills (besides the fault points). @default 5 */
  kills?: number;
  /** Seeds the input, the kill times and the fault occurrences. @default 1 */
  seed?: number;
  /**
   * A random kill comes 50 ms to this long after the job reports running: the more kills, the
   * sooner, so that they land before the job completes. @default max(200, 4000 / kills)
   */
  maxKillDelayMs?: number;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** A fault point, and which of its occurrences kills the job (drawn up to `upTo`). */
type Fault = { readonly name: string; readonly upTo: number; readonly window: boolean };
const SINK_FAULTS: readonly Fault[] = [
  { name: 'after-write:agg-pg', upTo: 2, window: true },
  { name: 'mid-batch:agg-file', upTo: 2, window: true },
  { name: 'window-fired', upTo: 20, window: true },
  { name: 'after-write:events-file', upTo: 5, window: false },
  { name: 'mid-batch:events-pg', upTo: 5, window: false },
];
export const FAULTS: Readonly<Record<CrashVariant, readonly Fault[]>> = {
  'at-least-once': SINK_FAULTS,
  checkpointed: [
    ...SINK_FAULTS,
    // Between a state commit and its outputs reaching consumers, and inside a checkpoint's batch.
    { name: 'after-commit:windows', upTo: 3, window: true },
    { name: 'mid-batch:checkpoint', upTo: 3, window: true },
    { name: 'after-commit:transform', upTo: 5, window: false },
  ],
};

export interface CrashRun {
  readonly kind: 'random' | 'fault' | 'final';
  readonly fault?: string;
  readonly at?: number;
  /** How it ended: killed by the harness, killed itself at its fault point, or completed. */
  readonly ended: 'killed' | 'fault' | 'done';
  readonly ms: number;
}

export interface CrashReport {
  readonly seed: number;
  readonly events: number;
  readonly runs: readonly CrashRun[];
  /** Random kills that landed before the job completed. */
  readonly kills: number;
  /** Fault points the job reached and died at. */
  readonly faults: readonly string[];
  /** What the sinks hold that they should not, or lack: empty when the run was correct. */
  readonly problems: readonly string[];
  readonly ms: number;
}

interface Child {
  readonly ended: 'killed' | 'fault' | 'done';
  readonly lines: readonly string[];
}

/** Runs a job once; `killAfterMs`: SIGKILL that long after it reports running. */
export function runJob(
  job: string,
  env: Record<string, string>,
  killAfterMs: number | undefined,
  timeoutMs: number,
): Promise<Child> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--conditions=sluice-source', '--import', 'tsx', job], {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: string[] = [];
    let out = '';
    let err = '';
    let killedByUs = false;
    let killer: NodeJS.Timeout | undefined;
    const guard = setTimeout(() => {
      killedByUs = true;
      child.kill('SIGKILL');
      reject(new Error(`job ${JSON.stringify(env)} did not end within ${timeoutMs} ms: ${err}`));
    }, timeoutMs);
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString();
    });
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      for (let nl = out.indexOf('\n'); nl !== -1; nl = out.indexOf('\n')) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        lines.push(line);
        if (line === 'running' && killAfterMs !== undefined) {
          killer = setTimeout(() => {
            killedByUs = true;
            child.kill('SIGKILL');
          }, killAfterMs);
        }
      }
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(guard);
      if (killer !== undefined) clearTimeout(killer);
      const fault = lines.some((l) => l.startsWith('fault '));
      if (signal === 'SIGKILL' && fault) resolve({ ended: 'fault', lines });
      else if (signal === 'SIGKILL' && killedByUs) resolve({ ended: 'killed', lines });
      else if (code === 0 && (lines.includes('done') || lines.includes('fed'))) resolve({ ended: 'done', lines });
      else reject(new Error(`job ${JSON.stringify(env)} ended with ${code ?? signal}: ${err.slice(-4000)}`));
    });
  });
}

/** Feeds, kills and restarts until the job completes, then checks the sinks. */
/** A step of a crash plan: a kill at a random moment, or a fault point (the `at`-th time it is reached). */
export type CrashStep = { kind: 'random' | 'fault'; fault?: string; at?: number; delay?: number };

/**
 * Runs a round's steps, each a run of `job` that the step kills or faults, and records each run.
 * Steps after the job completed are carried into another round (so every kill and fault happens);
 * returns whether the job completed.
 */
export async function runSteps(
  job: string,
  base: Record<string, string>,
  plan: readonly CrashStep[],
  timeoutMs: number,
  runs: CrashRun[],
  carried: CrashStep[],
  log: (line: string) => void,
): Promise<boolean> {
  let done = false;
  for (const step of plan) {
    if (done) {
      carried.push(step);
      continue;
    }
    const t0 = Date.now();
    const env: Record<string, string> = { ...base, CRASH_MODE: 'run' };
    if (step.fault !== undefined) {
      env.CRASH_FAULT = step.fault;
      env.CRASH_FAULT_AT = String(step.at);
    }
    const child = await runJob(job, env, step.delay, timeoutMs);
    const run: CrashRun = { kind: step.kind, ended: child.ended, ms: Date.now() - t0 };
    if (step.fault !== undefined) Object.assign(run, { fault: step.fault, at: step.at });
    runs.push(run);
    log(
      `${step.kind} ${step.fault ?? `after ${step.delay} ms`}${step.at === undefined ? '' : ` #${step.at}`}: ${child.ended} (${run.ms} ms)`,
    );
    if (child.ended === 'done') {
      // The job completed before this step's kill or fault: it is tried again next round.
      done = true;
      carried.push(step);
    }
  }
  return done;
}

export async function runCrash(options: CrashOptions = {}): Promise<CrashReport> {
  const n = options.events ?? 200_000;
  const seed = options.seed ?? 1;
  const variant = options.variant ?? 'at-least-once';
  const checkpointed = variant === 'checkpointed';
  const kills = options.kills ?? 5;
  const maxDelay = options.maxKillDelayMs ?? Math.max(200, Math.floor(4_000 / Math.max(1, kills)));
  const log = options.log ?? (() => undefined);
  const random = seededRandom(seed ^ 0x5eed);
  const started = Date.now();

  // The plan: every fault point once and the random kills, in a seeded order. The window path
  // gets through its input in a few seconds and the per-event path (a row and a line per event)
  // takes longer, so the window fault points come first, while windows still fire.
  const faults = FAULTS[variant];
  const faultStep = (f: Fault): CrashStep => ({
    kind: 'fault',
    fault: f.name,
    at: 1 + Math.floor(random() * f.upTo),
  });
  const shuffle = (steps: CrashStep[]): CrashStep[] => {
    for (let i = steps.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [steps[i], steps[j]] = [steps[j] as CrashStep, steps[i] as CrashStep];
    }
    return steps;
  };
  let plan: CrashStep[] = [
    ...shuffle(faults.filter((f) => f.window).map(faultStep)),
    ...shuffle([
      ...faults.filter((f) => !f.window).map(faultStep),
      ...Array.from(
        { length: kills },
        (): CrashStep => ({ kind: 'random', delay: 50 + Math.floor(random() * maxDelay) }),
      ),
    ]),
  ];

  // A step lands only while the job has work left: on a fast machine the job may complete before a
  // late step's kill or fault. Such steps are carried into another round, on the same input fed
  // into a fresh store and schema, and every round is checked; a few rounds at most.
  const runs: CrashRun[] = [];
  const problems: string[] = [];
  for (let round = 1; plan.length > 0 && round <= 4; round++) {
    const carried: CrashStep[] = [];
    const dir = mkdtempSync(join(tmpdir(), 'sluice-crash-'));
    let schema: TestSchema | undefined;
    try {
      schema = await createTestSchema();
      const base = { CRASH_DIR: dir, CRASH_SCHEMA: schema.name, CRASH_SEED: String(seed), CRASH_EVENTS: String(n) };
      await runJob(
        feeder,
        { ...base, CRASH_MODE: 'feed', CRASH_SENTINEL: checkpointed ? '1' : '0' },
        undefined,
        120_000,
      );
      log(`round ${round}: fed ${n} events (seed ${seed}), ${variant} job`);

      const done = await runSteps(jobs[variant], base, plan, 180_000, runs, carried, log);
      if (!done) {
        const t0 = Date.now();
        const child = await runJob(jobs[variant], { ...base, CRASH_MODE: 'run' }, undefined, 300_000);
        runs.push({ kind: 'final', ended: child.ended, ms: Date.now() - t0 });
        log(`final: ${child.ended} (${Date.now() - t0} ms)`);
      }
      for (const problem of await check(schema, dir, seed, n, checkpointed))
        problems.push(`round ${round}: ${problem}`);
    } finally {
      await schema?.drop();
      rmSync(dir, { recursive: true, force: true });
    }
    plan = carried;
  }
  return {
    seed,
    events: n,
    runs,
    kills: runs.filter((r) => r.kind === 'random' && r.ended === 'killed').length,
    faults: runs.filter((r) => r.ended === 'fault').map((r) => r.fault as string),
    problems,
    ms: Date.now() - started,
  };
}

/** Collects problems, at most a few of each kind, with the count of the rest. */
export class Problems {
  readonly #byKind = new Map<string, string[]>();
  add(kind: string, detail: string): void {
    let list = this.#byKind.get(kind);
    if (list === undefined) {
      list = [];
      this.#byKind.set(kind, list);
    }
    list.push(detail);
  }
  list(): string[] {
    return [...this.#byKind].map(
      ([kind, details]) =>
        `${kind}: ${details.length} (${details.slice(0, 5).join('; ')}${details.length > 5 ? '; ...' : ''})`,
    );
  }
}

export function sameTotals(got: unknown, want: WindowTotals): boolean {
  const g = got as Partial<WindowTotals> | null;
  return (
    g !== null &&
    typeof g === 'object' &&
    g.key === want.key &&
    g.start === want.start &&
    g.end === want.end &&
    g.count === want.count &&
    g.sum === want.sum
  );
}

/** Compares the sinks with what the input gives. */
async function check(
  schema: TestSchema,
  dir: string,
  seed: number,
  n: number,
  checkpointed: boolean,
): Promise<string[]> {
  const problems = new Problems();
  const windows = expectedWindows(seed, n);
  const inputs: CrashEvent[] = [...events(seed, n)];
  const eventKey = (id: number) => `EVENTS/${id + 1}/transform/0`;
  const eventIds = new Map<string, number>(inputs.map((e) => [eventKey(e.id), e.id]));
  const sameEvent = (got: unknown, id: number) => {
    const want = transform(inputs[id] as CrashEvent);
    const g = got as Partial<typeof want> | null;
    return g !== null && typeof g === 'object' && g.id === want.id && g.key === want.key && g.doubled === want.doubled;
  };

  // PostgreSQL: one row per key (the primary key makes a second impossible, so count and match
  // every key), each with the expected values.
  const agg = await schema.pool.query<{ key: string; value: unknown }>(`SELECT key, value FROM ${schema.table('agg')}`);
  const seenWindows = new Set<string>();
  for (const row of agg.rows) {
    const want = windows.get(row.key);
    if (want === undefined) problems.add('pg agg: unexpected key', row.key);
    else if (!sameTotals(row.value, want))
      problems.add('pg agg: wrong totals', `${row.key} ${JSON.stringify(row.value)} != ${JSON.stringify(want)}`);
    seenWindows.add(row.key);
  }
  for (const key of windows.keys()) if (!seenWindows.has(key)) problems.add('pg agg: missing', key);
  const rows = await schema.pool.query<{ key: string; value: unknown }>(
    `SELECT key, value FROM ${schema.table('events')}`,
  );
  const seenEvents = new Set<string>();
  for (const row of rows.rows) {
    const id = eventIds.get(row.key);
    if (id === undefined) problems.add('pg events: unexpected key', row.key);
    else if (!sameEvent(row.value, id))
      problems.add('pg events: wrong value', `${row.key} ${JSON.stringify(row.value)}`);
    seenEvents.add(row.key);
  }
  for (const key of eventIds.keys()) if (!seenEvents.has(key)) problems.add('pg events: missing', key);

  // Files: no torn line, and each key on exactly one line (tumbling results have revision 0 only,
  // events none: a replay writes no second line), with the expected value.
  const file = (
    name: string,
    expected: (key: string, value: unknown) => string | undefined,
    keys: Iterable<string>,
  ) => {
    const text = readFileSync(join(dir, name), 'utf8');
    if (text.length > 0 && !text.endsWith('\n')) problems.add(`${name}: torn last line`, text.slice(-80));
    const seen = new Map<string, number>();
    for (const [i, line] of text.split('\n').entries()) {
      if (line.length === 0) continue;
      let record: { key: string; value: unknown };
      try {
        record = JSON.parse(line) as { key: string; value: unknown };
      } catch {
        problems.add(`${name}: damaged line`, `line ${i + 1}: ${line.slice(0, 80)}`);
        continue;
      }
      seen.set(record.key, (seen.get(record.key) ?? 0) + 1);
      const wrong = expected(record.key, record.value);
      if (wrong !== undefined) problems.add(`${name}: ${wrong}`, `${record.key} ${JSON.stringify(record.value)}`);
    }
    for (const [key, count] of seen) if (count > 1) problems.add(`${name}: key twice`, `${key} x${count}`);
    for (const key of keys) if (!seen.has(key)) problems.add(`${name}: missing`, key);
  };
  file(
    'agg.jsonl',
    (key, value) => {
      const want = windows.get(key);
      if (want === undefined) return 'unexpected key';
      return sameTotals(value, want) ? undefined : 'wrong totals';
    },
    windows.keys(),
  );
  file(
    'events.jsonl',
    (key, value) => {
      const id = eventIds.get(key);
      if (id === undefined) return 'unexpected key';
      return sameEvent(value, id) ? undefined : 'wrong value';
    },
    eventIds.keys(),
  );
  if (checkpointed) await checkStreams(problems, dir, windows, eventIds, sameEvent);
  return problems.list();
}

/**
 * The checkpointed job's output streams, exactly-once with no de-duplication: XFORM holds each
 * event's transformation once, AGG each window's totals once, and nothing else.
 */
async function checkStreams(
  problems: Problems,
  dir: string,
  windows: Map<string, WindowTotals>,
  eventIds: Map<string, number>,
  sameEvent: (got: unknown, id: number) => boolean,
): Promise<void> {
  const store = new LmdbStore({ path: join(dir, 'store') });
  const runtime = createRuntime({
    store,
    streams: [
      { name: 'AGG', subjects: ['agg.>'] },
      { name: 'XFORM', subjects: ['xform.>'] },
    ],
  });
  try {
    const read = (name: string, expected: Map<string, unknown>, wrong: (key: string, data: unknown) => boolean) => {
      const stream = runtime.stream(name);
      const info = stream.info();
      if (info.messages !== expected.size)
        problems.add(`stream ${name}: messages`, `${info.messages} stored, ${expected.size} expected`);
      const seen = new Map<string, number>();
      for (let seq = info.first; seq <= info.last; seq++) {
        const m = stream.get(seq);
        const key =
          m?.headers[IDEMPOTENCY_KEY_HEADER] ?? (m?.data as { idempotencyKey?: string } | undefined)?.idempotencyKey;
        if (m === undefined || key === undefined) {
          problems.add(`stream ${name}: no key`, `seq ${seq}`);
          continue;
        }
        seen.set(key, (seen.get(key) ?? 0) + 1);
        if (!expected.has(key)) problems.add(`stream ${name}: unexpected key`, key);
        else if (wrong(key, m.data)) problems.add(`stream ${name}: wrong value`, `${key} ${JSON.stringify(m.data)}`);
      }
      for (const [key, count] of seen) if (count > 1) problems.add(`stream ${name}: key twice`, `${key} x${count}`);
      for (const key of expected.keys()) if (!seen.has(key)) problems.add(`stream ${name}: missing`, key);
    };
    read('XFORM', eventIds, (key, data) => !sameEvent(data, eventIds.get(key) as number));
    read('AGG', windows, (key, data) => {
      const r = data as { key?: string; start?: number; end?: number; value?: { count?: number; sum?: number } };
      return !sameTotals({ key: r.key, start: r.start, end: r.end, ...r.value }, windows.get(key) as WindowTotals);
    });
  } finally {
    await runtime.stop();
    await store.close();
  }
}
