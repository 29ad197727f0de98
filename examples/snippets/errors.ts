// The TypeScript block of docs/errors.md, verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual } from 'node:assert/strict';
import { Bus, SubjectError } from 'sluice';

export async function main(): Promise<void> {
  const bus = new Bus();
  const order = { id: 'o-1', total: 12.5 };
  const printed: unknown[] = [];
  const console = { log: (line: unknown) => void printed.push(line) };

  try {
    await bus.publish('orders.*', order);
  } catch (error) {
    if (error instanceof SubjectError) console.log(error.rule); // 'wildcard-in-publish'
  }

  deepStrictEqual(printed, ['wildcard-in-publish']);
}
