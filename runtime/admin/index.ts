export type { AuditEntry, Caller } from './audit.ts';
export type { DeadLetterSubjectInfo } from './deadLetterBuffer.ts';
export { REPLAYED_FROM_HEADER } from './deadLetterBuffer.ts';
export type { ServeOptions } from './options.ts';
export { MIN_TOKEN_LENGTH } from './options.ts';
export type { AdminServer } from './server.ts';
export { MAX_BODY_BYTES } from './server.ts';
export type { Backpressure } from './views.ts';
export { BACKPRESSURE_HIGH, BACKPRESSURE_LOW, MAX_PAGE, MAX_PAGE_CHARS, MAX_SCAN, MAX_SCAN_MS } from './views.ts';
