/**
 * Helpers for the Kafka connector tests: records in with `@platformatic/kafka`'s producer, records
 * out read back with kafkajs (another client than the connector's, so a bug in one is not hidden
 * by the same bug in the other).
 */
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
  readonly key: string;
  readonly value: unknown;
  readonly headers?: Record<string, string>;
}

/** Produces JSON records (acks from all replicas), in sends of 500. */
export async function produce(bootstrap: string, topic: string, records: readonly TestRecord[]): Promise<void> {
  const producer = new Producer({
    clientId: 'test-producer',
    bootstrapBrokers: [bootstrap],
    serializers: stringSerializers,
  });
  try {
    for (let i = 0; i < records.length; i += 500) {
      await producer.send({
        messages: records.slice(i, i + 500).map((r) => ({
          topic,
          key: r.key,
          value: JSON.stringify(r.value),
          ...(r.headers === undefined ? {} : { headers: r.headers }),
        })),
      });
    }
  } finally {
    await producer.close();
  }
}

export interface ReadRecord {
  readonly partition: number;
  readonly offset: number;
  readonly key: string | undefined;
  readonly value: string;
  readonly headers: Record<string, string>;
}

/**
 * Reads a topic from the beginning until `expected` records came (or `timeoutMs` passed), then
 * `settleMs` more to catch records beyond the expected ones (a double must show).
 */
export async function readTopic(
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
