/**
 * The real RabbitMQ for tests: 127.0.0.1:5672, guest/guest (RABBITMQ_HOST and RABBITMQ_PORT
 * override), as the machine runs it. Each test file gets its own virtual host
 * `sluice-test-<random>` (made with `rabbitmqctl`, removed at the end with all it holds); where
 * `rabbitmqctl` cannot run, the default vhost with names under a random prefix, deleted at the end.
 *
 * A test that needs the server checks {@link rabbitMissing} first: under CI (`CI=true`) a missing
 * server fails the test, elsewhere the test is skipped with a message saying what to install.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { type ChannelModel, connect } from 'amqplib';

const run = promisify(execFile);

export const RABBITMQ = Object.freeze({
  hostname: process.env.RABBITMQ_HOST ?? '127.0.0.1',
  port: Number(process.env.RABBITMQ_PORT ?? 5672),
  username: 'guest',
  password: 'guest',
});

const INSTALL_HINT = 'install RabbitMQ (apt-get install rabbitmq-server) and start it on 127.0.0.1:5672';

let reachable: Promise<string | undefined> | undefined;
function probe(): Promise<string | undefined> {
  reachable ??= (async () => {
    try {
      const model = await connect({ protocol: 'amqp', ...RABBITMQ }, { timeout: 2_000 });
      await model.close();
      return undefined;
    } catch (error) {
      return error instanceof Error ? error.message : String(error);
    }
  })();
  return reachable;
}

/**
 * A reason to skip a test that needs RabbitMQ, or undefined when the server answers. Under CI a
 * missing server is no reason to skip: the test runs and fails when it connects.
 */
export async function rabbitMissing(what: string): Promise<string | undefined> {
  const problem = await probe();
  if (problem === undefined || process.env.CI === 'true') return undefined;
  const reason = `${what} needs RabbitMQ on ${RABBITMQ.hostname}:${RABBITMQ.port} (${problem}): ${INSTALL_HINT}`;
  console.warn(`skipped: ${reason}`);
  return reason;
}

/** `rabbitmqctl` with `args`; its standard output. */
export async function rabbitmqctl(...args: string[]): Promise<string> {
  const { stdout } = await run('rabbitmqctl', ['-q', ...args], { timeout: 30_000 });
  return stdout;
}

export interface TestVhost {
  /** The vhost, or '/' when rabbitmqctl cannot run. */
  readonly vhost: string;
  /** A prefix for names (random when sharing '/'). */
  readonly prefix: string;
  /** Connection options for the connector. */
  readonly connection: { hostname: string; port: number; username: string; password: string; vhost: string };
  /** A plain client's connection into it. */
  open(): Promise<ChannelModel>;
  /** Ready plus unacknowledged messages of a queue. */
  backlog(queue: string): Promise<number>;
  /** Closes every client connection of the vhost, from the server's side (a dropped connection). */
  dropConnections(): Promise<void>;
  /** Removes the vhost (or the queues and exchanges under the prefix). */
  remove(): Promise<void>;
}

/** A fresh vhost for one test file. */
export async function createTestVhost(): Promise<TestVhost> {
  const id = randomBytes(6).toString('hex');
  let vhost = `sluice-test-${id}`;
  let prefix = '';
  try {
    await rabbitmqctl('add_vhost', vhost);
    await rabbitmqctl('set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*');
  } catch {
    vhost = '/';
    prefix = `sluice-test-${id}-`;
  }
  const connection = { ...RABBITMQ, vhost };
  const open = () => connect({ protocol: 'amqp', ...connection });
  return {
    vhost,
    prefix,
    connection,
    open,
    async backlog(queue) {
      const out = await rabbitmqctl('list_queues', '-p', vhost, 'name', 'messages_ready', 'messages_unacknowledged');
      for (const line of out.split('\n')) {
        const [name, ready, unacked] = line.trim().split(/\s+/);
        if (name === queue) return Number(ready) + Number(unacked);
      }
      throw new Error(`no queue '${queue}' in vhost '${vhost}'`);
    },
    async dropConnections() {
      await rabbitmqctl('close_all_connections', '-p', vhost, 'closed by a test');
    },
    async remove() {
      if (vhost !== '/') {
        await rabbitmqctl('delete_vhost', vhost);
        return;
      }
      // Names under the prefix in the default vhost: the tests record what they made.
      const model = await open();
      const channel = await model.createChannel();
      for (const q of made.queues) await channel.deleteQueue(q).catch(() => undefined);
      for (const e of made.exchanges) await channel.deleteExchange(e).catch(() => undefined);
      await model.close();
    },
  };
}

/** Queues and exchanges made in the default vhost, removed by `remove()` (a vhost of its own needs none of this). */
export const made = { queues: new Set<string>(), exchanges: new Set<string>() };
