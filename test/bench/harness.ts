/**
 * The side-by-side benchmark harness (DESIGN.md section 10). A benchmark is a set of cases, each
 * with contenders doing the same work. A contender is a function that prepares its work (not
 * timed: emitters, subscriptions, actors) and returns the timed run, which does the work and checks
 * its own output, so one that drops messages throws instead of winning. Per case, the contenders
 * run interleaved in one process, after a warm-up round, and the figure is the median of several
 * rounds. The harness prints a table for people and ends with one JSON line for machines:
 *
 *     {"bench":"bus","unit":"msg/s","results":{"exact":{"sluice":N,"eventemitter":N,...},...}}
 *
 * Speed is never asserted: a failed contender is reported (its figure is `null`) and makes the
 * process exit with code 1, a slow one is only slow.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

/** The timed part of a contender. It throws when its output is not what the work must produce. */
export type Run = () => Promise<void>;

/** A prepared contender: its timed run, and what to release afterwards (not timed). */
export interface Trial {
  run: Run;
  dispose?: () => void | Promise<void>;
}

/**
 * One contender: prepares the work for `messages` messages and returns the timed run (or a trial
 * with a disposal). Everything done before returning is setup and is not timed.
 */
export type Contender = (messages: number) => Run | Trial | Promise<Run | Trial>;

export interface BenchCase {
  /** Messages per timed run at full size; `--quick` and `--scale` shrink it. */
  messages: number;
  /**
   * Other counts for contenders too slow for `messages` to fit the time budget (rates are per
   * message, so they still compare); say so in the description.
   */
  messagesFor?: Readonly<Record<string, number>>;
  /** One line printed under the table: what a row measures. */
  description: string;
  contenders: Readonly<Record<string, Contender>>;
  /**
   * Each contender runs its warm-up and rounds in a process of its own, so none pays for the heap
   * another left behind: for contenders that keep millions of objects alive, or leave them as
   * garbage that a collection during the next contender's run would be charged to.
   */
  isolate?: boolean;
}

/** A ratio column of the table: `numerator / denominator` per case, e.g. sluice/eventemitter. */
export type Ratio = readonly [numerator: string, denominator: string];

/** A target from the issue, printed after the table (met or missed), never asserted. */
export interface Goal {
  case: string;
  contender: string;
  versus: string;
  /** `contender / versus` must be at least this. */
  atLeast: number;
}

export interface BenchDefinition {
  bench: string;
  unit: 'msg/s' | 'events/s';
  cases: Readonly<Record<string, BenchCase>>;
  /** Column order; contenders not listed come after, in the order the cases name them. */
  contenders?: readonly string[];
  ratios?: readonly Ratio[];
  goals?: readonly Goal[];
  /** Printed under the table, e.g. the workload's fixed parameters. */
  notes?: readonly string[];
  /**
   * Warm-up rounds when neither `--warmup` nor `BENCH_WARMUP` says: more than one for a peer that
   * warms up too (a broker on a JVM compiles its hot paths over the first rounds). @default 1
   */
  warmup?: number;
  /** Seconds a case may take when neither `--budget` nor `BENCH_BUDGET` says. @default 30 */
  budget?: number;
}

export interface BenchOptions {
  /** Timed rounds per case; the figure is their median. @default 5 (1 with `quick`) */
  rounds: number;
  /** Multiplies every case's message count. @default 1 (0.01 with `quick`) */
  scale: number;
  /** Untimed warm-up rounds, at `warmupScale` of the message count. @default 1 */
  warmup: number;
  /** @default 1 */
  warmupScale: number;
  /**
   * Seconds a case may take: once past it, no further round starts (at least one always runs) and
   * the table says how many rounds the median is of. @default 30
   */
  caseBudgetSeconds: number;
  /** Only these cases; all when empty. */
  only: readonly string[];
  /** Only these contenders (for profiling one of them); all when empty. */
  contenders: readonly string[];
  /** Prints every sample, per contender. */
  verbose: boolean;
  /** Every case as if `isolate`d: each contender in a process of its own. */
  isolate: boolean;
  /** Run by an isolated case's parent (`--child`): also prints each case's samples as a `SAMPLES` line. */
  child: boolean;
  /** Where the table goes. @default process.stdout */
  write: (line: string) => void;
}

