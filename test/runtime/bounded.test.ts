import { describe, expect, test } from 'vitest';
import { dropOldest, trimOldest } from '../../runtime/bounded.ts';

describe('bounded maps and sets', () => {
  test('trimOldest keeps a map within its bound, dropping the first inserted, and keeps the newest', () => {
    const map = new Map<string, number>();
    for (let i = 0; i < 10_000; i++) {
      map.set(`k${i}`, i);
      trimOldest(map, 800);
      expect(map.size).toBeLessThanOrEqual(800);
    }
    // What is kept is a run of the newest keys, in order.
    const kept = [...map.values()];
    expect(kept.length).toBeGreaterThan(800 - 800 / 8);
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
    const set = new Set<number>([1, 2, 3]);
    trimOldest(set, 3);
    expect([...set]).toEqual([1, 2, 3]);
    set.add(4);
    trimOldest(set, 3);
    expect([...set]).toEqual([2, 3, 4]);
  });

  test('dropOldest returns what it dropped, oldest first, and stops at an empty collection', () => {
    const set = new Set(['a', 'b', 'c']);
    expect(dropOldest(set, 2)).toEqual(['a', 'b']);
    expect(dropOldest(set, 5)).toEqual(['c']);
    expect(set.size).toBe(0);
  });
});
