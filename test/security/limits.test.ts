import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Bus, SubjectError } from 'sluice';
import { describe, expect, test } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** Runs a fixture with `node --expose-gc` and TypeScript sources; resolves with its exit and output. */
function runFixture(name: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const fixture = fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', '--conditions=sluice-source', '--import', 'tsx', fixture], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('security - subject limits', () => {
  test('security - 60,000 distinct 4 KB subjects keep the heap bounded, and 16 KiB subjects are refused', async () => {
    const { code, stdout, stderr } = await runFixture('subjectFlood.ts');
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const result = JSON.parse(stdout) as { grownMb: number; refused: number; received: number };
    expect(result.received).toBe(60_000);
    expect(result.refused).toBe(1_000);
    // Unbounded, the match cache held every subject: about 230 MB for these.
    expect(result.grownMb).toBeLessThan(48);
  }, 90_000);

  test('security - a 50,000-token pattern or subject is a SubjectError, not a stack overflow', async () => {
    const bus = new Bus();
    const client = bus.client('mallory', { publish: { allow: ['telemetry.>'] } });
    const pattern = `${'*.'.repeat(49_999)}>`;
    const subscribeError = (() => {
      try {
        client.subscribe(pattern);
      } catch (error) {
        return error;
      }
    })();
    expect(subscribeError).toBeInstanceOf(SubjectError);
    expect(subscribeError).toMatchObject({ rule: 'too-long' });
    bus.subscribe('telemetry.>');
    const subject = `telemetry.${'a.'.repeat(50_000)}a`;
    const publishError = await client.publish(subject, 1).catch((e: unknown) => e);
    expect(publishError).toBeInstanceOf(SubjectError);
    expect(publishError).toMatchObject({ rule: 'too-long', subject });
    expect(() => client.tryPublish(subject, 1)).toThrow(SubjectError);
  });
});

describe('security - queue groups', () => {
  test('security - the round-robin cursor of a queue group goes with its last member', async () => {
    const bus = new Bus();
    const got: number[] = [];
    for (let i = 0; i < 1_000; i++) {
      const members = [0, 1].map(() =>
        bus.subscribe<number>('jobs', { queue: `q${i}`, callback: (env) => void got.push(env.data) }),
      );
      await bus.publish('jobs', i); // moves the group's cursor
      for (const m of members) m.unsubscribe();
    }
    expect(got).toHaveLength(1_000);
    expect(bus.queueGroups).toBe(0);
  });

  test('security - a group keeps its cursor while a member remains, and round-robin goes on', async () => {
    const bus = new Bus();
    const got: string[] = [];
    const member = (name: string) => bus.subscribe('jobs', { queue: 'w', callback: () => void got.push(name) });
    const a = member('a');
    member('b');
    await bus.publish('jobs', 1);
    await bus.publish('jobs', 2);
    a.unsubscribe();
    expect(bus.queueGroups).toBe(1);
    member('c');
    for (let i = 0; i < 4; i++) await bus.publish('jobs', i);
    expect(got.slice(0, 2).sort()).toEqual(['a', 'b']);
    expect(got.slice(2).sort()).toEqual(['b', 'b', 'c', 'c']);
  });
});