/** Medians per case and contender; `null` when the contender failed. */
export type BenchResults = Record<string, Record<string, number | null>>;

export interface BenchReport {
  bench: string;
  unit: 'msg/s' | 'events/s';
  results: BenchResults;
  /** `case/contender: message` for each contender that failed. */
  failures: string[];
}

/** Identity, for typing a bench file's default export. */
export function defineBench(definition: BenchDefinition): BenchDefinition {
  return definition;
}

/**
 * Reads options from the command line and the environment. Flags win over variables:
 * `--quick` / `BENCH_QUICK=1` (smoke-run size), `--rounds=N` / `BENCH_ROUNDS`, `--scale=X` /
 * `BENCH_SCALE`, `--warmup=N` / `BENCH_WARMUP`, `--only=case,case` / `BENCH_ONLY`,
 * `--contenders=name,name` / `BENCH_CONTENDERS` (to profile one), `--budget=SECONDS` / `BENCH_BUDGET`
 * (per case), `--verbose` / `BENCH_VERBOSE`, `--isolate` / `BENCH_ISOLATE` (each contender in a
 * process of its own, as an `isolate`d case).
 */
export function parseBenchOptions(
  argv: readonly string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
  defaults: Pick<BenchDefinition, 'warmup' | 'budget'> = {},
): BenchOptions {
  const flags = new Map<string, string>();
  for (const arg of argv) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (m !== null) flags.set(m[1] as string, m[2] ?? 'true');
  }
  const get = (flag: string, variable: string): string | undefined => flags.get(flag) ?? env[variable];
  const quick = isTrue(get('quick', 'BENCH_QUICK'));
  const list = (value: string | undefined) =>
    (value ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
  return {
    rounds: positiveInt('rounds', get('rounds', 'BENCH_ROUNDS'), quick ? 1 : 5),
    scale: positiveNumber('scale', get('scale', 'BENCH_SCALE'), quick ? 0.01 : 1),
    warmup: nonNegativeInt('warmup', get('warmup', 'BENCH_WARMUP'), defaults.warmup ?? 1),
    warmupScale: 1,
    caseBudgetSeconds: positiveNumber('budget', get('budget', 'BENCH_BUDGET'), defaults.budget ?? 30),
    only: list(get('only', 'BENCH_ONLY')),
    contenders: list(get('contenders', 'BENCH_CONTENDERS')),
    verbose: isTrue(get('verbose', 'BENCH_VERBOSE')),
    isolate: isTrue(get('isolate', 'BENCH_ISOLATE')),
    child: flags.get('child') === 'true',
    write: (line) => process.stdout.write(`${line}\n`),
  };
}

/**
 * Runs every case: per case a warm-up, then `rounds` rounds in which each contender runs once,
 * starting from a different contender each round so none always runs first. Prints the table and
 * the JSON line, and returns the report.
 */
