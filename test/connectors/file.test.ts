import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SinkRecord } from 'sluice';
import { fileSink, readJsonLines } from 'sluice/connectors/file';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { CorruptRecordError, OptionsError } from '../../runtime/errors.ts';
import { tornWrite } from '../crash/tornWrite.ts';

const rec = <T>(key: string, value: T, revision?: number): SinkRecord<T> => ({
  key,
  value,
  revision,
  envelope: undefined,
});

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sluice-file-sink-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

const linesOf = (path: string) => readFileSync(path, 'utf8').split('\n');

describe('file sink (JSON Lines)', () => {
  test('one line per key and revision; a replay after reopening writes nothing; a newer revision is appended', async () => {
    const path = join(dir, 'out.jsonl');
    const first = await fileSink<number>({ path });
    await first.write([rec('a', 1), rec('w/eu/0-10', 5, 0), rec('a', 1)]);
    await first.close();
    expect(linesOf(path)).toEqual(['{"key":"a","value":1}', '{"key":"w/eu/0-10","revision":0,"value":5}', '']);

    const again = await fileSink<number>({ path });
    expect(again.recovery).toEqual({ lines: 2, truncatedBytes: 0 });
    await again.write([rec('a', 1), rec('w/eu/0-10', 5, 0)]);
    await again.write([rec('w/eu/0-10', 7, 2), rec('w/eu/0-10', 6, 1), rec('b', 2)]);
    await again.close();
    expect(linesOf(path).slice(2)).toEqual(['{"key":"w/eu/0-10","revision":2,"value":7}', '{"key":"b","value":2}', '']);
    expect([...(await readJsonLines<number>(path))]).toEqual([
      ['a', { revision: undefined, value: 1 }],
      ['w/eu/0-10', { revision: 2, value: 7 }],
      ['b', { revision: undefined, value: 2 }],
    ]);
  });

  test('a torn last line (a write cut short) is cut off on open, and the replayed record is written whole', async () => {
    const path = join(dir, 'out.jsonl');
    writeFileSync(path, '{"key":"a","value":1}\n{"key":"b","val');
    const sink = await fileSink<number>({ path });
    expect(sink.recovery).toEqual({ lines: 1, truncatedBytes: 15 });
    expect(readFileSync(path, 'utf8')).toBe('{"key":"a","value":1}\n');
    await sink.write([rec('a', 1), rec('b', 2)]);
    await sink.close();
    expect(linesOf(path)).toEqual(['{"key":"a","value":1}', '{"key":"b","value":2}', '']);
  });

  test("the crash harness's torn write tears only lines the sink would write: a replayed batch holding a written key leaves every key once", async () => {
    // A batch replayed after its first write landed unacknowledged: 'a' and 'b' are held, the
    // harness kills the second write halfway (test/crash, mid-batch:agg-file), the restarted
    // sink writes the batch again.
    const path = join(dir, 'out.jsonl');
    const first = await fileSink<number>({ path });
    await first.write([rec('a', 1, 0), rec('b', 2, 0)]);
    tornWrite(first, [rec('a', 1, 0), rec('b', 2, 0), rec('c', 3, 0), rec('d', 4, 0), rec('e', 5, 0)]);
    await first.close();
    const again = await fileSink<number>({ path });
    expect(again.recovery.truncatedBytes).toBeGreaterThan(0);
    await again.write([rec('a', 1, 0), rec('b', 2, 0), rec('c', 3, 0), rec('d', 4, 0), rec('e', 5, 0)]);
    await again.close();
    const keys = linesOf(path)
      .filter((line) => line.length > 0)
      .map((line) => (JSON.parse(line) as { key: string }).key);
    expect(keys).toEqual(['a', 'b', 'c', 'd', 'e']);
  });

  test('a damaged complete line is a CorruptRecordError naming the file and line, not cut off', async () => {
    const path = join(dir, 'out.jsonl');
    writeFileSync(path, '{"key":"a","value":1}\n{"key":"b",\n{"key":"c","value":3}\n');
    const opening = fileSink({ path });
    await expect(opening).rejects.toBeInstanceOf(CorruptRecordError);
    await expect(opening).rejects.toThrow(`corrupt record at sequence 2 of stream '${path}': line 2: not JSON`);
    expect(readFileSync(path, 'utf8')).toContain('"c"');
  });

  test('a failed write leaves the file and the keys as they were', async () => {
    const path = join(dir, 'out.jsonl');
    const sink = await fileSink<unknown>({ path });
    await sink.write([rec('a', 1)]);
    await expect(sink.write([rec('b', 2), rec('c', 10n)])).rejects.toThrow(/BigInt/);
    expect(sink.revisionOf('b')).toBeUndefined();
    await sink.write([rec('b', 2)]);
    await sink.close();
    expect(linesOf(path)).toEqual(['{"key":"a","value":1}', '{"key":"b","value":2}', '']);
  });

  test('a record the reader would refuse (a revision that is no integer >= 0, a key that is no string) fails its batch, naming it, and the file stays readable', async () => {
    const path = join(dir, 'out.jsonl');
    const sink = await fileSink<number>({ path });
    await sink.write([rec('a', 1)]);
    for (const bad of [rec('b', 2, Number.NaN), rec('b', 2, -2), rec('b', 2, 1.5), rec(7 as unknown as string, 2)]) {
      await expect(sink.write([rec('c', 3), bad])).rejects.toThrow(OptionsError);
    }
    await expect(sink.write([rec('b', 2, Number.NaN)])).rejects.toThrow(/fileSink\.revision.*'b'/);
    await sink.close();
    expect(linesOf(path)).toEqual(['{"key":"a","value":1}', '']);
    const again = await fileSink<number>({ path });
    await again.write([rec('b', 2, 0)]);
    await again.close();
    expect([...(await readJsonLines<number>(path)).keys()]).toEqual(['a', 'b']);
  });

  test('close() lets the writes queued before it finish, and refuses the ones after it', async () => {
    const path = join(dir, 'out.jsonl');
    const sink = await fileSink<number>({ path });
    const first = sink.write([rec('a', 1)]);
    const queued = sink.write([rec('b', 2)]);
    const closing = sink.close();
    await expect(sink.write([rec('c', 3)])).rejects.toThrow(/closed/);
    await expect(Promise.all([first, queued, closing])).resolves.toBeDefined();
    expect(linesOf(path)).toEqual(['{"key":"a","value":1}', '{"key":"b","value":2}', '']);
  });

  test('batches from several writers at once are appended one after the other, never interleaved', async () => {
    const path = join(dir, 'out.jsonl');
    const sink = await fileSink<string>({ path });
    const big = 'y'.repeat(100_000);
    await Promise.all(
      Array.from({ length: 8 }, (_, w) => sink.write(Array.from({ length: 20 }, (_, i) => rec(`w${w}/${i}`, big)))),
    );
    await sink.close();
    const lines = linesOf(path).slice(0, -1);
    expect(lines).toHaveLength(160);
    expect(lines.map((l) => (JSON.parse(l) as { key: string }).key)).toEqual(
      Array.from({ length: 8 }, (_, w) => Array.from({ length: 20 }, (_, i) => `w${w}/${i}`)).flat(),
    );
  });

  test('killed with SIGKILL while writing, again and again: no torn line, no line twice, every acknowledged batch kept', async () => {
    const path = join(dir, 'crash.jsonl');
    const total = 2_000;
    const kills = 5;
    let torn = 0;
    for (let run = 0; run <= kills; run++) {
      const last = run === kills;
      // Each run gets further: killed a few ms after a batch past its share of the records.
      const killAt = last ? undefined : Math.floor(((run + Math.random()) * total) / (kills + 1));
      // Run 2 is killed in the middle of a batch's bytes, for certain (see the fixture).
      const { acked, opened, ended } = await runWriter(path, total, killAt, run === 2);
      torn += opened.truncatedBytes > 0 ? 1 : 0;
      expect(ended).toBe(last ? 'done' : 'killed');
      // What was acknowledged before the kill is in the file, each line whole.
      const held = await readJsonLines<{ n: number }>(path);
      for (let n = 0; n <= acked; n++) expect(held.has(`k${n}`), `k${n} acked, then missing`).toBe(true);
    }
    const text = readFileSync(path, 'utf8');
    expect(text.endsWith('\n')).toBe(true);
    const keys = text
      .slice(0, -1)
      .split('\n')
      .map((line) => (JSON.parse(line) as { key: string; value: { n: number } }).key);
    expect(keys).toHaveLength(total);
    expect(new Set(keys).size).toBe(total);
    expect(keys).toEqual(Array.from({ length: total }, (_, n) => `k${n}`));
    // The run after the cut-short batch found its torn line and cut it off; random kills may add more.
    expect(torn).toBeGreaterThanOrEqual(1);
  }, 60_000);
});

