import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const fixture = fileURLToPath(new URL('./fixtures/deadLetterLoops.ts', import.meta.url));
const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

interface Outcome {
  calls: Record<string, number>;
  dlq: string[];
  dead: string[];
  counters: Record<string, number>;
  errors: string[];
  pendingTimers?: number;
}

/** Runs the fixture; a frozen child is killed after 20 s, which fails the test with its exit. */
function runFixture(): Promise<{ results: Record<string, Outcome>; timerFired: boolean }> {
  return new Promise((resolve, reject) => {
    execFile(
      tsx,
      ['--conditions=sluice-source', fixture],
      { cwd: root, timeout: 20_000, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error !== null)
          reject(new Error(`fixture failed (${error.signal ?? error.code}): ${stderr.slice(0, 2000)}`));
        else resolve(JSON.parse(stdout.trim().split('\n').at(-1) as string));
      },
    );
  });
}

describe('security - dead-letter loops end', () => {
  test('actors failing on dead letters end after their own retries; nothing loops, timers still fire', {
    timeout: 30_000,
  }, async () => {
    const { results, timerFired } = await runFixture();
    expect(timerFired).toBe(true);

    // A handler on $DLQ.> that fails: the dead letter of the dead letter goes to $DEAD.<name>,
    // which $DLQ.> does not match, after the reader's own attempts.
    for (const [name, attempts] of [
      ['dlq-reader-1', 1],
      ['dlq-reader-3', 3],
      ['dlq-reader-system-clock', 1],
    ] as const) {
      const r = results[name] as Outcome;
      expect(r.calls, name).toEqual({ orders: 1, 'dlq-reader': attempts });
      expect(r.dlq, name).toEqual(['$DLQ.orders <- in']);
      expect(r.dead, name).toEqual(['$DEAD.dlq-reader <- $DLQ.orders']);
      expect(r.counters, name).toMatchObject({ deadLettered: 2, retried: attempts - 1 });
    }
    expect(results['dlq-reader-3']?.pendingTimers).toBe(0);

    // Two actors reading each other's dead letters: a's goes to b, b's to $DEAD.b, not back to a.
    const pingPong = results['ping-pong'] as Outcome;
    expect(pingPong.calls).toEqual({ a: 1, b: 1 });
    expect(pingPong.dlq).toEqual(['$DLQ.a <- in']);
    expect(pingPong.dead).toEqual(['$DEAD.b <- $DLQ.a']);

    // An actor on '>': its own dead letters come back to it ($DEAD.everything, its default being
    // matched by '>'), and what fails there is logged and dropped.
    const everything = results.everything as Outcome;
    expect(everything.calls).toEqual({ everything: 2 });
    expect(everything.dead).toEqual(['$DEAD.everything <- in']);
    expect(everything.counters).toMatchObject({ deadLettered: 1, dropped: 1 });
    expect(
      everything.errors.filter((e) => e.includes("from '$DEAD.everything'") && e.includes('dropped')),
    ).toHaveLength(1);
  });
});