export async function runBench(definition: BenchDefinition, options: BenchOptions): Promise<BenchReport> {
  const { write } = options;
  const caseNames = Object.keys(definition.cases).filter((c) => options.only.length === 0 || options.only.includes(c));
  for (const c of options.only) {
    if (!(c in definition.cases)) {
      throw new Error(
        `unknown case '${c}' for bench '${definition.bench}': ${Object.keys(definition.cases).join(', ')}`,
      );
    }
  }
  const results: BenchResults = {};
  const spreads: Record<string, number> = {};
  const failures: string[] = [];
  const started = performance.now();
  write(
    `bench ${definition.bench}: ${options.rounds} round(s) after ${options.warmup} warm-up, median, ` +
      `scale ${options.scale}; Node ${process.version}, ${os.cpus().length} CPU(s) ${os.cpus()[0]?.model ?? ''}`.trim(),
  );
  for (const caseName of caseNames) {
    const benchCase = definition.cases[caseName] as BenchCase;
    const sized = (name: string, warmup: boolean) => {
      const full = benchCase.messagesFor?.[name] ?? benchCase.messages;
      return Math.max(1, Math.round(full * options.scale * (warmup ? options.warmupScale : 1)));
    };
    const messages = Math.max(1, Math.round(benchCase.messages * options.scale));
    const names = Object.keys(benchCase.contenders).filter(
      (n) => options.contenders.length === 0 || options.contenders.includes(n),
    );
    const others = names
      .filter((n) => benchCase.messagesFor?.[n] !== undefined)
      .map((n) => ` (${n}: ${sized(n, false)})`)
      .join('');
    const caseStarted = performance.now();
    const { samples, failed, rounds } =
      (benchCase.isolate === true || options.isolate) && !options.child
        ? await measureIsolated(definition.bench, caseName, names, options)
        : await measureHere(benchCase, names, options, sized, caseStarted);
    for (const [name, message] of failed) failures.push(`${caseName}/${name}: ${message}`);
    if (options.child) {
      write(
        `SAMPLES ${JSON.stringify({ samples: Object.fromEntries(samples), failed: Object.fromEntries(failed), rounds })}`,
      );
    }
    const row: Record<string, number | null> = {};
    let spread = 0;
    for (const name of names) {
      const s = samples.get(name) as number[];
      if (failed.has(name) || s.length === 0) {
        row[name] = null;
        continue;
      }
      const m = median(s);
      row[name] = Math.round(m);
      if (s.length > 1) spread = Math.max(spread, (Math.max(...s) - Math.min(...s)) / m);
    }
    if (options.verbose) {
      for (const name of names) {
        write(`    ${name}: ${(samples.get(name) as number[]).map((x) => formatRate(Math.round(x))).join(' ')}`);
      }
    }
    results[caseName] = row;
    spreads[caseName] = spread;
    write(
      `  ${caseName.padEnd(12)} ${String(messages).padStart(9)} messages${others}  ` +
        `${((performance.now() - caseStarted) / 1000).toFixed(1)} s` +
        (rounds < options.rounds
          ? `  (${rounds} of ${options.rounds} rounds: over the ${options.caseBudgetSeconds} s budget)`
          : ''),
    );
  }
  write('');
  for (const line of table(definition, results, spreads, caseNames)) write(line);
  write('');
  for (const caseName of caseNames) write(`${caseName}: ${(definition.cases[caseName] as BenchCase).description}`);
  for (const note of definition.notes ?? []) write(note);
  const goals = (definition.goals ?? []).filter((g) => caseNames.includes(g.case));
  if (goals.length > 0) {
    write('');
    for (const g of goals) {
      const ratio = ratioOf(results[g.case], g.contender, g.versus);
      const verdict = ratio === undefined ? 'n/a ' : ratio >= g.atLeast ? 'met ' : 'MISS';
      write(
        `goal ${verdict} ${g.case}: ${g.contender}/${g.versus} = ${ratio === undefined ? '-' : ratio.toFixed(2)} ` +
          `(target >= ${Number(g.atLeast.toFixed(2))})`,
      );
    }
  }
  for (const f of failures) write(`FAILED ${f}`);
  write(`total ${((performance.now() - started) / 1000).toFixed(1)} s`);
  const report: BenchReport = { bench: definition.bench, unit: definition.unit, results, failures };
  write(JSON.stringify({ bench: report.bench, unit: report.unit, results: report.results }));
  return report;
}

interface Measured {
  samples: Map<string, number[]>;
  /** Contender → why it failed. */
  failed: Map<string, string>;
  /** Timed rounds run (the budget may cut them short). */
  rounds: number;
}

/** The contenders of one case, interleaved in this process. */
async function measureHere(
  benchCase: BenchCase,
  names: readonly string[],
  options: BenchOptions,
  sized: (name: string, warmup: boolean) => number,
  caseStarted: number,
): Promise<Measured> {
  const samples = new Map<string, number[]>(names.map((n) => [n, []]));
  const failed = new Map<string, string>();
  let rounds = 0;
  for (let round = -options.warmup; round < options.rounds; round++) {
    if (round > 0 && performance.now() - caseStarted > options.caseBudgetSeconds * 1000) break;
    if (round >= 0) rounds++;
    for (let i = 0; i < names.length; i++) {
      const name = names[(i + Math.max(round, 0)) % names.length] as string;
      if (failed.has(name)) continue;
      const count = sized(name, round < 0);
      try {
        const seconds = await timeOnce(benchCase.contenders[name] as Contender, count);
        if (round >= 0) samples.get(name)?.push(count / seconds);
      } catch (error) {
        failed.set(name, error instanceof Error ? error.message : String(error));
      }
    }
  }
  return { samples, failed, rounds };
}

