import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, test } from 'vitest';
import { main as orderFlow } from '../../examples/order-flow/main.ts';
import { main as tour } from '../../examples/tour/main.ts';

const run = promisify(execFile);

describe('examples', () => {
  test('order flow - valid orders are priced and fulfilled by all three workers, bad ones dead-lettered', async () => {
    const lines: string[] = [];
    const result = await orderFlow({ count: 30, print: (l) => lines.push(l) });
    // Every fifth order is broken: 6 of 30.
    expect(result.deadLetters).toHaveLength(6);
    expect(result.fulfilled).toHaveLength(24);
    expect(new Set(result.fulfilled.map((f) => f.orderId)).size).toBe(24);
    expect(Object.keys(result.byWorker).sort()).toEqual(['w1', 'w2', 'w3']);
    for (const n of Object.values(result.byWorker)) expect(n).toBe(8);
    const reasons = result.deadLetters.map((d) => d.reason).join('\n');
    expect(reasons).toContain("unknown sku 'caviar'");
    expect(reasons).toContain("invalid data on 'orders.new'");
    expect(result.drained).toBe(true);
    // Totals come from the pricing service: quantities times list prices.
    const first = result.fulfilled.find((f) => f.orderId === 'o-001');
    expect(first?.total).toBe(Math.round((0.5 * 0 + 2.25 * 2 + 7.8 * 2) * 100) / 100);
  });

  test('tour - each step prints what the README says it does', async () => {
    const lines = await tour(() => {});
    expect(lines).toEqual([
      'sensors.kitchen.temperature: 21.5',
      'worker a got job-1',
      'worker b got job-2',
      'double of 21 is 42',
      'too hot in attic: 34',
      "dead letter: invalid data on 'readings': celsius: Invalid input: expected number, received undefined",
      '/home [0, 60000): 4 views',
      'test kit: pipeline [1], actor [1]',
      'request with no subscriber: NoRespondersError',
      '/home [60000, 120000): 1 views',
      'stopped cleanly',
    ]);
  });

  test('npm start - runs the clickstream job on a durable subject through the package name, crashes it, resumes it and exits by itself', async () => {
    const { stdout } = await run('npm', ['start', '--silent'], { timeout: 60_000 });
    expect(stdout).toMatch(
      /^published to stream CLICKS in \.data\/clickstream\/store: sequences 1-(\d+), synced to disk$/m,
    );
    expect(stdout).toMatch(/^12:00-12:01 +page views +\/\S* +\d+$/m);
    expect(stdout).toMatch(/^run 1 ended by SIGKILL/m);
    // The restart finds page-views past the middle of the stream, with clicks left to read.
    const resumed = /^ {2}page-views +(\d+) +(\d+)$/m.exec(stdout.slice(stdout.indexOf('restart on the same store')));
    const last = Number(/sequences 1-(\d+)/.exec(stdout)?.[1]);
    expect(Number(resumed?.[1])).toBeGreaterThan(last / 2);
    expect(Number(resumed?.[2])).toBeGreaterThan(0);
    expect(stdout).toMatch(/^12:04-12:05 +latency ms +\S+ \/api\/\S+ +p50 +\d+ +p95 +\d+ +p99 +\d+$/m);
    expect(stdout).toContain(`  page-views  ${last + 1}      0`);
    expect(stdout).toMatch(/of the \d+ clicks published: none lost, none counted twice$/m);
  }, 60_000);

  test('npm run example -- order-flow - runs the order flow and exits by itself', async () => {
    const { stdout } = await run('npm', ['run', 'example', '--silent', '--', 'order-flow'], { timeout: 60_000 });
    expect(stdout).toMatch(/done: \d+ fulfilled \(w1=\d+ w2=\d+ w3=\d+\), \d+ dead-lettered/);
  }, 60_000);
});
