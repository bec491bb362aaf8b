// Type definitions for signaling-client.js (served at /client/signaling-client.d.ts).
// Documentation: docs/client.md.

export declare const VERSION: string;

/** Any message: an object with its own `type`, as on the wire. */
export interface Message {
  type: string;
  [field: string]: unknown;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface ReconnectOptions {
  /** Upper bound of the first delay (ms); default 500. */
  initialDelayMs?: number;
  /** Upper bound of any delay (ms); default 30000. */
  maxDelayMs?: number;
  /** Growth of the bound per failed attempt; default 2. */
  backoffFactor?: number;
}

export interface SignalingClientOptions extends ReconnectOptions {
  /** The id to register (also the `sender` in rooms). */
  peerId: string;
  /** Authentication token, or a function giving one for each (re)connection. */
  token?: string | (() => string | Promise<string>);
  deviceType?: string;
  deviceInfo?: Record<string, unknown>;
  /** Keep offline messages on the server until every handler of them has run. */
  ack?: boolean;
  /** false: never reconnect; an object: backoff settings. Default true. */
  reconnect?: boolean | ReconnectOptions;
  /** Messages kept while reconnecting; beyond, send() throws SEND_QUEUE_FULL. Default 100. */
  maxQueue?: number;
  /** Silence (ms) after which the client sends a ping; default 25000. */
  pingIntervalMs?: number;
  /** Time (ms) a ping may go unanswered before the connection is dropped; default 10000. */
  pongTimeoutMs?: number;
  /** Time (ms) a connection attempt may take to be registered; default 10000. */
  connectTimeoutMs?: number;
  /** WebSocket constructor, for environments without a global one. */
  WebSocket?: unknown;
}

export interface RegisteredMessage extends Message {
  type: "registered";
  peerId: string;
  serverTime: number;
}

export interface JoinSuccessMessage extends Message {
  type: "join-success";
  roomId: string;
  userId: string;
  members: string[];
}

export interface LeaveSuccessMessage extends Message {
  type: "leave-success";
  roomId: string;
}

export interface PeerInfo {
  peerId: string;
  deviceType: string;
  deviceInfo: Record<string, unknown>;
  connectedAt: number;
}

export interface PeersListMessage extends Message {
  type: "peers-list";
  peers: PeerInfo[];
  count: number;
  total?: number;
  nextCursor?: string;
}

export interface ErrorMessage extends Message {
  type: "error";
  code: string;
  error: string;
  timestamp: number;
  messageId?: string;
  requestType?: string;
}

export interface OfflineMessage extends Message {
  type: "offline-message";
  messageId: string;
  originalMessage: Message;
  storedAt: number;
  deliveredAt: number;
}

export interface StateEvent extends Message {
  type: "state";
  state: ConnectionState;
  previous: ConnectionState;
  /** On "open": true when this is a reconnection. */
  reconnected?: boolean;
  /** On "reconnecting": the close code and reason, and the wait before the next attempt. */
  code?: number;
  reason?: string;
  delayMs?: number;
}

export interface ReplacedEvent extends Message {
  type: "replaced";
  code: 4001;
  reason: string;
}

export interface UnauthorizedEvent extends Message {
  type: "unauthorized";
  code: string | number;
  error: string;
}

export interface UndeliveredEvent extends Message {
  type: "undelivered";
  messages: Message[];
  reason: string;
}

export interface HandlerErrorEvent extends Message {
  type: "handler-error";
  error: unknown;
  message: Message;
}

export interface ConnectionErrorEvent extends Message {
  type: "connection-error";
  error: string;
}

export interface EventMap {
  state: StateEvent;
  replaced: ReplacedEvent;
  unauthorized: UnauthorizedEvent;
  undelivered: UndeliveredEvent;
  "handler-error": HandlerErrorEvent;
  "connection-error": ConnectionErrorEvent;
  registered: RegisteredMessage;
  "join-success": JoinSuccessMessage;
  "leave-success": LeaveSuccessMessage;
  "peers-list": PeersListMessage;
  "offline-message": OfflineMessage;
  error: ErrorMessage;
}

export type Handler<M> = (message: M) => void | Promise<void>;

export declare class SignalingError extends Error {
  constructor(code: string, message: string, reply?: ErrorMessage);
  /** A server error code, or SEND_QUEUE_FULL, CLOSED, NOT_CONNECTED, REPLACED. */
  code: string;
  /** The server's error message, when there is one. */
  reply?: ErrorMessage;
}

export declare class SignalingClient {
  constructor(url: string, options: SignalingClientOptions);
  readonly url: string;
  readonly peerId: string;
  readonly state: ConnectionState;
  readonly rooms: string[];
  readonly queued: number;
  connect(): Promise<RegisteredMessage>;
  on<K extends keyof EventMap>(type: K, handler: Handler<EventMap[K]>): this;
  on(type: string, handler: Handler<Message>): this;
  off<K extends keyof EventMap>(type: K, handler: Handler<EventMap[K]>): this;
  off(type: string, handler: Handler<Message>): this;
  send(to: string, message: Message): void;
  sendToRoom(roomId: string, message: Message, options?: { to?: string }): void;
  joinRoom(roomId: string): Promise<JoinSuccessMessage>;
  leaveRoom(roomId: string): Promise<LeaveSuccessMessage>;
  getPeers(options?: { limit?: number; cursor?: string | null }): Promise<PeersListMessage>;
  close(): void;
}

export interface PeerHandle {
  readonly pc: RTCPeerConnection;
  readonly peerId: string;
  readonly polite: boolean;
  /** Called with errors of negotiation; default: console.error. */
  onerror: ((error: unknown) => void) | null;
  /** Stop signaling for this peer (the RTCPeerConnection is left open). */
  close(): void;
}

export declare function connectPeer(
  client: SignalingClient,
  peerId: string,
  pc: RTCPeerConnection,
  options?: { polite?: boolean },
): PeerHandle;
