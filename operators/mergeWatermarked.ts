import { Observable } from 'rxjs';
import { WatermarkHub } from './watermarkHub.ts';
import { type Timed, Watermark } from './watermarks.ts';

/**
 * Merges timed streams into one, combining their watermarks as Flink combines the inputs of an
 * operator: envelopes pass on as they arrive (like RxJS `merge`), and the merged stream's
 * watermark is the minimum over the inputs that are not idle, emitted once each time it advances.
 * An input that completes stops counting; the merge completes when all inputs have.
 * Give each input its own `watermarks({ idleTimeoutMs })`, so a quiet input does not hold the
 * merged watermark back forever.
 *
 *     a:    --x-w(10)--------w(30)-|
 *     b:    ---------y-w(20)-----------w(40)-|
 *     out:  --x--------y-w(10)-w(20)---w(40)-|    (min over the inputs still open)
 *
 * @example mergeWatermarked(web$.pipe(watermarks(opts)), app$.pipe(watermarks(opts))).pipe(tumbling({ ... }))
 * @see WatermarkHub
 */
export function mergeWatermarked<T>(...sources: Observable<Timed<T>>[]): Observable<Timed<T>> {
  return new Observable<Timed<T>>((subscriber) => {
    const hub = new WatermarkHub({ onWatermark: (wm) => subscriber.next(wm) });
    const inputs = sources.map(() => hub.join());
    let open = sources.length;
    if (open === 0) {
      subscriber.complete();
      return undefined;
    }
    const subs = sources.map((source, i) => {
      const input = inputs[i] as ReturnType<WatermarkHub['join']>;
      return source.subscribe({
        next: (item) => {
          if (item instanceof Watermark) input.update(item);
          else {
            if (input.idle) input.activate();
            subscriber.next(item);
          }
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => {
          input.leave();
          if (--open === 0) subscriber.complete();
        },
      });
    });
    return () => {
      for (const sub of subs) sub.unsubscribe();
    };
  });
}
