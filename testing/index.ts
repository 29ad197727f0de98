export type { ActorHarnessOptions, HarnessRestartOptions, OtherActor } from './actorHarness.ts';
export { ActorHarness, testActor } from './actorHarness.ts';
export type {
  InputRecord,
  LateRecord,
  PipelineFactory,
  PipelineHarnessOptions,
  SendOptions,
  TimedInput,
} from './pipelineHarness.ts';
export { PipelineHarness, testPipeline } from './pipelineHarness.ts';
export { seededRandom } from './seededRandom.ts';
