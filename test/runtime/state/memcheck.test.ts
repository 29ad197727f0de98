import { describe, expect, test } from 'vitest';
import { heapAllowance, memcheck } from './memcheck.ts';

/**
 * The fast form of `npm run memcheck` (2,000,000 events and 10,000 keys there): the same job and
 * checks, in child processes run with --expose-gc, at a size that keeps it to seconds.
 */
describe('memory of a checkpointed window (npm run memcheck)', () => {
  test('memory - a 10-minute tumbling count over 80,000 events and 2,000 keys keeps one record per key, holds no input, and its heap does not grow with the events (against a run over a quarter of them)', async () => {
    const { runs, problems } = await memcheck(80_000, 2_000);
    expect(problems).toEqual([]);
    const [quarter, full] = runs;
    if (quarter === undefined || full === undefined) throw new Error('memcheck gave no runs');
    expect(quarter.events).toBe(20_000);
    for (const f of runs) {
      expect(f).toMatchObject({ windowRecords: 2_000, windowCount: f.events, openWindows: 2_000, absorbed: 0 });
      expect(f.maxHeld).toBeLessThanOrEqual(f.everyInputs);
    }
    const grown = full.heapEnd - full.heapBaseline - (quarter.heapEnd - quarter.heapBaseline);
    expect(grown).toBeLessThanOrEqual(heapAllowance(quarter, full));
  }, 90_000);
});
