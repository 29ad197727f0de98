import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect, test } from 'vitest';
import { natsServerMissing } from '../services/natsServer.ts';
import { rabbitMissing } from '../services/rabbitmq.ts';
import { redisMissing } from '../services/redis.ts';
import { defineBench, expectCount, parseBenchOptions, runBench } from './harness.ts';

// Smoke runs only: speed is never asserted, the benchmarks' own figures are for people to read.
const root = fileURLToPath(new URL('../..', import.meta.url));
const tsx = createRequire(import.meta.url).resolve('tsx/cli');
const run = promisify(execFile);

const CASES = {
  exact: ['sluice', 'eventemitter', 'eventemitter2', 'rxjs', 'hand-loop'],
  'exact-await': ['sluice', 'eventemitter2', 'hand-loop'],
  fanout: ['sluice', 'eventemitter', 'eventemitter2', 'rxjs', 'hand-loop'],
  wildcard: ['sluice', 'eventemitter2', 'rxjs', 'hand-loop'],
  queue: ['sluice', 'eventemitter', 'eventemitter2', 'rxjs', 'hand-loop'],
  actor: ['sluice', 'rxjs', 'nact', 'sluice-bus', 'hand-loop'],
} as const;

test('the bus bench runs every case and contender and ends with its JSON line', { timeout: 120_000 }, async () => {
  const { stdout } = await run(
    process.execPath,
    [tsx, '--conditions=sluice-source', 'test/bench/run.ts', 'bus', '--quick'],
    { cwd: root, maxBuffer: 16 * 1024 * 1024 },
  );
  const lines = stdout.trimEnd().split('\n');
  const last = JSON.parse(lines.at(-1) as string) as {
    bench: string;
    unit: string;
    results: Record<string, Record<string, unknown>>;
  };
  expect(last).toMatchObject({ bench: 'bus', unit: 'msg/s' });
  expect(Object.keys(last.results).sort()).toEqual(Object.keys(CASES).sort());
  for (const [name, contenders] of Object.entries(CASES)) {
    const row = last.results[name] ?? {};
    expect(Object.keys(row).sort(), name).toEqual([...contenders].sort());
    for (const contender of contenders) {
      const figure = row[contender];
      expect(typeof figure, `${name}/${contender}`).toBe('number');
      expect(figure as number, `${name}/${contender}`).toBeGreaterThan(0);
    }
  }
  // The table for people comes before it, one row per case.
  for (const name of Object.keys(CASES)) expect(stdout).toMatch(new RegExp(`^${name} `, 'm'));
});

test('the durable bench runs publish, consume and the at-least-once and exactly-once pipelines and ends with its JSON line', {
  timeout: 120_000,
}, async () => {
  const { stdout } = await run(
    process.execPath,
    [tsx, '--conditions=sluice-source', 'test/bench/run.ts', 'durable', '--quick'],
    { cwd: root, maxBuffer: 16 * 1024 * 1024 },
  );
  const last = JSON.parse(stdout.trimEnd().split('\n').at(-1) as string) as {
    bench: string;
    results: Record<string, Record<string, number>>;
  };
  expect(last.bench).toBe('durable');
  const expected = {
    publish: ['lmdb', 'sluice'],
    'publish-one': ['lmdb', 'sluice'],
    consume: ['lmdb', 'sluice'],
    pipeline: ['at-least-once', 'at-most-once', 'exactly-once'],
  };
  expect(Object.keys(last.results).sort()).toEqual(Object.keys(expected).sort());
  for (const [name, contenders] of Object.entries(expected)) {
    expect(Object.keys(last.results[name] ?? {}).sort(), name).toEqual(contenders);
    for (const c of contenders) expect(last.results[name]?.[c], `${name}/${c}`).toBeGreaterThan(0);
  }
});

/** Runs `bench` with --quick and checks its JSON line: these cases, each with a raw and a sluice figure. */
async function expectSluiceAndRaw(bench: string, cases: readonly string[]): Promise<void> {
  const { stdout } = await run(
    process.execPath,
    [tsx, '--conditions=sluice-source', 'test/bench/run.ts', bench, '--quick'],
    { cwd: root, maxBuffer: 16 * 1024 * 1024 },
  );
  const last = JSON.parse(stdout.trimEnd().split('\n').at(-1) as string) as {
    bench: string;
    results: Record<string, Record<string, number>>;
  };
  expect(last.bench).toBe(bench);
  expect(Object.keys(last.results).sort()).toEqual([...cases].sort());
  for (const c of cases) {
    expect(Object.keys(last.results[c] ?? {}).sort(), c).toEqual(['raw', 'sluice']);
    for (const who of ['raw', 'sluice']) expect(last.results[c]?.[who], `${c}/${who}`).toBeGreaterThan(0);
  }
}

test.skipIf(natsServerMissing('the nats bench test') !== undefined)(
  'the nats bench runs publish, subscribe, jetstream-publish and jetstream-consume, sluice and raw, and ends with its JSON line',
  { timeout: 120_000 },
  () => expectSluiceAndRaw('nats', ['jetstream-consume', 'jetstream-publish', 'publish', 'subscribe']),
);

