/**
 * `npx tsx test/services/kafka/prefetch.ts`: fetches the Kafka broker's jars into `.cache/kafka`
 * before the tests (`.ci/run` does), so no test file waits for Maven.
 */
import { ensureKafkaJars, KAFKA_VERSION } from './broker.ts';

const started = Date.now();
const libs = await ensureKafkaJars();
console.log(`Kafka ${KAFKA_VERSION} jars in ${libs} (${Date.now() - started} ms)`);
