import type { Store, StoreBatch } from '../store/types.ts';

/**
 * @internal A piece of operator state that a checkpoint commits: it writes what changed since
 * the last checkpoint into the batch. A retired part (its operator stopped) writes its last
 * changes once more and is then dropped.
 */
export interface CheckpointPart {
  readonly dirty: boolean;
  write(batch: StoreBatch, namespace: string): void;
  readonly retired: boolean;
}

/**
 * @internal What an operator inside a pipeline of a checkpointed actor sees: where its state
 * lives, and how it joins the checkpoints. Set while the lane builds and subscribes its pipeline.
 */
export interface OperatorCheckpoint {
  readonly actor: string;
  readonly lane: number;
  readonly store: Store;
  /** The store namespace of the actor's operator state (`sluice.windows/<actor>`). */
  readonly namespace: string;
  register(part: CheckpointPart): void;
  /**
   * State an operator hands to the next instance of itself when its pipeline fails: what was
   * settled since the last checkpoint is in it, and would be lost if the new one read the store.
   */
  readonly handoff: Map<string, unknown>;
}

/** The store namespace of an actor's checkpointed operator state (window accumulators). */
export function operatorNamespace(actor: string): string {
  return `sluice.windows/${actor}`;
}

let active: OperatorCheckpoint | undefined;

/** @internal The checkpoint of the pipeline being built or subscribed now, if its actor has one. */
export function activeCheckpoint(): OperatorCheckpoint | undefined {
  return active;
}

/** @internal Runs `build` with `checkpoint` as the active one (pipeline construction and subscription). */
export function withCheckpoint<R>(checkpoint: OperatorCheckpoint | undefined, build: () => R): R {
  if (checkpoint === undefined && active === undefined) return build();
  const previous = active;
  active = checkpoint;
  try {
    return build();
  } finally {
    active = previous;
  }
}
