// signaling-client.js: the browser (and Node) client of the signaling server.
// One ES module, no dependencies, no build step. Documentation: docs/client.md;
// types: signaling-client.d.ts beside this file. Served by the server at
// /client/signaling-client.js.

/** Version of this client: the version of the server package that ships it. */
export const VERSION = "0.1.0";

const DEFAULTS = Object.freeze({
  ack: false,
  reconnect: true,
  initialDelayMs: 500,
  maxDelayMs: 30000,
  backoffFactor: 2,
  maxQueue: 100,
  pingIntervalMs: 25000,
  pongTimeoutMs: 10000,
  connectTimeoutMs: 10000,
});

/** WebSocket readyState of an open connection. */
const OPEN = 1;
/** connectPeer: how long ICE gathering may go without a single candidate. */
const GATHERING_STALL_MS = 5000;
/** connectPeer: ICE restarts for stalled gathering before it gives up. */
const MAX_STALL_RESTARTS = 3;
/** connectPeer: how long an offer may wait for its answer before it is sent again. */
const OFFER_RESEND_MS = 5000;
/** connectPeer: how often one offer is sent again at most. */
const MAX_OFFER_RESENDS = 3;

/** The longest wait a server-shutdown message can impose (10 minutes). */
const MAX_SHUTDOWN_DELAY_MS = 600000;

/** Close codes and error codes after which reconnecting cannot help. */
const CLOSE_REPLACED = 4001;
const CLOSE_POLICY = 1008;
const AUTH_ERRORS = new Set(["UNAUTHORIZED", "FORBIDDEN"]);
/** Error codes of a `register` that no retry will fix. */
const FATAL_REGISTER_ERRORS = new Set([
  "UNAUTHORIZED", "FORBIDDEN", "INVALID_FIELD", "IDENTITY_MISMATCH",
]);

/** An error of this client or a server error reply (`code` says which). */
export class SignalingError extends Error {
  /**
   * @param {string} code a server error code (`NOT_IN_ROOM`, ...) or one of
   *   this client's: `SEND_QUEUE_FULL`, `CLOSED`, `NOT_CONNECTED`, `REPLACED`.
   * @param {string} message human-readable text
   * @param {object} [reply] the server's error message, when there is one
   */
  constructor(code, message, reply) {
    super(message);
    this.name = "SignalingError";
    this.code = code;
    this.reply = reply;
  }
}

/**
 * A connection to the signaling server that registers a peer id, relays
 * messages, keeps its rooms and reconnects by itself.
 */
