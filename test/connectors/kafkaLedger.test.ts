/**
 * What a Kafka source's partition commits as offset metadata, without a broker: the runs done
 * above the floor, bounded so the broker takes the commit, and the runs read at the take that the
 * partition has not reached yet carried on.
 */
import { describe, expect, test } from 'vitest';
import { Partition, skipped } from '../../connectors/kafka/partition.ts';
import {
  decodeRuns,
  encodeRuns,
  MAX_COMMIT_METADATA,
  mergeRuns,
  PartitionLedger,
} from '../../connectors/kafka/partitionLedger.ts';

/** The broker's `offset.metadata.max.bytes` by default. */
const BROKER_DEFAULT_MAX = 4096;

/**
 * Delivers `count` records from `start` on, as a keyed partition in flight looks: every third
 * settled, the others not, the first one not (so the floor stays at `start`).
 */
function interleaved(ledger: PartitionLedger, start: number, count: number): void {
  for (let offset = start; offset < start + count; offset++) {
    const index = ledger.deliver(offset);
    if (offset !== start && offset % 3 === 0) ledger.settle(index);
  }
}

/** Delivers a record as the source's pump does: a record in the take's runs settles at once. */
function deliver(part: Partition, offset: number, settle: boolean): void {
  const index = part.ledger.deliver(offset);
  if ((part.skip.length > 0 && skipped(part.skip, offset)) || settle) part.ledger.settle(index);
}

describe('Kafka commit metadata', () => {
  test('runs past the bound: the metadata keeps the lowest runs within MAX_COMMIT_METADATA, the floor is unchanged, and the dropped runs are counted', () => {
    const ledger = new PartitionLedger('orders', 0, 1_000_000_000);
    interleaved(ledger, 1_000_000_000, 6_000);
    const full = ledger.commitIfSettled([]);
    // What was committed before, unbounded: past the broker's limit, refused.
    expect(`sluice:${full.doneAbove.map(([a]) => a).join(',')}`.length).toBeGreaterThan(BROKER_DEFAULT_MAX);

    const { metadata, dropped } = encodeRuns(full.doneAbove);
    expect(metadata).not.toBeNull();
    expect((metadata as string).length).toBeLessThanOrEqual(MAX_COMMIT_METADATA);
    expect(MAX_COMMIT_METADATA).toBeLessThan(BROKER_DEFAULT_MAX);
    const kept = decodeRuns(metadata);
    expect(kept.length).toBeGreaterThan(0);
    expect(kept).toEqual(full.doneAbove.slice(0, kept.length));
    expect(dropped).toBe(full.doneAbove.length - kept.length);
    expect(dropped).toBeGreaterThan(0);
    // As full as the bound allows: one more run would not fit.
    const next = full.doneAbove[kept.length] as [number, number];
    expect((metadata as string).length + 1 + `${next[0]}`.length).toBeGreaterThan(MAX_COMMIT_METADATA);

    const part = new Partition('orders', 0, 1_000_000_000);
    interleaved(part.ledger, 1_000_000_000, 6_000);
    const commit = part.commitFor([], () => undefined);
    expect(commit.offset).toBe(full.floor);
    expect(commit.offset).toBe(1_000_000_000);
    expect(commit.metadata).toBe(metadata);
  });

  test('runs that fit are written whole, as before', () => {
    const ledger = new PartitionLedger('orders', 0, 0);
    interleaved(ledger, 0, 30);
    const full = ledger.commitIfSettled([]);
    const { metadata, dropped } = encodeRuns(full.doneAbove);
    expect(dropped).toBe(0);
    expect(metadata).toBe('sluice:3,6,9,12,15,18,21,24,27');
    expect(encodeRuns([])).toEqual({ metadata: null, dropped: 0 });
    // One run longer than the bound: no metadata, the run counted as dropped.
    expect(encodeRuns([[1, 2]], 8)).toEqual({ metadata: null, dropped: 1 });
  });

  test('decodeRuns reads metadata as earlier versions wrote it, unbounded included, and nothing else', () => {
    expect(decodeRuns('sluice:3-5,9')).toEqual([
      [3, 5],
      [9, 9],
    ]);
    const long = Array.from({ length: 1_000 }, (_, i) => `${10_000_000 + 3 * i}-${10_000_001 + 3 * i}`).join(',');
    const runs = decodeRuns(`sluice:${long}`);
    expect(runs).toHaveLength(1_000);
    expect(runs[999]).toEqual([10_002_997, 10_002_998]);
    expect(decodeRuns(null)).toEqual([]);
    expect(decodeRuns('')).toEqual([]);
    expect(decodeRuns('other:3-5')).toEqual([]);
  });

  test('the warning that runs were left out is said once per tenure of a partition, naming it', () => {
    const part = new Partition('orders', 2, 5_000_000);
    interleaved(part.ledger, 5_000_000, 6_000);
    const warnings: string[] = [];
    part.commitFor([], (m) => warnings.push(m));
    part.commitFor([], (m) => warnings.push(m));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('orders:2');
    expect(warnings[0]).toContain('processed again');
    const again = new Partition('orders', 2, 5_000_000);
    interleaved(again.ledger, 5_000_000, 6_000);
    again.commitFor([], (m) => warnings.push(m));
    expect(warnings).toHaveLength(2);
    // Runs that fit: no warning.
    const small = new Partition('orders', 3, 0);
    interleaved(small.ledger, 0, 30);
    small.commitFor([], (m) => warnings.push(m));
    expect(warnings).toHaveLength(2);
  });
});