const runScript = fileURLToPath(new URL('./run.ts', import.meta.url));
const execFileAsync = promisify(execFile);

/**
 * The contenders of one case, each in a child process of its own (`run.ts NAME --child`), one
 * after the other: its warm-up and rounds, with the same options. The child prints its samples.
 */
async function measureIsolated(
  bench: string,
  caseName: string,
  names: readonly string[],
  options: BenchOptions,
): Promise<Measured> {
  const tsx = createRequire(import.meta.url).resolve('tsx/cli');
  const measured: Measured = { samples: new Map(), failed: new Map(), rounds: 0 };
  for (const name of names) {
    const args = [
      tsx,
      '--conditions=sluice-source',
      runScript,
      bench,
      `--only=${caseName}`,
      `--contenders=${name}`,
      `--rounds=${options.rounds}`,
      `--warmup=${options.warmup}`,
      `--scale=${options.scale}`,
      `--budget=${options.caseBudgetSeconds}`,
      '--child',
    ];
    let stdout: string;
    try {
      ({ stdout } = await execFileAsync(process.execPath, args, { maxBuffer: 16 * 1024 * 1024 }));
    } catch (error) {
      // A contender that failed its check exits with 1 and still printed its samples.
      stdout = (error as { stdout?: string }).stdout ?? '';
      if (!stdout.includes('SAMPLES ')) {
        measured.failed.set(name, `its process failed: ${error instanceof Error ? error.message : String(error)}`);
        continue;
      }
    }
    const line = stdout.split('\n').find((l) => l.startsWith('SAMPLES ')) as string;
    const child = JSON.parse(line.slice('SAMPLES '.length)) as {
      samples: Record<string, number[]>;
      failed: Record<string, string>;
      rounds: number;
    };
    measured.samples.set(name, child.samples[name] ?? []);
    const failure = child.failed[name];
    if (failure !== undefined) measured.failed.set(name, failure);
    measured.rounds = Math.max(measured.rounds, child.rounds);
  }
  return measured;
}

async function timeOnce(contender: Contender, messages: number): Promise<number> {
  const prepared = await contender(messages);
  const trial: Trial = typeof prepared === 'function' ? { run: prepared } : prepared;
  // Let what setup scheduled (timers, immediates, microtasks) settle before the clock starts.
  await new Promise((resolve) => setImmediate(resolve));
  // No forced GC here: a full collection shrinks the heap and flushes compiled code, which made
  // every contender slower and noisier; rotating the order spreads one's garbage over all.
  let elapsed: number;
  try {
    const t0 = performance.now();
    await trial.run();
    elapsed = performance.now() - t0;
  } finally {
    await trial.dispose?.();
  }
  return Math.max(elapsed, 1e-3) / 1000;
}

function table(
  definition: BenchDefinition,
  results: BenchResults,
  spreads: Record<string, number>,
  caseNames: readonly string[],
): string[] {
  const present = new Set(caseNames.flatMap((c) => Object.keys(results[c] ?? {})));
  const columns = (definition.contenders ?? []).filter((name) => present.has(name));
  for (const name of present) if (!columns.includes(name)) columns.push(name);
  const ratios = (definition.ratios ?? []).filter(([a, b]) => columns.includes(a) && columns.includes(b));
  const header = ['case', ...columns, ...ratios.map(([a, b]) => `${a}/${b}`), 'spread'];
  const rows = caseNames.map((c) => {
    const r = results[c] ?? {};
    return [
      c,
      ...columns.map((name) => (name in r ? formatRate(r[name] ?? null) : '-')),
      ...ratios.map(([a, b]) => {
        const x = ratioOf(r, a, b);
        return x === undefined ? '-' : `${x.toFixed(2)}x`;
      }),
      `${Math.round((spreads[c] ?? 0) * 100)}%`,
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] as string).length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, i) => (i === 0 ? cell.padEnd(widths[i] as number) : cell.padStart(widths[i] as number)))
      .join('  ');
  return [
    line(header),
    ...rows.map(line),
    `(${definition.unit}, median; ratios > 1 mean the left one is faster; spread: largest (max-min)/median of a row)`,
  ];
}

