import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { actor, createRuntime, durable, LmdbStore } from 'sluice';
import { describe, expect, test } from 'vitest';
import { quietLogger } from './helpers.ts';
import { tempDir } from './store/harness.ts';
import { eventually } from './streams/wait.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));

/** `npm run replay -- ...args` in a child process: its exit code and output. */
function replay(args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--conditions=sluice-source', '--import', 'tsx', 'scripts/replay.ts', ...args],
      { cwd: root, timeout: 30_000 },
      (error, out, err) => resolve({ code: error === null ? 0 : Number(error.code ?? 1), out, err }),
    );
  });
}

/** The records of `stream` in a store closed again at once, as envelopes' subject, data and headers. */
async function records(path: string, stream: string) {
  const store = new LmdbStore({ path });
  try {
    return store.read(stream, 1).map((e) => e.value as { s: string; d: unknown; h?: Record<string, string> });
  } finally {
    await store.close();
  }
}

describe('the replay command', () => {
  test('replay - npm run replay republishes dead letters kept in a $DLQ.> stream to the stream of their original subject', async () => {
    const path = join(tempDir(), 'store');
    // A job whose billing actor fails on every order: its dead letters are kept in DLQ.
    {
      const store = new LmdbStore({ path });
      const rt = createRuntime({
        store,
        logger: quietLogger(),
        streams: [
          { name: 'ORDERS', subjects: ['orders.>'] },
          { name: 'DLQ', subjects: ['$DLQ.>'] },
        ],
      });
      rt.spawn(
        actor<{ id: number }, never>({
          name: 'billing',
          subscribe: durable('ORDERS', { consumer: 'billing' }),
          retry: { maxAttempts: 1 },
          handle: () => {
            throw new Error('payment service down');
          },
        }),
      );
      for (let id = 1; id <= 3; id++) {
        await rt.bus.publish('orders.eu', { id }, { headers: { 'sluice-idempotency-key': `order/${id}` } });
      }
      await eventually(() => expect(rt.stream('DLQ').info().messages).toBe(3));
      await eventually(() => expect(rt.stream('ORDERS').consumer('billing').info().acked).toBe(3));
      await rt.stop();
      await store.close();
    }

    // A dry run says what it would do and publishes nothing.
    const dry = await replay(['--store', path, '--stream', 'DLQ', '--capture', 'ORDERS=orders.>', '--dry-run']);
    expect(dry.code, dry.err).toBe(0);
    expect(dry.out).toMatch(/would replay DLQ seq 1 -> orders\.eu \(stream ORDERS\).*billing: payment service down/);
    expect(dry.out).toContain('dry run: 3 letter(s) would be replayed');
    expect(await records(path, 'ORDERS')).toHaveLength(3);

    // With no stream capturing the original subject, the letters would reach no one: refused.
    const lost = await replay(['--store', path, '--stream', 'DLQ']);
    expect(lost.code).toBe(1);
    expect(lost.err).toContain("refused seq 1: 'orders.eu' is captured by no --capture stream");
    expect(await records(path, 'ORDERS')).toHaveLength(3);

    // Bad arguments: a usage error, nothing done.
    const bad = await replay(['--store', path, '--stream', 'DLQ', '--limit', 'x']);
    expect(bad.code).toBe(2);
    expect(bad.err).toContain('--limit must be an integer >= 1');

    const run = await replay(['--store', path, '--stream', 'DLQ', '--capture', 'ORDERS=orders.>', '--from-seq', '2']);
    expect(run.code, run.err).toBe(0);
    expect(run.out).toContain('replay DLQ seq 2 -> orders.eu (stream ORDERS)');
    expect(run.out).toContain('replayed 2 letter(s) from DLQ seq 2..3; next --from-seq 4');
    const orders = await records(path, 'ORDERS');
    expect(orders.map((r) => r.d)).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }, { id: 2 }, { id: 3 }]);
    const back = orders[3] as { s: string; h: Record<string, string> };
    expect(back.s).toBe('orders.eu');
    // A new message, not a dead letter; its idempotency key kept, so sinks still write it once.
    expect(back.h['sluice-error']).toBeUndefined();
    expect(back.h['sluice-original-subject']).toBeUndefined();
    expect(back.h['sluice-idempotency-key']).toBe('order/2');

    // The billing consumer, restarted on the store, is delivered the replayed orders.
    const store = new LmdbStore({ path });
    const rt = createRuntime({ store, logger: quietLogger(), streams: [{ name: 'ORDERS', subjects: ['orders.>'] }] });
    try {
      const got = rt.stream('ORDERS').consumer('billing').fetch(10);
      expect(got.map((m) => m.seq)).toEqual([4, 5]);
    } finally {
      await rt.stop();
      await store.close();
    }
  }, 60_000);
});