const fixture = fileURLToPath(new URL('./fixtures/fileSinkWriter.ts', import.meta.url));
const root = fileURLToPath(new URL('../../', import.meta.url));

/**
 * Runs the writer; kills it 0-6 ms after it starts writing a batch from record `killAt` on, if
 * given, or with `torn`, once it has appended half of such a batch.
 */
function runWriter(
  path: string,
  total: number,
  killAt: number | undefined,
  torn = false,
): Promise<{ acked: number; opened: { lines: number; truncatedBytes: number }; ended: 'done' | 'killed' }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        '--conditions=sluice-source',
        '--import',
        'tsx',
        fixture,
        path,
        String(total),
        '100',
        '20000',
        torn ? String(killAt) : '-1',
      ],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let acked = -1;
    let opened = { lines: 0, truncatedBytes: 0 };
    let done = false;
    let out = '';
    let err = '';
    let killer: NodeJS.Timeout | undefined;
    const guard = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString();
    });
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      let nl = out.indexOf('\n');
      while (nl !== -1) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        const [what, a, b] = line.split(' ');
        if (what === 'opened') opened = { lines: Number(a), truncatedBytes: Number(b) };
        else if (what === 'acked') {
          acked = Number(a);
        } else if (what === 'torn') child.kill('SIGKILL');
        else if (what === 'writing') {
          if (!torn && killAt !== undefined && Number(a) >= killAt && killer === undefined)
            killer = setTimeout(() => child.kill('SIGKILL'), Math.random() * 6);
        } else if (what === 'done') done = true;
        nl = out.indexOf('\n');
      }
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(guard);
      if (killer !== undefined) clearTimeout(killer);
      if (signal === 'SIGKILL' && killAt !== undefined) resolve({ acked, opened, ended: 'killed' });
      else if (code === 0 && done) resolve({ acked, opened, ended: 'done' });
      else reject(new Error(`writer ended with ${code ?? signal}: ${err}`));
    });
  });
}
