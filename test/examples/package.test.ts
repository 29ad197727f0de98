import { execFile } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, test } from 'vitest';

// The package as a user gets it: `npm pack` (whose prepack builds dist/), unpacked into a project
// outside the repository with only the package's dependencies beside it, type-checked with
// `skipLibCheck: false`, so that a public declaration naming a type from a package that is not
// installed (as DDSketch's did, through protobufjs) fails here.

const run = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'sluice-consumer-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const consumer = `
import { actor, createRuntime, type Envelope } from 'sluice';
import { agg, eventTime, keyBy, type QuantileValues, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { testActor, testPipeline } from 'sluice/testing';

interface Req { path: string; ms: number; ts: number }
const latency = actor<Req, WindowResult<QuantileValues>>({
  name: 'latency',
  subscribe: 'requests',
  output: 'latency',
  pipeline: (req$, ctx) =>
    req$.pipe(
      eventTime((r) => r.ts),
      keyBy((r) => r.path),
      watermarks({ clock: ctx.clock }),
      tumbling({ name: 'latency', sizeMs: 60_000, aggregate: agg.quantiles((r: Req) => r.ms) }),
    ),
});
const runtime = createRuntime();
runtime.spawn(latency);
const h = testPipeline((in$) => in$.pipe(tumbling({ name: 'n', sizeMs: 10, aggregate: agg.count() })));
const first: Envelope<WindowResult<number>> | undefined = h.outputs[0];
void first;
void testActor(latency);
`;

describe('the published package', () => {
  test('npm pack ships dist/ and LICENSE; its declarations type-check in a fresh project without skipLibCheck', async () => {
    const packs = join(work, 'packs');
    mkdirSync(packs);
    // As on a fresh clone: nothing built. The prepack script must build it.
    rmSync(join(root, 'dist'), { recursive: true, force: true });
    const { stdout } = await run('npm', ['pack', '--silent', '--pack-destination', packs], { cwd: root });
    const tarball = join(packs, stdout.trim().split('\n').pop() as string);
    const project = join(work, 'project');
    const pkg = join(project, 'node_modules', 'sluice');
    mkdirSync(pkg, { recursive: true });
    await run('tar', ['xzf', tarball, '-C', pkg, '--strip-components=1']);
    for (const file of ['LICENSE', 'dist/runtime/index.d.ts', 'dist/operators/index.js', 'dist/testing/index.d.ts'])
      expect(existsSync(join(pkg, file)), file).toBe(true);
    expect(readFileSync(join(pkg, 'LICENSE'), 'utf8')).toContain('Apache License');
    // No public declaration names the sketch library (its types need protobufjs, not a dependency).
    const quantiles = readFileSync(join(pkg, 'dist/operators/quantiles.d.ts'), 'utf8');
    expect(quantiles).not.toMatch(/from '@datadog\/sketches-js'/);
    // The package's dependencies (not devDependencies, not protobufjs), and Node's types.
    const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
    };
    for (const dep of [...Object.keys(manifest.dependencies), '@types/node', 'undici-types']) {
      const target = join(project, 'node_modules', dep);
      mkdirSync(dirname(target), { recursive: true });
      symlinkSync(realpathSync(join(root, 'node_modules', dep)), target);
    }
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          skipLibCheck: false,
          noEmit: true,
          types: ['node'],
        },
        include: ['index.ts'],
      }),
    );
    writeFileSync(join(project, 'index.ts'), consumer);
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
    const result = await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: project }).catch(
      (error: { stdout: string }) => ({ stdout: error.stdout }),
    );
    expect(result.stdout).toBe('');
  }, 180_000);
});