const brokersMissing =
  (await redisMissing('the brokers bench test')) ?? (await rabbitMissing('the brokers bench test'));
test.skipIf(brokersMissing !== undefined)(
  'the brokers bench runs publish and consume of Redis Streams, RabbitMQ and MQTT, sluice and raw, and ends with its JSON line',
  { timeout: 120_000 },
  () =>
    expectSluiceAndRaw('brokers', [
      'mqtt-consume',
      'mqtt-publish',
      'rabbitmq-consume',
      'rabbitmq-publish',
      'redis-consume',
      'redis-publish',
    ]),
);

test('an unknown benchmark name is refused with the list of benchmarks', async () => {
  const error = await run(process.execPath, [tsx, '--conditions=sluice-source', 'test/bench/run.ts', 'nope'], {
    cwd: root,
  }).catch((e: unknown) => e as { code: number; stderr: string });
  expect(error).toMatchObject({ code: 2 });
  expect((error as { stderr: string }).stderr).toContain("unknown benchmark 'nope'");
  expect((error as { stderr: string }).stderr).toContain('bus');
});

test('a contender that drops work fails instead of winning, and its figure is null', async () => {
  const lines: string[] = [];
  const definition = defineBench({
    bench: 'toy',
    unit: 'msg/s',
    cases: {
      one: {
        messages: 100,
        description: 'counts to n',
        contenders: {
          honest: (n) => async () => {
            let count = 0;
            for (let i = 0; i < n; i++) count++;
            expectCount('honest', count, n);
          },
          lossy: (n) => async () => {
            let count = 0;
            for (let i = 0; i < n; i += 2) count++;
            expectCount('lossy', count, n);
          },
        },
      },
    },
  });
  const report = await runBench(definition, {
    rounds: 3,
    scale: 1,
    warmup: 1,
    warmupScale: 1,
    caseBudgetSeconds: 30,
    only: [],
    contenders: [],
    verbose: false,
    isolate: false,
    child: false,
    write: (line) => lines.push(line),
  });
  expect(report.results.one?.honest).toBeGreaterThan(0);
  expect(report.results.one?.lossy).toBeNull();
  expect(report.failures).toEqual(['one/lossy: lossy: got 50, expected 100']);
  expect(JSON.parse(lines.at(-1) as string)).toEqual({ bench: 'toy', unit: 'msg/s', results: report.results });
  expect(lines.some((l) => /^one\s.*FAILED/.test(l))).toBe(true);
});

test('bench options come from flags first, then the environment', () => {
  expect(parseBenchOptions([], {})).toMatchObject({ rounds: 5, scale: 1, warmup: 1, only: [] });
  expect(parseBenchOptions(['--quick'], {})).toMatchObject({ rounds: 1, scale: 0.01 });
  // A bench's own warm-up default, which the flag and the variable still override.
  expect(parseBenchOptions([], {}, { warmup: 3 })).toMatchObject({ warmup: 3 });
  expect(parseBenchOptions(['--warmup=0'], {}, { warmup: 3 })).toMatchObject({ warmup: 0 });
  expect(parseBenchOptions([], { BENCH_WARMUP: '2' }, { warmup: 3 })).toMatchObject({ warmup: 2 });
  expect(parseBenchOptions([], {}, { budget: 60 })).toMatchObject({ caseBudgetSeconds: 60 });
  expect(parseBenchOptions(['--budget=10'], {}, { budget: 60 })).toMatchObject({ caseBudgetSeconds: 10 });
  expect(
    parseBenchOptions(['--rounds=3', '--only=exact,queue'], { BENCH_ROUNDS: '7', BENCH_SCALE: '0.5' }),
  ).toMatchObject({ rounds: 3, scale: 0.5, only: ['exact', 'queue'] });
  expect(() => parseBenchOptions(['--rounds=0'], {})).toThrow("invalid bench option 'rounds'");
  expect(parseBenchOptions(['--isolate'], {})).toMatchObject({ isolate: true, child: false });
  expect(parseBenchOptions([], { BENCH_ISOLATE: '1' })).toMatchObject({ isolate: true });
});

test('an isolated case runs each contender in a process of its own and reports its samples and failures', {
  timeout: 120_000,
}, async () => {
  // The bus bench's exact case, isolated: each contender's figure comes from its own child process.
  const { stdout } = await run(
    process.execPath,
    [
      tsx,
      '--conditions=sluice-source',
      'test/bench/run.ts',
      'bus',
      '--quick',
      '--only=exact',
      '--isolate',
      '--verbose',
    ],
    { cwd: root, maxBuffer: 16 * 1024 * 1024 },
  );
  const last = JSON.parse(stdout.trimEnd().split('\n').at(-1) as string) as {
    results: Record<string, Record<string, number>>;
  };
  expect(Object.keys(last.results)).toEqual(['exact']);
  expect(Object.keys(last.results.exact ?? {}).sort()).toEqual([...CASES.exact].sort());
  for (const figure of Object.values(last.results.exact ?? {})) expect(figure).toBeGreaterThan(0);
  // The parent prints no SAMPLES line of its own (only children do, and their output is read, not shown).
  expect(stdout).not.toContain('SAMPLES ');
});
