import { describe, expect, test } from 'vitest';
import { dropOldest, trimOldest } from '../../runtime/bounded.ts';

describe('bounded maps and sets', () => {
  test('trimOldest keeps at least the newest max entries and at most an eighth more, dropping the first inserted', () => {
    const map = new Map<string, number>();
    let trims = 0;
    for (let i = 0; i < 10_000; i++) {
      map.set(`k${i}`, i);
      const before = map.size;
      trimOldest(map, 800);
      if (map.size < before) trims++;
      // The window is as long as promised once it filled, and the bound holds.
      expect(map.size).toBeGreaterThanOrEqual(Math.min(i + 1, 800));
      expect(map.size).toBeLessThanOrEqual(900);
    }
    // One walk per hundred new keys, not one per key.
    expect(trims).toBeLessThanOrEqual(Math.ceil(10_000 / 100));
    // What is kept is a run of the newest keys, in order.
    const kept = [...map.values()];
    expect(kept.at(-1)).toBe(9_999);
    expect(kept).toEqual(Array.from({ length: kept.length }, (_, i) => 10_000 - kept.length + i));
  });

  test('a key written again (delete, then set) counts as new and outlives older ones', () => {
    const map = new Map<string, number>();
    for (let i = 0; i < 100; i++) map.set(`k${i}`, i);
    map.delete('k0');
    map.set('k0', 100);
    for (let i = 100; i < 180; i++) {
      map.set(`k${i}`, i);
      trimOldest(map, 100);
    }
    expect(map.get('k0')).toBe(100);
    expect(map.has('k1')).toBe(false);
  });

  test('trimOldest bounds a set the same way and leaves one within its bound alone', () => {
    const set = new Set<number>([1, 2, 3, 4, 5, 6, 7, 8]);
    trimOldest(set, 8);
    expect([...set]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    // An eighth of 8 above it is allowed, then it goes back to the newest 8.
    set.add(9);
    trimOldest(set, 8);
    expect(set.size).toBe(9);
    set.add(10);
    trimOldest(set, 8);
    expect([...set]).toEqual([3, 4, 5, 6, 7, 8, 9, 10]);
  });

  test('dropOldest returns what it dropped, oldest first, and stops at an empty collection', () => {
    const set = new Set(['a', 'b', 'c']);
    expect(dropOldest(set, 2)).toEqual(['a', 'b']);
    expect(dropOldest(set, 5)).toEqual(['c']);
    expect(set.size).toBe(0);
  });
});
