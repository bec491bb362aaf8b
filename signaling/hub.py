"""
The hub: the one way in for client messages, and the connection lifecycle.

The WebSocket layer hands every payload to :meth:`Hub.receive_payload`,
which admits it (rate limit), decodes it, dispatches it by type to a
handler family (:mod:`signaling.handlers`) and answers every refusal with an
error. Nothing goes back to the client except through the session's
connection (:class:`~signaling.session.IConnection`).

Pure logic: time comes from an injected clock, state from an
:class:`~signaling.registry.IRegistry`, storage from an
:class:`~signaling.store.IOfflineStore`, metrics go to an
:class:`~signaling.events.IServerEvents`; no network, database or metrics
library is imported here, so the hub runs under ``task.Clock`` in tests.

A control request answered asynchronously (by a clustered registry or
store) holds the session's later messages back until it is done, so a
client's requests are answered in the order it sent them.
"""

from __future__ import annotations

import random
from time import perf_counter
from typing import Any, Callable

from twisted.python.failure import Failure

from . import messages as m
from .auth import Authorizer, TokenVerifier
from .config import Config
from .events import IServerEvents, NoEvents
from .handlers.context import Context
from .handlers.offline import OfflineHandlers
from .handlers.peers import PeerHandlers
from .handlers.rooms import RoomHandlers
from .limits import RateLimiter
from .logs import log_event
from .maybe import is_deferred, then
from .messages import ProtocolError, decode
from .registry import IRegistry, LocalRegistry
from .session import Session
from .store import IOfflineStore

__all__ = ["Hub"]

Handler = Callable[[Session, dict[str, Any]], Any]


