/**
 * The source's own connection to its group coordinator (connectors/kafka/groupCoordinator.ts),
 * against a plain TCP server: making the connection needs no Kafka protocol without SASL, so no
 * broker is needed to count the connections it opens.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { Connection, type Consumer } from '@platformatic/kafka';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { clientConnection } from '../../connectors/kafka/config.ts';
import { GroupCoordinator } from '../../connectors/kafka/groupCoordinator.ts';

let server: Server | undefined;
let taken: Socket[] = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const socket of taken) socket.destroy();
  taken = [];
  const s = server;
  server = undefined;
  if (s !== undefined) await new Promise((resolve) => s.close(resolve));
});

/** A server taking every connection, and the sockets it took, in order. */
async function listen(): Promise<{ port: number; sockets: Socket[] }> {
  const sockets: Socket[] = [];
  taken = sockets;
  const s = createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
  });
  server = s;
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const address = s.address();
  if (address === null || typeof address === 'string') throw new Error('the test server has no port');
  return { port: address.port, sockets };
}

/** What the coordinator asks of the consumer: the coordinator's node id, and that node's address. */
function consumerAt(port: number): Consumer {
  const fake = {
    findGroupCoordinator: async () => 1,
    metadata: async () => ({ brokers: new Map([[1, { host: '127.0.0.1', port }]]) }),
  };
  return fake as unknown as Consumer;
}

/** The coordinator of group 'group', found at `port` (the fake consumer's answer). */
function coordinatorAt(port: number): GroupCoordinator {
  const consumer = consumerAt(port);
  return new GroupCoordinator(
    'kafka:test',
    'group',
    ['topic'],
    clientConnection({ brokers: [`127.0.0.1:${port}`] }, 'test.connection'),
    () => consumer,
  );
}

describe('GroupCoordinator.connection', () => {
  test('two callers finding the connection lost at the same time share one new connection: none is left open unheld', async () => {
    const { port, sockets } = await listen();
    const coordinator = coordinatorAt(port);
    const connects = vi.spyOn(Connection.prototype, 'connect');
    const first = await coordinator.connection();
    expect(connects).toHaveBeenCalledTimes(1);
    // The coordinator closes the connection (it moved, or restarted).
    const lost = new Promise((resolve) => first.once('close', resolve));
    for (const socket of sockets) socket.destroy();
    await lost;
    expect(first.isConnected()).toBe(false);

    const [a, b] = await Promise.all([coordinator.connection(), coordinator.connection()]);
    expect(b).toBe(a);
    expect(a.isConnected()).toBe(true);
    expect(connects).toHaveBeenCalledTimes(2);
    coordinator.drop();
  });

  test('a connection the coordinator resets throws nothing out of the socket: the next call opens another', async () => {
    const { port, sockets } = await listen();
    const coordinator = coordinatorAt(port);
    const first = await coordinator.connection();
    const lost = new Promise((resolve) => first.once('close', resolve));
    // An RST, as from a broker's host that crashed: the socket errors (ECONNRESET) before it closes.
    sockets[0]?.resetAndDestroy();
    await lost;
    const next = await coordinator.connection();
    expect(next).not.toBe(first);
    expect(next.isConnected()).toBe(true);
    coordinator.drop();
  });
});
