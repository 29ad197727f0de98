/**
 * The WebSocket gateway (`sluice/connectors/websocket`): browsers subscribe and publish to bus
 * subjects over one WebSocket each, within the permissions their token gives them. Needs the
 * optional peer dependency `ws`. See docs/websocket.md.
 */

export type {
  GatewayAuthenticate,
  GatewayAuthRequest,
  GatewayIdentity,
  GatewayToken,
  WebSocketGatewayOptions,
} from './config.ts';
export { DEFAULT_WEBSOCKET_GATEWAY_OPTIONS } from './config.ts';
export type { GatewayStats, WebSocketGateway } from './gateway.ts';
export { websocketGateway } from './gateway.ts';
export type { FrameId } from './protocol.ts';
export { BEARER_PREFIX, CloseCode, GATEWAY_PROTOCOL } from './protocol.ts';
