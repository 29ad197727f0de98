export type { ActorHarnessOptions, OtherActor } from './actorHarness.ts';
export { ActorHarness, testActor } from './actorHarness.ts';
export type { InputRecord, PipelineFactory, PipelineHarnessOptions, SendOptions } from './pipelineHarness.ts';
export { PipelineHarness, testPipeline } from './pipelineHarness.ts';
