/**
 * `npm run bench -- NAME [--quick] [--rounds=N] [--scale=X] [--warmup=N] [--only=case,case]`
 * runs `test/bench/NAME.bench.ts`, whose default export is a {@link BenchDefinition}. The last line
 * printed is the JSON result; the exit code is 1 when a contender failed its own check.
 */
import { readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type BenchDefinition, parseBenchOptions, runBench } from './harness.ts';

const dir = fileURLToPath(new URL('.', import.meta.url));
const available = readdirSync(dir)
  .filter((f) => f.endsWith('.bench.ts'))
  .map((f) => f.slice(0, -'.bench.ts'.length))
  .sort();
const name = process.argv.slice(2).find((a) => !a.startsWith('--'));

if (name === undefined || !available.includes(name)) {
  const given = name === undefined ? 'no benchmark named' : `unknown benchmark '${name}'`;
  process.stderr.write(
    `${given}; usage: npm run bench -- NAME [--quick] [--rounds=N] [--scale=X] [--warmup=N] [--only=case,...]\n` +
      `benchmarks: ${available.join(', ')}\n`,
  );
  process.exit(2);
}

const loaded = (await import(pathToFileURL(`${dir}${name}.bench.ts`).href)) as { default?: BenchDefinition };
if (loaded.default === undefined) {
  process.stderr.write(`test/bench/${name}.bench.ts has no default export (a defineBench(...) definition)\n`);
  process.exit(2);
}
const report = await runBench(loaded.default, parseBenchOptions(undefined, undefined, loaded.default));
// Exit explicitly: a peer library may leave timers behind (nact's systems do).
process.exit(report.failures.length > 0 ? 1 : 0);