export class SignalingClient {
  /**
   * @param {string} url `wss://host/…` or `ws://…` (an `https:`/`http:` URL
   *   or a path is turned into the matching WebSocket URL).
   * @param {object} options see docs/client.md
   */
  constructor(url, options = {}) {
    if (!options || typeof options.peerId !== "string" || !options.peerId) {
      throw new TypeError("SignalingClient needs options.peerId (a non-empty string)");
    }
    const reconnect = options.reconnect === undefined ? DEFAULTS.reconnect : options.reconnect;
    this.url = websocketUrl(url);
    this.peerId = options.peerId;
    this._options = {
      ...DEFAULTS,
      ...options,
      ...(typeof reconnect === "object" && reconnect !== null ? reconnect : {}),
      reconnect: reconnect !== false,
    };
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    }
    this._handlers = new Map();
    this._state = "closed";
    this._ws = null;
    this._registered = false;
    this._everRegistered = false;
    this._final = false;
    this._attempt = 0;
    this._nextDelayMs = null;
    this._reconnectTimer = null;
    this._livenessTimer = null;
    this._connectTimer = null;
    this._lastHeard = 0;
    this._pingSentAt = null;
    this._queue = [];
    this._rooms = new Set();
    this._pending = [];
    this._requestSeq = 0;
    this._connecting = null;
    this._acks = [];
    this._ackScheduled = false;
  }

  /** `"connecting"`, `"open"`, `"reconnecting"` or `"closed"`. */
  get state() {
    return this._state;
  }

  /** The rooms this client is in (and rejoins after a reconnection). */
  get rooms() {
    return [...this._rooms];
  }

  /** Messages waiting to be sent once the connection is back. */
  get queued() {
    return this._queue.length;
  }

  /**
   * Open the connection and register. Resolves with the `registered`
   * message; with reconnection on, failed attempts are retried until then.
   * Rejects on an authentication refusal, a takeover (4001) or close().
   */
  connect() {
    if (this._final) {
      return Promise.reject(new SignalingError("CLOSED", "this client was closed"));
    }
    if (this._connecting) return this._connecting.promise;
    this._connecting = deferred();
    this._setState("connecting");
    this._open();
    return this._connecting.promise;
  }

  /** Call `handler(message)` for every message of `type` (`"*"`: all server messages). */
  on(type, handler) {
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return this;
  }

  /** Stop calling `handler` for `type`. */
  off(type, handler) {
    const handlers = this._handlers.get(type);
    if (handlers) handlers.delete(handler);
    return this;
  }

  /**
   * Send `message` (an object with its own `type`) to peer `to`; it arrives
   * with `from` set to this client's id. While reconnecting it is queued.
   * @throws {SignalingError} `SEND_QUEUE_FULL`, `CLOSED` or `NOT_CONNECTED`
   */
  send(to, message) {
    checkId(to, "to");
    this._submit({ ...checkMessage(message), to });
  }

  /**
   * Send `message` to every other member of `roomId`, or only to `to`.
   * @throws {SignalingError} as send()
   */
  sendToRoom(roomId, message, { to } = {}) {
    checkId(roomId, "roomId");
    const out = { ...checkMessage(message), roomId };
    if (to !== undefined) {
      checkId(to, "to");
      out.to = to;
    }
    this._submit(out);
  }

  /**
   * Join `roomId`; resolves with the `join-success` message (its `members`
   * are the others), rejects with a SignalingError on an error reply.
   * Rooms are joined again after every reconnection.
   */
  joinRoom(roomId) {
    checkId(roomId, "roomId");
    return this._request(
      { type: "join-room", roomId, sender: this.peerId },
      (reply) => reply.type === "join-success" && reply.roomId === roomId,
    ).then((reply) => {
      this._rooms.add(roomId);
      return reply;
    });
  }

  /** Leave `roomId`; resolves with `leave-success` (also when not in it any more). */
  leaveRoom(roomId) {
    checkId(roomId, "roomId");
    this._rooms.delete(roomId);
    return this._request(
      { type: "leave-room", roomId },
      (reply) => reply.type === "leave-success" && reply.roomId === roomId,
    ).catch((error) => {
      if (error && error.code === "NOT_IN_ROOM") return { type: "leave-success", roomId };
      throw error;
    });
  }

  /** The registered peers; resolves with the `peers-list` message. */
  getPeers({ limit, cursor } = {}) {
    const request = { type: "get-peers" };
    if (limit !== undefined) request.limit = limit;
    if (cursor !== undefined && cursor !== null) request.cursor = cursor;
    return this._request(request, (reply) => reply.type === "peers-list");
  }

  /**
   * Close for good: no reconnection. Pending requests reject with `CLOSED`;
   * messages still queued are reported by an `undelivered` event.
   */
  close() {
    this._finish("CLOSED", "the client was closed", 1000, "client closed");
  }

  // -- connection ----------------------------------------------------------

  _open() {
    this._clearTimers();
    this._registered = false;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (error) {
      this._emit({ type: "connection-error", error: String(error) });
      this._socketGone(1006, String(error));
      return;
    }
    this._ws = ws;
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && !this._registered) this._drop(ws, "no registration in time");
    }, this._options.connectTimeoutMs);
    ws.onopen = () => {
      if (this._ws === ws) this._register(ws);
    };
    ws.onmessage = (event) => {
      if (this._ws === ws) this._receive(event.data);
    };
    ws.onerror = () => {
      if (this._ws === ws) this._emit({ type: "connection-error", error: "WebSocket error" });
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._socketGone(event.code, event.reason);
    };
  }

  async _register(ws) {
    const message = { type: "register", peerId: this.peerId };
    const { deviceType, deviceInfo, ack, token } = this._options;
    if (deviceType !== undefined) message.deviceType = deviceType;
    if (deviceInfo !== undefined) message.deviceInfo = deviceInfo;
    if (ack) message.ack = true;
    if (token !== undefined) {
      try {
        message.token = typeof token === "function" ? await token() : token;
      } catch (error) {
        this._emit({ type: "connection-error", error: `token: ${error}` });
        this._drop(ws, "no token");
        return;
      }
      if (this._ws !== ws) return;
    }
    this._lastHeard = now();
    this._write(message);
  }

  _onRegistered(message) {
    const reconnected = this._everRegistered;
    this._registered = true;
    this._everRegistered = true;
    this._attempt = 0;
    this._nextDelayMs = null;
    clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._startLiveness();
    // Order matters: rooms first, then requests and messages that may need them.
    for (const roomId of this._rooms) {
      if (!this._pending.some((p) => p.message.type === "join-room" && p.message.roomId === roomId)) {
        this._write({ type: "join-room", roomId, sender: this.peerId });
      }
    }
    for (const pending of this._pending) this._write(pending.message);
    const queue = this._queue;
    this._queue = [];
    for (const queued of queue) this._write(queued);
    this._setState("open", { reconnected });
    if (this._connecting) {
      this._connecting.resolve(message);
      this._connecting.settled = true;
    }
  }

  _socketGone(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._registered = false;
    this._clearTimers();
    if (ws) detach(ws);
    if (this._final) return;
    if (code === CLOSE_REPLACED) {
      this._emit({ type: "replaced", code, reason });
      this._finish("REPLACED", "another connection took over this peer id", null, reason);
      return;
    }
    if (code === CLOSE_POLICY) {
      this._emit({ type: "unauthorized", code, error: reason || "refused by policy" });
      this._finish("UNAUTHORIZED", reason || "refused by policy", null, reason);
      return;
    }
    if (!this._options.reconnect) {
      this._finish("CLOSED", `connection closed (${code})`, null, reason);
      return;
    }
    const delayMs = this._nextDelayMs !== null ? this._nextDelayMs : this._backoff();
    this._nextDelayMs = null;
    this._setState("reconnecting", { code, reason, delayMs });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (!this._final) this._open();
    }, delayMs);
  }

  /** Exponential backoff with full jitter: uniform in [0, min(max, initial * factor^n)). */
  _backoff() {
    const { initialDelayMs, maxDelayMs, backoffFactor } = this._options;
    const ceiling = Math.min(maxDelayMs, initialDelayMs * Math.pow(backoffFactor, this._attempt));
    this._attempt += 1;
    return Math.floor(Math.random() * ceiling);
  }

  /** Abandon a socket that is dead or useless and go on as if it had closed. */
  _drop(ws, reason) {
    try {
      ws.close(4000, reason);
    } catch (error) {
      // already closing
    }
    this._socketGone(1006, reason);
  }

  _finish(code, text, closeCode, reason) {
    if (this._final) return;
    this._final = true;
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      detach(ws);
      if (closeCode !== null) {
        try {
          ws.close(closeCode, reason || "");
        } catch (error) {
          // already closing
        }
      }
    }
    const error = new SignalingError(code, text);
    for (const pending of this._pending) pending.reject(error);
    this._pending = [];
    if (this._queue.length) {
      const messages = this._queue;
      this._queue = [];
      this._emit({ type: "undelivered", messages, reason: code });
    }
    if (this._connecting && !this._connecting.settled) this._connecting.reject(error);
    this._setState("closed", { reason: code });
  }

  _clearTimers() {
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._connectTimer);
    clearInterval(this._livenessTimer);
    this._reconnectTimer = this._connectTimer = this._livenessTimer = null;
  }

  // -- liveness --------------------------------------------------------------

  /**
   * Browsers neither expose WebSocket pings nor notice a dead link quickly:
   * after `pingIntervalMs` without a message a `ping` goes out, and when
   * nothing comes back within `pongTimeoutMs` the connection is dropped.
   */
  _startLiveness() {
    clearInterval(this._livenessTimer);
    this._lastHeard = now();
    this._pingSentAt = null;
    const { pingIntervalMs, pongTimeoutMs } = this._options;
    const tick = Math.max(50, Math.min(pingIntervalMs, pongTimeoutMs) / 4);
    const ws = this._ws;
    this._livenessTimer = setInterval(() => {
      if (this._ws !== ws || !this._registered) return;
      const t = now();
      if (this._pingSentAt !== null) {
        if (t - this._pingSentAt >= pongTimeoutMs) {
          this._emit({ type: "connection-error", error: "no pong from the server" });
          this._drop(ws, "no pong");
        }
      } else if (t - this._lastHeard >= pingIntervalMs) {
        this._pingSentAt = t;
        this._write({ type: "ping" });
      }
    }, tick);
  }

  // -- sending ---------------------------------------------------------------

  _write(message) {
    this._ws.send(JSON.stringify(message));
  }

  /** Registered on a socket that still takes messages (not closing). */
  _sendable() {
    return this._registered && this._ws !== null && this._ws.readyState === OPEN;
  }

  _submit(message) {
    if (this._sendable()) {
      this._write(message);
      return;
    }
    if (this._final) {
      throw new SignalingError("CLOSED", "this client was closed");
    }
    if (!this._connecting) {
      throw new SignalingError("NOT_CONNECTED", "call connect() before sending");
    }
    if (this._queue.length >= this._options.maxQueue) {
      throw new SignalingError(
        "SEND_QUEUE_FULL",
        `${this._queue.length} messages already wait for the connection to come back`,
      );
    }
    this._queue.push(message);
  }

  _request(message, matches) {
    if (this._final) {
      return Promise.reject(new SignalingError("CLOSED", "this client was closed"));
    }
    if (!this._connecting) {
      return Promise.reject(new SignalingError("NOT_CONNECTED", "call connect() first"));
    }
    this._requestSeq += 1;
    const request = { ...message, messageId: `sc-${this._requestSeq}` };
    const pending = { message: request, matches, ...deferred() };
    const done = pending.promise.finally(() => {
      this._pending = this._pending.filter((p) => p !== pending);
    });
    this._pending.push(pending);
    if (this._sendable()) this._write(request);
    return done;
  }

  // -- receiving -------------------------------------------------------------

  _receive(data) {
    this._lastHeard = now();
    this._pingSentAt = null;
    let message;
    try {
      message = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch (error) {
      return;
    }
    if (!message || typeof message.type !== "string") return;
    switch (message.type) {
      case "registered":
        if (!this._registered) this._onRegistered(message);
        break;
      case "server-shutdown":
        if (Number.isFinite(message.reconnectAfterMs) && message.reconnectAfterMs >= 0) {
          this._nextDelayMs = Math.min(message.reconnectAfterMs, MAX_SHUTDOWN_DELAY_MS);
        }
        break;
      case "error":
        if (this._settleRequestError(message)) return;
        if (!this._registered && message.requestType === "register") {
          this._registerRefused(message);
          return;
        }
        break;
      default:
        this._settleRequest(message);
    }
    if (message.type === "offline-message" && this._options.ack) {
      this._dispatchThenAck(message);
      return;
    }
    this._emit(message);
  }

  _registerRefused(message) {
    if (AUTH_ERRORS.has(message.code)) {
      this._emit({ type: "unauthorized", code: message.code, error: message.error });
    }
    this._emit(message);
    if (FATAL_REGISTER_ERRORS.has(message.code)) {
      this._finish(message.code, message.error || message.code, 1000, "registration refused");
    } else if (this._ws) {
      // RATE_LIMITED, UNAVAILABLE...: try again after a backoff.
      this._drop(this._ws, `registration failed: ${message.code}`);
    }
  }

  _settleRequest(message) {
    const pending = this._pending.find((p) => p.matches(message));
    if (pending) pending.resolve(message);
  }

  _settleRequestError(message) {
    if (typeof message.messageId !== "string") return false;
    const pending = this._pending.find((p) => p.message.messageId === message.messageId);
    if (!pending) return false;
    pending.reject(new SignalingError(message.code, message.error || message.code, message));
    return true;
  }

  /** With `ack: true`: acknowledge an offline message once every handler has run. */
  async _dispatchThenAck(message) {
    try {
      await Promise.all(this._call(message));
    } catch (error) {
      this._report(error, message);
      return; // not acknowledged: it comes again at the next registration
    }
    if (typeof message.messageId !== "string") return;
    this._acks.push(message.messageId);
    if (this._ackScheduled) return;
    this._ackScheduled = true;
    queueMicrotask(() => {
      this._ackScheduled = false;
      const messageIds = this._acks;
      this._acks = [];
      if (this._sendable()) this._write({ type: "ack", messageIds });
    });
  }

  _emit(message) {
    for (const result of this._call(message)) {
      result.catch((error) => this._report(error, message));
    }
  }

  /** Run every handler of `message`; a promise for each (handlers may be async). */
  _call(message) {
    const results = [];
    for (const key of [message.type, "*"]) {
      const handlers = this._handlers.get(key);
      if (!handlers) continue;
      for (const handler of [...handlers]) {
        try {
          results.push(Promise.resolve(handler(message)));
        } catch (error) {
          results.push(Promise.reject(error));
        }
      }
    }
    return results;
  }

  _report(error, message) {
    if (message.type === "handler-error") {
      console.error("signaling-client: handler-error handler failed", error);
      return;
    }
    const handlers = this._handlers.get("handler-error");
    if (handlers && handlers.size) {
      this._emit({ type: "handler-error", error, message });
    } else {
      console.error(`signaling-client: a "${message.type}" handler failed`, error);
    }
  }

  _setState(state, detail = {}) {
    const previous = this._state;
    if (previous === state && state !== "reconnecting") return;
    this._state = state;
    this._emit({ type: "state", state, previous, ...detail });
  }
}

