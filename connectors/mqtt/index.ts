/**
 * The MQTT connector (`sluice/connectors/mqtt`): a source from topic filters and a sink publishing
 * at QoS 0, 1 or 2. Needs the optional peer dependency `mqtt`. See docs/mqtt.md.
 */

export type { MqttConnectionOptions } from './config.ts';
export { subjectToTopic, topicProblem, topicToSubject } from './config.ts';
export { MQTT_HEADERS, MQTT_PROPERTIES } from './fields.ts';
export type { MqttSinkOptions, MqttSinkStats } from './sink.ts';
export { MqttSink, mqttSink, mqttSinkNamespace } from './sink.ts';
export type { MqttSourceOptions, MqttSourceStats, SourceHost } from './source.ts';
export { MqttSource, mqttSource } from './source.ts';