function ratioOf(row: Record<string, number | null> | undefined, a: string, b: string): number | undefined {
  const x = row?.[a];
  const y = row?.[b];
  if (x === undefined || y === undefined || x === null || y === null || y === 0) return undefined;
  return x / y;
}

function formatRate(rate: number | null): string {
  if (rate === null) return 'FAILED';
  if (rate >= 1e6) return `${(rate / 1e6).toFixed(2)}M`;
  if (rate >= 1e3) return `${(rate / 1e3).toFixed(1)}k`;
  return String(rate);
}

function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

function isTrue(value: string | undefined): boolean {
  return value !== undefined && value !== '' && value !== '0' && value !== 'false';
}

function positiveInt(name: string, value: string | undefined, fallback: number): number {
  const n = value === undefined ? fallback : Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new Error(`invalid bench option '${name}': must be an integer >= 1, got ${value}`);
  return n;
}

function nonNegativeInt(name: string, value: string | undefined, fallback: number): number {
  const n = value === undefined ? fallback : Number(value);
  if (!Number.isInteger(n) || n < 0)
    throw new Error(`invalid bench option '${name}': must be an integer >= 0, got ${value}`);
  return n;
}

function positiveNumber(name: string, value: string | undefined, fallback: number): number {
  const n = value === undefined ? fallback : Number(value);
  if (!Number.isFinite(n) || n <= 0)
    throw new Error(`invalid bench option '${name}': must be a number > 0, got ${value}`);
  return n;
}

// ---- helpers for contenders ----

/**
 * Resolves once `done()` holds; throws when no progress (as reported by `progress()`) was made for
 * `stallMs`, so a contender that lost messages fails with its count instead of hanging the run.
 */
export async function until(done: () => boolean, progress: () => number, what: string, stallMs = 2000): Promise<void> {
  let last = progress();
  let lastChange = performance.now();
  let moved = true;
  while (!done()) {
    // Checked again on the next turn while work is moving here; once a turn made no progress, the
    // work is elsewhere (a broker's answers), and a 1 ms timer lets the process sleep: polling on
    // every turn spun a core that the broker on this machine needed, and charged that to Sluice.
    await new Promise((resolve) => (moved ? setImmediate(resolve) : setTimeout(resolve, 1)));
    const now = progress();
    moved = now !== last;
    if (moved) {
      last = now;
      lastChange = performance.now();
    } else if (performance.now() - lastChange > stallMs) {
      throw new Error(`${what}: stalled at ${now}`);
    }
  }
}

/**
 * What a raw publisher with acknowledgements does beside a sink's batched write: batches of
 * `batch`, each acknowledged whole before the next, with at most `window` publishes awaiting their
 * acknowledgement within a batch. `publish(i)` sends message i and resolves on its acknowledgement.
 */
export async function windowedBatches(
  n: number,
  batch: number,
  window: number,
  publish: (i: number) => Promise<unknown>,
): Promise<void> {
  for (let start = 0; start < n; start += batch) {
    const end = Math.min(n, start + batch);
    let next = start;
    const loop = async () => {
      while (next < end) await publish(next++);
    };
    await Promise.all(Array.from({ length: window }, loop));
  }
}

/** Throws unless `actual === expected`, naming what was counted. */
export function expectCount(what: string, actual: number, expected: number): void {
  if (actual !== expected) throw new Error(`${what}: got ${actual}, expected ${expected}`);
}

/** Seeded, so workloads are the same in every run. */
export { seededRandom } from 'sluice/testing';

/** A fresh directory for a store (`<dir>/db`), and how to remove it after the run. */
export function tempPath(bench: string): { path: string; remove: () => void } {
  const dir = mkdtempSync(join(os.tmpdir(), `sluice-bench-${bench}-`));
  return { path: join(dir, 'db'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}
