/**
 * Helpers for the Kafka connector tests: records in with `@platformatic/kafka`'s producer, records
 * out read back with another client than the connector's, so a bug in one is not hidden by the
 * same bug in the other: kcat (librdkafka) for read_committed, kafkajs for read_uncommitted and
 * where kcat is missing outside CI.
 */
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { Admin, Producer, stringSerializers } from '@platformatic/kafka';
import { Kafka, logLevel } from 'kafkajs';

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';

export async function createTopic(bootstrap: string, topic: string, partitions: number): Promise<void> {
  const admin = new Admin({ clientId: 'test-admin', bootstrapBrokers: [bootstrap] });
  try {
    await admin.createTopics({ topics: [topic], partitions, replicas: 1 });
  } finally {
    await admin.close();
  }
}

export interface TestRecord {
  /** `null`: a record without a key. */
  readonly key: string | null;
  readonly value: unknown;
  readonly headers?: Record<string, string>;
  /** The record's timestamp (ms); the producer's clock when not given. */
  readonly timestamp?: number;
  /** The partition it goes to; the key's when not given. */
  readonly partition?: number;
}

/**
 * Produces JSON records in sends of 500 with an idempotent producer (a send retried after a
 * timeout on a loaded machine must not put a record in twice: the tests count), then checks that
 * the topic grew by exactly their number.
 */
export async function produce(bootstrap: string, topic: string, records: readonly TestRecord[]): Promise<void> {
  const before = await topicSize(bootstrap, topic);
  const producer = new Producer({
    clientId: 'test-producer',
    bootstrapBrokers: [bootstrap],
    serializers: stringSerializers,
    idempotent: true,
    autocreateTopics: true,
  });
  try {
    for (let i = 0; i < records.length; i += 500) {
      await producer.send({
        messages: records.slice(i, i + 500).map((r) => ({
          topic,
          ...(r.key === null ? {} : { key: r.key }),
          value: JSON.stringify(r.value),
          ...(r.headers === undefined ? {} : { headers: r.headers }),
          ...(r.timestamp === undefined ? {} : { timestamp: BigInt(r.timestamp) }),
          ...(r.partition === undefined ? {} : { partition: r.partition }),
        })),
      });
    }
  } finally {
    await producer.close();
  }
  const after = await topicSize(bootstrap, topic);
  if (after - before !== records.length)
    throw new Error(`producing ${records.length} records grew '${topic}' by ${after - before}`);
}

/** Records in a topic (high watermarks summed; the test topics are never truncated), 0 when it is missing. */
export async function topicSize(bootstrap: string, topic: string): Promise<number> {
  const admin = new Kafka({ brokers: [bootstrap], logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    if (!(await admin.listTopics()).includes(topic)) return 0;
    // Right after a topic is made its leaders may not be known yet (NOT_LEADER_FOR_PARTITION).
    for (let attempt = 1; ; attempt++) {
      try {
        const offsets = await admin.fetchTopicOffsets(topic);
        return offsets.reduce((sum, o) => sum + Number(o.high), 0);
      } catch (error) {
        if (attempt >= 20) throw error;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  } finally {
    await admin.disconnect();
  }
}

export interface ReadRecord {
  readonly partition: number;
  readonly offset: number;
  readonly key: string | undefined;
  readonly value: string;
  readonly headers: Record<string, string>;
}

let kcat: boolean | undefined;
/** Whether kcat is on PATH; under CI it must be (`.ci/run` installs it). */
export function kcatPresent(): boolean {
  if (kcat === undefined) {
    try {
      execFileSync('kcat', ['-V'], { stdio: 'ignore' });
      kcat = true;
    } catch {
      kcat = false;
    }
  }
  return kcat || process.env.CI === 'true';
}

/**
 * Reads a topic from the beginning until `expected` records came (or `timeoutMs` passed), then
 * `settleMs` more to catch records beyond the expected ones (a double must show). read_committed
 * (the default) reads with kcat: kafkajs 2.2.4 lets records of an aborted transaction through when
 * it began before another aborted transaction of the partition ended (it takes the broker's list
 * of aborted transactions, which is in the order they ended, as ordered by first offset), and that
 * would count aborted output as a double.
 */
export async function readTopic(
  bootstrap: string,
  topic: string,
  options: { expected: number; readCommitted?: boolean; timeoutMs?: number; settleMs?: number },
): Promise<ReadRecord[]> {
  if (options.readCommitted === false || !kcatPresent()) return readWithKafkajs(bootstrap, topic, options);
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  let out = await readWithKcat(bootstrap, topic, 'read_committed');
  while (out.length < options.expected && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    out = await readWithKcat(bootstrap, topic, 'read_committed');
  }
  await new Promise((r) => setTimeout(r, options.settleMs ?? 300));
  return readWithKcat(bootstrap, topic, 'read_committed');
}

/** A topic from the beginning to its end (for read_committed, its last stable offset) with kcat. */
export async function readWithKcat(
  bootstrap: string,
  topic: string,
  isolation: 'read_committed' | 'read_uncommitted',
): Promise<ReadRecord[]> {
  // A test reading the log as kcat sees it has no other oracle: it fails saying what to install.
  if (!kcatPresent()) throw new Error('this test reads the topic with kcat, which is missing: apt-get install kcat');
  const { stdout } = await promisify(execFile)(
    'kcat',
    [
      ...['-C', '-b', bootstrap, '-t', topic, '-o', 'beginning', '-e', '-q', '-J'],
      ...['-X', `isolation.level=${isolation}`, '-X', 'auto.offset.reset=earliest'],
    ],
    { maxBuffer: 256 << 20, timeout: 60_000 },
  );
  return stdout
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const m = JSON.parse(line) as {
        partition: number;
        offset: number;
        key: string | null;
        payload: string | null;
        headers?: string[];
      };
      const headers: Record<string, string> = {};
      const h = m.headers ?? [];
      for (let i = 0; i + 1 < h.length; i += 2) headers[h[i] as string] = h[i + 1] as string;
      return {
        partition: m.partition,
        offset: m.offset,
        key: m.key ?? undefined,
        value: m.payload ?? '',
        headers,
      };
    });
}

async function readWithKafkajs(
  bootstrap: string,
  topic: string,
  options: { expected: number; readCommitted?: boolean; timeoutMs?: number; settleMs?: number },
): Promise<ReadRecord[]> {
  const kafka = new Kafka({ clientId: 'test-reader', brokers: [bootstrap], logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({
    groupId: `reader-${topic}-${Math.random().toString(36).slice(2)}`,
    readUncommitted: options.readCommitted === false,
    maxWaitTimeInMs: 100,
  });
  const out: ReadRecord[] = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(message.headers ?? {})) headers[k] = String(v);
        out.push({
          partition,
          offset: Number(message.offset),
          key: message.key?.toString(),
          value: message.value?.toString() ?? '',
          headers,
        });
      },
    });
    const deadline = Date.now() + (options.timeoutMs ?? 20_000);
    while (out.length < options.expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, options.settleMs ?? 300));
  } finally {
    await consumer.disconnect();
  }
  return out;
}

/** Polls `check` until it holds or `timeoutMs` passes (real time: the broker runs on its own). */
export async function eventually(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
