import type { ActorCell } from '../actors/actorCell.ts';
import type { Bus } from '../bus/bus.ts';
import type { Clock } from '../clock.ts';
import type { Store } from '../store/types.ts';
import type { StreamImpl } from '../streams/stream.ts';
import type { Telemetry } from '../telemetry.ts';

/** @internal What the admin API reads and steers of a runtime. */
export interface AdminHost {
  readonly bus: Bus;
  readonly clock: Clock;
  readonly telemetry: Telemetry;
  readonly store: Store | undefined;
  readonly stopped: boolean;
  actors(): readonly ActorCell[];
  streams(): readonly StreamImpl[];
}
