export { LateDataError } from '../runtime/errors.ts';
export type { Aggregate, MeanAcc, PickAcc } from './aggregate.ts';
export { agg } from './aggregate.ts';
export type { ApproxDistinctOptions, Distinctable } from './approxDistinct.ts';
export { approxDistinct, DEFAULT_APPROX_DISTINCT_OPTIONS, HyperLogLog } from './approxDistinct.ts';
export { eventTime } from './eventTime.ts';
export { keyBy } from './keyBy.ts';
export type { MapAsyncOptions } from './mapAsync.ts';
export { mapAsync } from './mapAsync.ts';
export { mergeWatermarked } from './mergeWatermarked.ts';
export type { QuantileSketch, QuantilesOptions, QuantileValues } from './quantiles.ts';
export { DEFAULT_QUANTILES_OPTIONS, quantiles } from './quantiles.ts';
export type { WatermarkChannel, WatermarkHubOptions } from './watermarkHub.ts';
export { WatermarkHub } from './watermarkHub.ts';
export type { Timed, WatermarksOptions } from './watermarks.ts';
export { DEFAULT_WATERMARKS_OPTIONS, isWatermark, Watermark, watermarks } from './watermarks.ts';
export type { CountWindowOptions } from './windows/countWindow.ts';
export { countWindow } from './windows/countWindow.ts';
export type { SessionOptions } from './windows/session.ts';
export { session } from './windows/session.ts';
export type { SlidingOptions } from './windows/sliding.ts';
export { sliding } from './windows/sliding.ts';
export type { TumblingOptions } from './windows/tumbling.ts';
export { tumbling } from './windows/tumbling.ts';
export type {
  EarlyFiring,
  Firing,
  LateReason,
  WindowOperator,
  WindowOptions,
  WindowResult,
  WindowStats,
} from './windows/types.ts';
export { DEFAULT_WINDOW_OPTIONS, firings, lateReasons, WINDOW_HEADERS, WindowResultError } from './windows/types.ts';