class Hub:
    """
    Routes messages between sessions: rooms, peers, presence, offline store.

    The WebSocket layer calls :meth:`connect`, :meth:`authenticate`,
    :meth:`receive_payload`, :meth:`pong` and :meth:`disconnect`; the
    service's timers call :meth:`heartbeat`, :meth:`expire_offline` and
    :meth:`log_stats`; the service's drain calls :meth:`shut_down`.
    """

    def __init__(
        self,
        config: Config,
        clock: Any,
        store: IOfflineStore,
        events: IServerEvents | None = None,
        verifier: TokenVerifier | None = None,
        registry: IRegistry | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._store = store
        self._events = NoEvents() if events is None else events
        if registry is None:
            registry = LocalRegistry.from_config(store, config)
        self._registry = registry
        self._ctx = ctx = Context(
            config, clock, registry, store,
            Authorizer(verifier, config.auth_required, clock), self._events,
        )
        self._offline = OfflineHandlers(ctx)
        self._peers = PeerHandlers(ctx, self._offline)
        self._rooms = RoomHandlers(ctx)
        self._control: dict[str, Handler] = {
            "ping": self._ping,
            **self._peers.handlers(),
            **self._rooms.handlers(),
            **self._offline.handlers(),
        }
        assert set(self._control) == m.CONTROL_TYPES, "every control type needs one handler"
        self._connections_total = 0

    # -- connection lifecycle -------------------------------------------------

    def connect(self, conn: Any, address: str) -> Session:
        """A WebSocket connection opened; returns its session."""
        config = self._config
        limiter = None
        if config.rate_limit:
            limiter = RateLimiter(config.rate_limit, config.rate_burst, self._clock)
        session = Session(conn, address, self._ctx.now_ms(), limiter)
        self._registry.add(session)
        self._connections_total += 1
        self._events.connection_opened()
        log_event(self._ctx.log, "connect", peer=address)
        return session

    def authenticate(self, session: Session, token: str) -> bool:
        """
        Verify the token of the upgrade URL. A bad one gets ``UNAUTHORIZED``
        and the connection is closed with 1008.
        """
        try:
            session.grant = self._ctx.authorizer.verify(token)
        except ProtocolError as e:
            self._ctx.refuse(session, e)
            session.conn.close(m.CLOSE_POLICY, e.text)
            return False
        return True

    def disconnect(self, session: Session) -> None:
        """
        A connection is gone (closed, dropped or replaced). Idempotent.

        Leaves every room with ``user-left`` and announces the peer offline,
        unless the session was replaced by a newer one with the same id.
        """
        if not session.open:
            return
        session.open = False
        session.waiting.clear()
        self._events.connection_closed()
        log_event(self._ctx.log, "disconnect", peer=session.address, identity=session.identity)
        announce = session.registered and not session.replaced
        then(self._registry.remove(session), self._departed, session, announce)

    def _departed(self, rooms_left: list[str], session: Session, announce: bool) -> None:
        self._ctx.announce_left(session, session.identity, rooms_left)
        if announce:
            self._peers.announce(session, "offline")

    def announce_again(self, session: Session, rooms: list[str]) -> None:
        """
        ``session``'s identity was announced gone while it was not (a
        clustered registry claimed it again after the other servers had
        given this one up): announce it again in its rooms and, if it is a
        registered peer, as online.
        """
        for room_id in rooms:
            self._rooms.announce_joined(session, room_id)
        if session.registered:
            self._peers.announce(session, "online")

    def pong(self, session: Session) -> None:
        """The client answered a heartbeat ping."""
        session.alive = True

    def receive_ping(self, session: Session) -> bool:
        """
        A WebSocket ping frame from the client: counted by the rate limit
        like a message. Whether it may be answered.
        """
        if not session.open:
            return False
        session.alive = True
        return self._admit(session)

    # -- the one way in --------------------------------------------------------

    def receive_payload(self, session: Session, payload: bytes | str) -> None:
        """
        Handle one WebSocket message (text or binary payload) from
        ``session``: admit, decode, dispatch, answer refusals.
        """
        if not session.open:
            return
        session.alive = True
        if not self._admit(session):
            return
        if session.busy:
            session.waiting.append(payload)
            if len(session.waiting) == self._config.max_waiting_messages:
                session.conn.pause_reading()
            return
        self._handle(session, payload)

    def _admit(self, session: Session) -> bool:
        """
        Account one message against the rate limit. False when it must be
        dropped: the sender got ``RATE_LIMITED``, or is closed with 1008 after
        ignoring too many of them.
        """
        limiter = session.limiter
        if limiter is None:
            return True
        decision = limiter.check()
        if decision.allowed:
            return True
        if decision.close:
            log_event(self._ctx.log, "limit", peer=session.address, limit="rate")
            session.conn.close(m.CLOSE_POLICY, "rate limit ignored")
        else:
            self._ctx.refuse(session, ProtocolError(
                m.RATE_LIMITED, "too many messages, slow down",
                retryAfterMs=decision.retry_after_ms,
            ))
        return False

    def _handle(self, session: Session, payload: bytes | str) -> None:
        started = perf_counter()
        try:
            message = decode(payload)
        except ProtocolError as e:
            self._ctx.refuse(session, e, e.request)
            return
        type_ = message["type"]
        self._events.message_received(type_)
        handler = self._control.get(type_)
        try:
            if handler is not None:
                result = handler(session, message)
            else:
                result = self._relay(session, message)
                self._events.observe_relay_latency(perf_counter() - started)
        except ProtocolError as e:
            self._ctx.refuse(session, e, message)
            return
        except Exception:
            self._ctx.failed(Failure(), session, message)
            return
        if is_deferred(result):
            result.addErrback(self._ctx.failed, session, message)
            if handler is not None:
                # Later requests of this session wait until this one is answered.
                session.busy = True
                result.addBoth(self._resume, session)

    def _relay(self, session: Session, message: dict[str, Any]) -> Any:
        if message["type"] in m.SERVER_TYPES:
            raise ProtocolError(
                m.INVALID_FIELD, f"'type' {message['type']!r} is sent only by the server"
            )
        if "roomId" in message:
            return self._rooms.relay(session, message)
        if "to" in message:
            return self._peers.relay(session, message)
        raise ProtocolError(
            m.UNKNOWN_MESSAGE_TYPE,
            f"unknown message type {message['type']!r} (relayed messages need 'to' or 'roomId')",
        )

    def _resume(self, _: Any, session: Session) -> None:
        session.busy = False
        waiting = session.waiting
        paused = len(waiting) >= self._config.max_waiting_messages
        while waiting and not session.busy and session.open:
            self._handle(session, waiting.pop(0))
        if paused and session.open and not session.busy:
            session.conn.resume_reading()

    def _ping(self, session: Session, message: dict[str, Any]) -> None:
        self._ctx.reply(session, {"type": "pong", "timestamp": self._ctx.now_ms()})

    # -- timers ------------------------------------------------------------------

    def heartbeat(self) -> int:
        """
        One heartbeat sweep: drop every session that showed no life since the
        previous sweep, ping the others. Returns how many were dropped.
        """
        dropped = 0
        for session in list(self._registry.sessions):
            # Asked of every session at every sweep: each answer counts from the last.
            took_output = session.conn.took_output()
            if session.alive or took_output:
                session.alive = False
                session.conn.ping()
            else:
                dropped += 1
                self._events.heartbeat_drop()
                log_event(
                    self._ctx.log, "heartbeat_drop", peer=session.address,
                    identity=session.identity,
                )
                self.disconnect(session)
                session.conn.abort()
        return dropped

    def expire_offline(self) -> Any:
        """Drop offline messages past their age limit; returns how many (maybe later)."""
        return self._store.expire(self._clock.seconds())

    def stats(self) -> dict[str, int]:
        """The live counters (exact: read from the state, not tallied)."""
        counts = self._registry.counts()
        return {
            "connections": counts["connections"],
            "connectionsTotal": self._connections_total,
            "peers": counts["peers"],
            "rooms": counts["rooms"],
            "forwarded": self._ctx.forwarded,
            "offlineQueued": self._ctx.offline_queued,
            "offlineStored": self._store.count,
            "offlineBytes": self._store.total_bytes,
            "offlineQuarantined": self._store.quarantined,
        }

    def log_stats(self) -> None:
        """Log the stats line, in the words existing operators grep for."""
        stats = self.stats()
        self._ctx.log.info(
            "[Stats] 连接数: {connections}, 总连接: {total}, 转发消息: {forwarded}, 离线消息: {stored}",
            connections=stats["connections"],
            total=stats["connectionsTotal"],
            forwarded=stats["forwarded"],
            stored=stats["offlineStored"],
        )

    # -- shutdown ----------------------------------------------------------------

    def shut_down(self, code: int, reason: str, reconnect_jitter: float) -> None:
        """
        Tell every client the server is going away, with a random
        ``reconnectAfterMs`` below ``reconnect_jitter`` seconds so they do not
        all come back at once, then start closing them with ``code``.
        """
        sessions = list(self._registry.sessions)
        log_event(
            self._ctx.log, "shutdown", reason=f"closing {len(sessions)} connections with {code}"
        )
        spread = int(reconnect_jitter * 1000)
        for session in sessions:
            self._ctx.reply(session, {
                "type": "server-shutdown",
                "reconnectAfterMs": random.randint(0, spread),
                "timestamp": self._ctx.now_ms(),
            })
            session.conn.close(code, reason)

    def open_sessions(self) -> int:
        """How many connections are open now."""
        return len(self._registry.sessions)

    def abort_all(self) -> None:
        """Drop every connection at once (the end of a drain that ran out of time)."""
        for session in list(self._registry.sessions):
            self.disconnect(session)
            session.conn.abort()
