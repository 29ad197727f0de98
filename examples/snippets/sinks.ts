// The TypeScript block of README.md's "Sinks and exactly-once", verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRuntime, sinkActor } from 'sluice';
import { fileSink, readJsonLines } from 'sluice/connectors/file';
import type { WindowResult } from 'sluice/operators';

export async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-sinks-snippet-'));
  const cwd = process.cwd();
  process.chdir(dir);
  const runtime = createRuntime();
  const result = (revision: number, value: number) =>
    ({
      key: '/home',
      start: 0,
      end: 60_000,
      value,
      count: value,
      firing: revision === 0 ? 'on-time' : 'late',
      watermark: 60_000,
      isUpdate: revision > 0,
      revision,
      idempotencyKey: 'page-views//home/0-60000',
      supersedes: undefined,
    }) satisfies WindowResult<number>;
  const v0 = result(0, 4); // a window's first result
  const v1 = result(1, 5); // its update after late data
  try {
    // Window results into a JSON Lines file: one line per window and revision, none torn or doubled.
    const viewsFile = await fileSink<WindowResult<number>>({ path: './views.jsonl' });
    runtime.spawn(sinkActor({ name: 'views-file', subscribe: 'views.per-minute', sink: viewsFile }));
    for (const w of [v0, v0, v1, v0]) await runtime.bus.publish('views.per-minute', w); // replays of revision 0
    await runtime.idle(); // each input is acknowledged once its batch is synced to the file
    const saved = await readJsonLines<WindowResult<number>>('./views.jsonl'); // key -> newest revision

    deepStrictEqual(saved.get('page-views//home/0-60000')?.value.value, 5);
    // The replays of revision 0 wrote nothing; revision 1 was appended once.
    strictEqual(readFileSync('./views.jsonl', 'utf8').trimEnd().split('\n').length, 2);
    await runtime.stop();
    await viewsFile.close();
  } finally {
    process.chdir(cwd);
    rmSync(dir, { recursive: true, force: true });
  }
}