/**
 * Wire an RTCPeerConnection to `client` for the peer `peerId` with the W3C
 * "perfect negotiation" pattern: offers and answers (`offer`/`answer`),
 * trickled `ice-candidate`s, offer collisions settled by the `polite` side
 * (exactly one of the two peers must be polite), ICE restarted when the
 * connection fails and after the signaling connection came back.
 *
 * Returns a handle: `{pc, peerId, polite, close()}`; close() stops the
 * signaling for this peer (it does not close `pc`).
 */
export function connectPeer(client, peerId, pc, { polite = false } = {}) {
  checkId(peerId, "peerId");
  let makingOffer = false;
  let ignoreOffer = false;
  let settingRemoteAnswer = false;
  let closed = false;
  let lastLocalDescriptionAt = 0;
  let lastCandidateAt = 0;
  let stallTimer = null;
  let stallRestarts = 0;
  let resendTimer = null;
  // Signaling messages are applied strictly one after another: a candidate
  // must never overtake the description it belongs to.
  let chain = Promise.resolve();

  const signal = (message) => {
    if (closed) return;
    try {
      client.send(peerId, message);
    } catch (error) {
      report(error);
    }
  };
  const report = (error) => {
    if (typeof handle.onerror === "function") handle.onerror(error);
    else console.error(`signaling-client: connectPeer(${peerId})`, error);
  };

  let offering = Promise.resolve();
  const onNegotiationNeeded = () => {
    offering = (async () => {
      try {
        makingOffer = true;
        await pc.setLocalDescription();
        lastLocalDescriptionAt = Date.now();
        const description = pc.localDescription;
        signal({ type: description.type, [description.type]: plain(description) });
      } catch (error) {
        report(error);
      } finally {
        makingOffer = false;
      }
    })();
  };

  const onIceCandidate = ({ candidate }) => {
    lastCandidateAt = Date.now();
    if (candidate) signal({ type: "ice-candidate", candidate: candidate.toJSON() });
  };

  const onIceStateChange = () => {
    if (pc.iceConnectionState === "failed") pc.restartIce();
    if (pc.iceConnectionState === "connected") stallRestarts = 0;
  };

  // A safety net: Chromium (156) can leave ICE gathering running without
  // ever producing a candidate after an offer collision; the call then
  // never starts. A negotiation that settled but gathered nothing for
  // GATHERING_STALL_MS restarts ICE (a few times at most).
  const onSignalingStateChange = () => {
    clearTimeout(stallTimer);
    clearTimeout(resendTimer);
    if (pc.signalingState === "have-local-offer") resendUnanswered(pc.localDescription.sdp, 0);
    if (pc.signalingState !== "stable") return;
    stallTimer = setTimeout(() => {
      if (closed || pc.signalingState !== "stable" || pc.iceGatheringState !== "gathering") return;
      if (lastCandidateAt >= lastLocalDescriptionAt || stallRestarts >= MAX_STALL_RESTARTS) return;
      stallRestarts += 1;
      pc.restartIce();
    }, GATHERING_STALL_MS);
  };

  // An offer that gets no answer was lost, or ignored by the impolite side
  // of a collision whose own offer the polite side never got: the same
  // offer is sent again (a duplicate is answered again, and the second
  // answer dropped as stale).
  const resendUnanswered = (sdp, sent) => {
    resendTimer = setTimeout(() => {
      if (closed || pc.signalingState !== "have-local-offer" || sent >= MAX_OFFER_RESENDS
          || !pc.localDescription || pc.localDescription.sdp !== sdp) return;
      signal({ type: "offer", offer: plain(pc.localDescription) });
      resendUnanswered(sdp, sent + 1);
    }, OFFER_RESEND_MS);
  };

  const applyDescription = async (description) => {
    const readyForOffer =
      !makingOffer && (pc.signalingState === "stable" || settingRemoteAnswer);
    const collision = description.type === "offer" && !readyForOffer;
    ignoreOffer = !polite && collision;
    if (ignoreOffer) return;
    // An answer to an offer rolled back after a reconnection: stale.
    if (description.type === "answer" && pc.signalingState === "stable") return;
    if (collision) {
      // Polite: let our own offer finish first; setRemoteDescription then
      // rolls it back. Rolled back while its setLocalDescription was still
      // running, Chromium (156) sometimes never gathered candidates again:
      // about one call in twenty stayed "new".
      await offering;
    }
    settingRemoteAnswer = description.type === "answer";
    try {
      await pc.setRemoteDescription(description);
    } finally {
      settingRemoteAnswer = false;
    }
    if (description.type === "offer") {
      await pc.setLocalDescription();
      lastLocalDescriptionAt = Date.now();
      const answer = pc.localDescription;
      signal({ type: answer.type, [answer.type]: plain(answer) });
    }
  };

  // Candidates of a description that never arrived (lost in an outage) or
  // of an earlier ICE generation are dropped; others must apply.
  const applyCandidate = async (candidate) => {
    if (!pc.remoteDescription) return;
    try {
      await pc.addIceCandidate(candidate);
    } catch (error) {
      const stale = candidate.usernameFragment
        && !pc.remoteDescription.sdp.includes(`a=ice-ufrag:${candidate.usernameFragment}`);
      if (!ignoreOffer && !stale) throw error;
    }
  };

  const onSignal = (message) => {
    if (closed || message.from !== peerId) return;
    let step = null;
    if ((message.type === "offer" || message.type === "answer") && message[message.type]) {
      const description = message[message.type];
      step = () => applyDescription({ type: message.type, sdp: description.sdp });
    } else if (message.type === "ice-candidate" && message.candidate) {
      step = () => applyCandidate(message.candidate);
    }
    if (step) {
      chain = chain.then(() => (closed || pc.signalingState === "closed" ? null : step())).catch(report);
    }
  };

  // Back after a signaling outage: what was sent meanwhile may be lost (an
  // offer, an answer, candidates). Unless the call is up, start over with
  // fresh ICE credentials, dropping an offer that may never have arrived.
  const onState = (event) => {
    if (event.state !== "open" || !event.reconnected || closed) return;
    chain = chain.then(async () => {
      await offering;
      if (closed || pc.signalingState === "closed" || pc.connectionState === "connected") return;
      if (pc.signalingState === "have-local-offer") {
        // Our offer may never have arrived: replace it by a new one. (Not a
        // rollback: Chromium then keeps asking for negotiation for ever when
        // the first offer carried a data channel.)
        makingOffer = true;
        try {
          await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
          lastLocalDescriptionAt = Date.now();
          signal({ type: "offer", offer: plain(pc.localDescription) });
        } finally {
          makingOffer = false;
        }
      } else if (pc.currentLocalDescription) {
        pc.restartIce();
      }
    }).catch(report);
  };

  pc.addEventListener("negotiationneeded", onNegotiationNeeded);
  pc.addEventListener("icecandidate", onIceCandidate);
  pc.addEventListener("iceconnectionstatechange", onIceStateChange);
  pc.addEventListener("signalingstatechange", onSignalingStateChange);
  for (const type of ["offer", "answer", "ice-candidate"]) client.on(type, onSignal);
  client.on("state", onState);

  const handle = {
    pc,
    peerId,
    polite,
    onerror: null,
    close() {
      if (closed) return;
      closed = true;
      pc.removeEventListener("negotiationneeded", onNegotiationNeeded);
      pc.removeEventListener("icecandidate", onIceCandidate);
      pc.removeEventListener("iceconnectionstatechange", onIceStateChange);
      pc.removeEventListener("signalingstatechange", onSignalingStateChange);
      clearTimeout(stallTimer);
      clearTimeout(resendTimer);
      for (const type of ["offer", "answer", "ice-candidate"]) client.off(type, onSignal);
      client.off("state", onState);
    },
  };
  return handle;
}

// -- utilities -----------------------------------------------------------------

function websocketUrl(url) {
  if (typeof url !== "string" || !url) throw new TypeError("url must be a string");
  if (/^wss?:\/\//i.test(url)) return url;
  const base = globalThis.location ? globalThis.location.href : undefined;
  const parsed = new URL(url, base);
  if (parsed.protocol === "https:") parsed.protocol = "wss:";
  else if (parsed.protocol === "http:") parsed.protocol = "ws:";
  return parsed.toString();
}

function checkId(value, name) {
  if (typeof value !== "string" || !value) {
    throw new TypeError(`${name} must be a non-empty string`);
  }
}

function checkMessage(message) {
  if (!message || typeof message !== "object" || typeof message.type !== "string") {
    throw new TypeError("a message is an object with a string 'type'");
  }
  return message;
}

function plain(description) {
  return { type: description.type, sdp: description.sdp };
}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A rejection nobody awaits (connect() never called by the app) is not an error.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
}

function now() {
  return Date.now();
}