describe('a partition taken with runs in the commit metadata', () => {
  test('its commits carry the runs it has not reached yet: taken at 100 with 150-160 done, a commit at 111 says 150-160', () => {
    const part = new Partition('orders', 0, 100);
    part.takeSkips(decodeRuns('sluice:150-160'));
    for (let offset = 100; offset <= 111; offset++) deliver(part, offset, offset < 111);
    const commit = part.commitFor([], () => undefined);
    expect(commit).toEqual({ offset: 111, metadata: 'sluice:150-160' });
    // With the record at 111 in the transaction, the floor passes it and the runs stay.
    expect(part.commitFor([111], () => undefined)).toEqual({ offset: 112, metadata: 'sluice:150-160' });
  });

  test('runs done since and the take’s runs are one sorted list; a take’s run partly passed is kept from the floor on; one passed is gone', () => {
    const part = new Partition('orders', 0, 100);
    part.takeSkips(decodeRuns('sluice:103-104,150-160,170'));
    // 100-102 settled, 103-104 in the take's runs, 105 not settled, 106-108 settled, then 150-155
    // delivered (the take's run, settled on arrival) past the gap.
    for (let offset = 100; offset <= 108; offset++) deliver(part, offset, offset !== 105);
    for (let offset = 150; offset <= 155; offset++) deliver(part, offset, false);
    expect(part.commitFor([], () => undefined)).toEqual({ offset: 105, metadata: 'sluice:106-108,150-160,170' });
    // 105 settles and so do the rest: the floor is at 156, the next offset not delivered, inside
    // the take's run, whose rest is still done.
    part.ledger.settle(part.ledger.indexOf(105));
    expect(part.commitFor([], () => undefined)).toEqual({ offset: 156, metadata: 'sluice:156-160,170' });
  });

  test('mergeRuns joins overlapping and adjacent runs and cuts them at the floor', () => {
    expect(
      mergeRuns(
        10,
        [
          [5, 12],
          [14, 15],
        ],
        [
          [16, 20],
          [30, 30],
          [3, 4],
        ],
      ),
    ).toEqual([
      [10, 12],
      [14, 20],
      [30, 30],
    ]);
    expect(mergeRuns(0)).toEqual([]);
  });
});
