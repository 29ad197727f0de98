import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';

// Every TypeScript block of the documentation is code that runs. The rule, for a block in
// README.md or docs/*.md (```ts) or a multi-line @example of testing/*.ts: its lines, leading
// indentation aside, appear in order and unbroken in
// - examples/tour/main.ts, which test/examples/examples.test.ts runs and checks line by line, or
// - a file examples/snippets/NAME.ts, whose exported `main()` this test runs: it does what the
//   block shows and throws (node:assert, or vitest's expect) when the result is not what the
//   documentation says.
// To document something new: write it in a snippet file first, then copy the lines.

const root = new URL('../../', import.meta.url);
const read = (path: string) => readFileSync(new URL(path, root), 'utf8');

interface Block {
  readonly where: string;
  readonly lines: string[];
}

const normalize = (text: string) => text.split('\n').map((l) => l.trim());

function markdownBlocks(path: string): Block[] {
  const text = read(path);
  const blocks: Block[] = [];
  for (const m of text.matchAll(/^```(?:ts|typescript)\n([\s\S]*?)^```/gm)) {
    const line = text.slice(0, m.index).split('\n').length;
    blocks.push({ where: `${path}:${line}`, lines: normalize((m[1] as string).trimEnd()) });
  }
  return blocks;
}

function jsdocExamples(path: string): Block[] {
  const lines = read(path).split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    // A multi-line example: `@example` alone on its line, then ` * code` lines up to a blank ` *` or the end.
    if (!/^\s*\* @example\s*$/.test(lines[i] as string)) continue;
    const body: string[] = [];
    for (let j = i + 1; j < lines.length; j++) {
      const m = /^\s*\*(?!\/) ?(.*)$/.exec(lines[j] as string);
      if (m === null || (m[1] as string).trim() === '' || (m[1] as string).startsWith('@')) break;
      body.push(m[1] as string);
    }
    blocks.push({ where: `${path}:${i + 1}`, lines: normalize(body.join('\n')) });
  }
  return blocks;
}

const snippetFiles = readdirSync(new URL('examples/snippets/', root))
  .filter((f) => f.endsWith('.ts'))
  .sort();
const runFiles = ['examples/tour/main.ts', ...snippetFiles.map((f) => `examples/snippets/${f}`)];
const sources = runFiles.map((path) => ({ path, lines: normalize(read(path)) }));

function foundIn(block: Block): string | undefined {
  const want = block.lines;
  for (const { path, lines } of sources) {
    for (let i = 0; i + want.length <= lines.length; i++) {
      let j = 0;
      while (j < want.length && lines[i + j] === want[j]) j++;
      if (j === want.length) return path;
    }
  }
  return undefined;
}

const docs = [
  'README.md',
  ...readdirSync(new URL('docs/', root))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];
const testing = readdirSync(new URL('testing/', root))
  .filter((f) => f.endsWith('.ts'))
  .map((f) => `testing/${f}`);
const blocks = [...docs.flatMap(markdownBlocks), ...testing.flatMap(jsdocExamples)];

describe('documentation code', () => {
  test('the documentation has blocks to check (the extraction works)', () => {
    expect(blocks.filter((b) => b.where.startsWith('README.md')).length).toBeGreaterThanOrEqual(6);
    expect(blocks.filter((b) => b.where.startsWith('docs/')).length).toBeGreaterThanOrEqual(3);
    expect(blocks.filter((b) => b.where.startsWith('testing/')).length).toBeGreaterThanOrEqual(3);
  });

  test.each(blocks.map((b) => [b.where, b] as const))('%s is code that a test runs', (_where, block) => {
    expect(
      foundIn(block),
      `this block appears in none of ${runFiles.join(', ')}: put it, verbatim, in a file examples/snippets/NAME.ts ` +
        'whose exported main() runs it and checks what the documentation says',
    ).toBeDefined();
  });

  test.each(snippetFiles)('examples/snippets/%s runs and its checks hold', async (file) => {
    const snippet = (await import(`../../examples/snippets/${file}`)) as { main?: () => Promise<void> };
    expect(typeof snippet.main, `${file} must export an async main()`).toBe('function');
    await (snippet.main as () => Promise<void>)();
  });

  const documents = [
    'README.md',
    'test/bench/README.md',
    // Markdown only: docs/images/ holds the README's screenshots.
    ...readdirSync(new URL('docs/', root))
      .filter((f) => f.endsWith('.md'))
      .map((f) => `docs/${f}`),
  ];
  test.each(documents)('%s cites only files that exist', (path) => {
    // Code blocks aside: `click.ts` there is a field, not a file.
    const text = read(path).replace(/^```[\s\S]*?^```/gm, '');
    const dir = path.includes('/') ? path.slice(0, path.lastIndexOf('/') + 1) : '';
    for (const m of text.matchAll(/(?<![\w./-])([A-Za-z][\w./-]*\.(?:md|ts))\b/g)) {
      const cited = m[1] as string;
      if (cited.includes('NAME')) continue; // a placeholder
      // Relative to the repository, to the citing file, or to docs/ (as the README's layout lists them).
      const candidates = [cited, `${dir}${cited}`, `docs/${cited}`];
      expect(
        candidates.some((p) => {
          try {
            read(p);
            return true;
          } catch {
            return false;
          }
        }),
        `${path} cites ${cited}, which does not exist`,
      ).toBe(true);
    }
  });
});
