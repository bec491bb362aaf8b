"""
The hub: rooms, peers, presence and routing.

Pure logic. It knows connections only through :class:`IConnection`, time only
through an injected clock (``seconds()``), and the offline store only through
:class:`signaling.store.IOfflineStore`; it imports no network or database
library, so it can be driven in tests with ``task.Clock`` in microseconds.
"""

from __future__ import annotations

import random
import secrets
from typing import Any, Callable

from twisted.logger import Logger
from zope.interface import Interface

from . import messages as m
from .auth import Grant, TokenVerifier
from .config import Config
from .logs import log_event, payload_for_log
from .messages import ProtocolError, encode, error_message, validate_id
from .metrics import Metrics
from .ratelimit import RateLimiter
from .store import IOfflineStore, QueueFull

__all__ = ["Hub", "IConnection", "Session"]

#: Close code for a connection replaced by a newer one with the same id.
CLOSE_REPLACED = 4001
#: Close code for policy violations (bad handshake token, ignored rate limits).
CLOSE_POLICY = 1008


class IConnection(Interface):
    """What the hub needs from a client connection."""

    def send(data):
        """Queue one encoded message (bytes) for the client."""

    def close(code, reason):
        """Start a closing handshake with this close code and reason text."""

    def abort():
        """Drop the connection at once, without a closing handshake."""

    def ping():
        """Send a WebSocket ping (the client's pong proves it is alive)."""


class Session:
    """Everything the hub knows about one open connection."""

    __slots__ = (
        "conn", "address", "identity", "registered", "device_type",
        "device_info", "connected_at", "registered_seq", "rooms", "ack_mode",
        "alive", "replaced", "open", "grant", "limiter",
    )

    def __init__(self, conn: Any, address: str, now_ms: int) -> None:
        self.conn = conn
        self.address = address
        self.identity: str | None = None
        self.registered = False
        self.device_type: Any = None
        self.device_info: Any = None
        self.connected_at = now_ms
        self.registered_seq = 0
        self.rooms: set[str] = set()
        self.ack_mode = False
        self.alive = True
        self.replaced = False
        self.open = True
        self.grant: Grant | None = None
        self.limiter: RateLimiter | None = None


class Hub:
    """
    Routes messages between sessions and keeps rooms, peers and presence.

    The WebSocket layer calls :meth:`connect`, :meth:`receive`,
    :meth:`reject`, :meth:`pong` and :meth:`disconnect`; the service's timers
    call :meth:`heartbeat`, :meth:`expire_offline` and :meth:`stats_line`.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        clock: Any,
        store: IOfflineStore,
        metrics: Metrics | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.metrics = Metrics(process=False) if metrics is None else metrics
        self.verifier = verifier
        self.sessions: set[Session] = set()
        #: bound identity -> the session holding it (room members and peers)
        self.identities: dict[str, Session] = {}
        #: registered peer id -> session, in registration order
        self.peers: dict[str, Session] = {}
        #: room id -> {user id -> session}, in join order
        self.rooms: dict[str, dict[str, Session]] = {}
        self.connections_total = 0
        self.forwarded = 0
        self.offline_queued_total = 0
        self._registrations = 0
        self._handlers: dict[str, Callable[[Session, dict[str, Any]], None]] = {
            "register": self._register,
            "join-room": self._join_room,
            "leave-room": self._leave_room,
            "get-peers": self._get_peers,
            "ping": self._ping,
            "ack": self._ack,
        }

    # -- time ---------------------------------------------------------------

    def now_ms(self) -> int:
        """The clock's time in integer milliseconds (the protocol's unit)."""
        return int(self.clock.seconds() * 1000)

    # -- connection lifecycle -----------------------------------------------

    def connect(self, conn: Any, address: str) -> Session:
        """A WebSocket connection opened; returns its session."""
        session = Session(conn, address, self.now_ms())
        if self.config.rate_limit:
            session.limiter = RateLimiter(self.config.rate_limit, self.config.rate_burst, self.clock)
        self.sessions.add(session)
        self.connections_total += 1
        self.metrics.connection_opened()
        log_event(self._log, "connect", peer=address)
        return session

    def authenticate(self, session: Session, token: str) -> bool:
        """
        Verify the token of the upgrade URL. A bad one gets ``UNAUTHORIZED``
        and the connection is closed with 1008.
        """
        try:
            session.grant = self._verify(token)
        except ProtocolError as e:
            self.reject(session, e)
            session.conn.close(CLOSE_POLICY, e.text)
            return False
        return True

    def admit(self, session: Session) -> bool:
        """
        Account one incoming message against the rate limit. False when it
        must be dropped: the sender got ``RATE_LIMITED``, or is closed with
        1008 after ignoring too many of them.
        """
        limiter = session.limiter
        if limiter is None:
            return True
        decision = limiter.check()
        if decision.allowed:
            return True
        session.alive = True
        if decision.close:
            log_event(self._log, "limit", peer=session.address, limit="rate")
            session.conn.close(CLOSE_POLICY, "rate limit ignored")
        else:
            self.reject(session, ProtocolError(
                m.RATE_LIMITED, "too many messages, slow down",
                retryAfterMs=decision.retry_after_ms,
            ))
        return False

    def disconnect(self, session: Session) -> None:
        """
        A connection is gone (closed, dropped or replaced). Idempotent.

        Leaves every room with ``user-left`` and announces the peer offline,
        unless the session was replaced by a newer one with the same id.
        """
        if not session.open:
            return
        session.open = False
        self.sessions.discard(session)
        self.metrics.connection_closed()
        log_event(self._log, "disconnect", peer=session.address, identity=session.identity)
        identity = session.identity
        if session.replaced or identity is None:
            return
        for room_id in list(session.rooms):
            self._remove_from_room(session, room_id)
        del self.identities[identity]
        if session.registered:
            del self.peers[identity]
            self._announce(session, "offline")

    def receive(self, session: Session, message: dict[str, Any]) -> None:
        """Handle one decoded message from ``session``."""
        session.alive = True
        self.metrics.message_received(message["type"])
        try:
            handler = self._handlers.get(message["type"])
            if handler is not None:
                handler(session, message)
            elif "roomId" in message:
                self._relay_to_room(session, message)
            elif "to" in message:
                self._relay_to_peer(session, message)
            else:
                raise ProtocolError(
                    m.UNKNOWN_MESSAGE_TYPE,
                    f"unknown message type {message['type']!r} "
                    "(relayed messages need 'to' or 'roomId')",
                )
        except ProtocolError as e:
            self.reject(session, e, message)

    def reject(
        self, session: Session, error: ProtocolError, request: dict[str, Any] | None = None
    ) -> None:
        """Answer ``session`` with the error message for ``error``."""
        session.alive = True
        self.metrics.error(error.code)
        # Refused floods are counted, not logged line by line: the log must
        # not grow at the rate an abuser sends.
        if error.code != m.RATE_LIMITED:
            log_event(
                self._log, "error", peer=session.address, code=error.code, reason=error.text,
                request=None if request is None
                else payload_for_log(request, self.config.log_payloads),
            )
        self._send(
            session,
            encode(error_message(error.code, error.text, self.now_ms(), request, **error.extra)),
        )

    def pong(self, session: Session) -> None:
        """The client answered a heartbeat ping."""
        session.alive = True

    # -- timers -------------------------------------------------------------

    def heartbeat(self) -> int:
        """
        One heartbeat sweep: drop every session that showed no life since the
        previous sweep, ping the others. Returns how many were dropped.
        """
        dropped = 0
        for session in list(self.sessions):
            if session.alive:
                session.alive = False
                session.conn.ping()
            else:
                dropped += 1
                self.metrics.heartbeat_drop()
                log_event(
                    self._log, "heartbeat_drop", peer=session.address, identity=session.identity
                )
                self.disconnect(session)
                session.conn.abort()
        return dropped

    def expire_offline(self) -> int:
        """Drop offline messages past their age limit; returns how many."""
        return self.store.expire(self.clock.seconds())

    def stats(self) -> dict[str, int]:
        """The live counters (exact: read from the state, not tallied)."""
        return {
            "connections": len(self.sessions),
            "connectionsTotal": self.connections_total,
            "peers": len(self.peers),
            "rooms": len(self.rooms),
            "forwarded": self.forwarded,
            "offlineQueued": self.offline_queued_total,
            "offlineStored": self.store.count,
            "offlineBytes": self.store.total_bytes,
        }

    def log_stats(self) -> None:
        """Log the stats line, in the words existing operators grep for."""
        self._log.info(
            "[Stats] 连接数: {connections}, 总连接: {total}, 转发消息: {forwarded}, 离线消息: {stored}",
            connections=len(self.sessions),
            total=self.connections_total,
            forwarded=self.forwarded,
            stored=self.store.count,
        )

    def shut_down(self, code: int, reason: str, reconnect_jitter: float) -> None:
        """
        Tell every client the server is going away, with a random
        ``reconnectAfterMs`` below ``reconnect_jitter`` seconds so they do not
        all come back at once, then start closing them with ``code``.
        """
        log_event(
            self._log, "shutdown", reason=f"closing {len(self.sessions)} connections with {code}"
        )
        spread = int(reconnect_jitter * 1000)
        for session in list(self.sessions):
            self._reply(session, {
                "type": "server-shutdown",
                "reconnectAfterMs": random.randint(0, spread),
                "timestamp": self.now_ms(),
            })
            session.conn.close(code, reason)

    # -- the one send path --------------------------------------------------

    def _send(self, session: Session, data: bytes) -> None:
        if session.open:
            session.conn.send(data)

    def _reply(self, session: Session, message: dict[str, Any]) -> None:
        self._send(session, encode(message))

    def _send_all(self, sessions: Any, data: bytes, exclude: Session | None) -> int:
        """:meth:`_send` to many sessions: the same bytes object to each; returns how many."""
        sent = 0
        for session in sessions:
            if session is not exclude and session.open:
                session.conn.send(data)
                sent += 1
        return sent

    def _broadcast_peers(self, message: dict[str, Any], exclude: Session | None) -> None:
        self._send_all(self.peers.values(), encode(message), exclude)

    # -- identity -----------------------------------------------------------

    def _bind(self, session: Session, identity: str) -> None:
        """Bind ``identity`` to ``session``, taking it over from an older holder."""
        if session.identity is not None:
            if session.identity != identity:
                raise ProtocolError(
                    m.IDENTITY_MISMATCH,
                    f"this connection is bound to '{session.identity}', not '{identity}'",
                )
            return
        holder = self.identities.get(identity)
        if holder is not None:
            if holder.grant is not None and session.grant is None:
                raise ProtocolError(
                    m.FORBIDDEN, f"'{identity}' is held by an authenticated connection"
                )
            self._take_over(holder, session)
        session.identity = identity
        self.identities[identity] = session

    def _verify(self, token: Any) -> Grant:
        if not isinstance(token, str):
            raise ProtocolError(m.INVALID_FIELD, "'token' must be a string")
        assert self.verifier is not None
        return self.verifier.verify(token, self.clock.seconds())

    def _authorize(self, session: Session, identity: str, message: dict[str, Any]) -> None:
        """Check that ``session`` may bind ``identity`` (the token rules of auth)."""
        if self.verifier is None:
            return
        if "token" in message:
            session.grant = self._verify(message["token"])
        grant = session.grant
        if grant is None:
            if self.config.auth_required:
                raise ProtocolError(m.UNAUTHORIZED, "a valid token is required")
            return
        if grant.subject != identity:
            raise ProtocolError(m.FORBIDDEN, f"the token does not allow the id '{identity}'")

    def _take_over(self, old: Session, new: Session) -> None:
        """
        ``new`` replaces ``old`` for the same id: it inherits the registration
        and the room memberships, nobody is told the id went away, and the old
        connection is closed with 4001.
        """
        identity = old.identity
        assert identity is not None
        new.registered = old.registered
        new.device_type = old.device_type
        new.device_info = old.device_info
        new.registered_seq = old.registered_seq
        if old.registered:
            self.peers[identity] = new
        for room_id in old.rooms:
            self.rooms[room_id][identity] = new
        new.rooms |= old.rooms
        old.rooms = set()
        old.registered = False
        old.replaced = True
        log_event(self._log, "takeover", peer=new.address, identity=identity, old=old.address)
        old.conn.close(CLOSE_REPLACED, "replaced")

    # -- peers --------------------------------------------------------------

    def _register(self, session: Session, message: dict[str, Any]) -> None:
        peer_id = validate_id(message.get("peerId"), "peerId")
        device_type = message.get("deviceType")
        if device_type is not None and not isinstance(device_type, str):
            raise ProtocolError(m.INVALID_FIELD, "'deviceType' must be a string")
        device_info = message.get("deviceInfo")
        if device_info is not None:
            if not isinstance(device_info, dict):
                raise ProtocolError(m.INVALID_FIELD, "'deviceInfo' must be an object")
            if len(encode(device_info)) > self.config.max_device_info_bytes:
                raise ProtocolError(
                    m.INVALID_FIELD,
                    f"'deviceInfo' must be at most {self.config.max_device_info_bytes} bytes",
                )
        self._authorize(session, peer_id, message)
        already = session.registered and session.identity == peer_id
        self._bind(session, peer_id)
        now_ms = self.now_ms()
        if already:
            self._reply(session, {"type": "registered", "peerId": peer_id, "serverTime": now_ms})
            return
        if not session.registered:
            self._registrations += 1
            session.registered_seq = self._registrations
        session.registered = True
        session.device_type = device_type
        session.device_info = device_info
        session.ack_mode = message.get("ack") is True
        self.peers[peer_id] = session
        log_event(self._log, "register", peer=session.address, identity=peer_id)
        self._reply(session, {"type": "registered", "peerId": peer_id, "serverTime": now_ms})
        self._deliver_offline(session, peer_id)
        self._announce(session, "online")

    def _announce(self, session: Session, status: str) -> None:
        """Tell every other registered peer that ``session``'s peer came or went."""
        if self.config.presence != "all":
            return
        message: dict[str, Any] = {"type": "peer-status", "peerId": session.identity, "status": status}
        if not self.config.hide_device_info:
            # A field the peer did not register with is left out (seed behaviour).
            if session.device_type is not None:
                message["deviceType"] = session.device_type
            if status == "online" and session.device_info is not None:
                message["deviceInfo"] = session.device_info
        message["timestamp"] = self.now_ms()
        self._broadcast_peers(message, exclude=session)

    def _deliver_offline(self, session: Session, peer_id: str) -> None:
        entries = self.store.pending(peer_id, self.clock.seconds())
        if not entries:
            return
        delivered_at = self.now_ms()
        for entry in entries:
            self._send(
                session,
                m.offline_delivery(
                    entry.message_id, entry.body, int(entry.stored_at * 1000), delivered_at
                ),
            )
        if not session.ack_mode:
            self.store.remove(peer_id, [entry.message_id for entry in entries])

    def _ack(self, session: Session, message: dict[str, Any]) -> None:
        if not session.registered:
            raise ProtocolError(m.REGISTRATION_REQUIRED, "register before acknowledging")
        ids = message.get("messageIds")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError(m.INVALID_FIELD, "'messageIds' must be a list of strings")
        assert session.identity is not None
        self.store.remove(session.identity, ids)

    def _get_peers(self, session: Session, message: dict[str, Any]) -> None:
        config = self.config
        paged = "cursor" in message or "limit" in message
        limit = message.get("limit", config.peers_page_default)
        if paged and (
            not isinstance(limit, int) or isinstance(limit, bool)
            or not 1 <= limit <= config.peers_page_max
        ):
            raise ProtocolError(
                m.INVALID_FIELD, f"'limit' must be an integer from 1 to {config.peers_page_max}"
            )
        after = 0
        if message.get("cursor") is not None:
            cursor = message["cursor"]
            if not isinstance(cursor, str) or not cursor.isdigit():
                raise ProtocolError(m.INVALID_FIELD, "'cursor' must be a cursor from 'nextCursor'")
            after = int(cursor)
        others = [
            peer for peer in self.peers.values()
            if peer is not session and peer.registered_seq > after
        ]
        reply: dict[str, Any] = {"type": "peers-list"}
        if paged:
            page = others[:limit]
            if len(others) > limit:
                reply["nextCursor"] = str(page[-1].registered_seq)
        else:
            page = others
        if self.config.hide_device_info:
            reply["peers"] = [
                {"peerId": peer.identity, "connectedAt": peer.connected_at} for peer in page
            ]
        else:
            reply["peers"] = [
                {
                    "peerId": peer.identity,
                    # Seed defaults, so client code such as deviceInfo.name never meets null.
                    "deviceType": "unknown" if peer.device_type is None else peer.device_type,
                    "deviceInfo": {} if peer.device_info is None else peer.device_info,
                    "connectedAt": peer.connected_at,
                }
                for peer in page
            ]
        reply["count"] = len(page)
        reply["total"] = len(self.peers) - (1 if session.registered else 0)
        self._reply(session, reply)

    def _ping(self, session: Session, message: dict[str, Any]) -> None:
        self._reply(session, {"type": "pong", "timestamp": self.now_ms()})

    def _relay_to_peer(self, session: Session, message: dict[str, Any]) -> None:
        if not session.registered:
            raise ProtocolError(
                m.REGISTRATION_REQUIRED, "send 'register' before messaging other peers"
            )
        to = validate_id(message["to"], "to")
        out = dict(message)
        out["from"] = session.identity
        if out["type"] == "message" and "timestamp" not in out:
            out["timestamp"] = self.now_ms()
        target = self.identities.get(to)
        if target is not None:
            self._send(target, encode(out))
            self.forwarded += 1
            self.metrics.message_relayed(out["type"])
        else:
            self._store_offline(session, to, out, message)

    def _store_offline(
        self, session: Session, to: str, out: dict[str, Any], request: dict[str, Any]
    ) -> None:
        message_id = m.client_message_id(request) or secrets.token_hex(12)

        def stored(_: Any) -> None:
            self.offline_queued_total += 1
            self.metrics.offline_queued()
            self._reply(
                session,
                {"type": "peer-offline", "peerId": to, "messageId": message_id, "queued": True},
            )

        def refused(failure: Any) -> None:
            if failure.check(QueueFull):
                error = ProtocolError(m.QUEUE_FULL, str(failure.value), peerId=to)
            else:
                self._log.failure("offline store failed", failure)
                error = ProtocolError(m.INTERNAL_ERROR, "the message could not be stored", peerId=to)
            self.reject(session, error, request)

        self.store.enqueue(to, message_id, out, self.clock.seconds()).addCallbacks(stored, refused)

    # -- rooms --------------------------------------------------------------

    def _join_room(self, session: Session, message: dict[str, Any]) -> None:
        room_id = validate_id(message.get("roomId"), "roomId")
        user_id = validate_id(message.get("sender", session.identity), "sender")
        self._authorize(session, user_id, message)
        if session.grant is not None and not session.grant.allows_room(room_id):
            raise ProtocolError(m.FORBIDDEN, f"the token does not allow room '{room_id}'")
        self._bind(session, user_id)
        members = self.rooms.get(room_id)
        if members is None or user_id not in members:
            if len(session.rooms) >= self.config.max_rooms_per_connection:
                raise ProtocolError(
                    m.TOO_MANY_ROOMS,
                    f"a connection may be in at most {self.config.max_rooms_per_connection} rooms",
                )
            if members is not None and len(members) >= self.config.max_room_members:
                raise ProtocolError(m.ROOM_FULL, f"room '{room_id}' is full")
            if members is None:
                members = self.rooms[room_id] = {}
            others = list(members)
            self._broadcast_room(
                members, {"type": "user-joined", "userId": user_id, "roomId": room_id}, None
            )
            members[user_id] = session
            session.rooms.add(room_id)
            log_event(self._log, "join", peer=session.address, identity=user_id, room=room_id)
        else:
            others = [member for member in members if member != user_id]
        self._reply(
            session,
            {"type": "join-success", "roomId": room_id, "userId": user_id, "members": others},
        )

    def _leave_room(self, session: Session, message: dict[str, Any]) -> None:
        room_id = validate_id(message.get("roomId"), "roomId")
        if room_id not in session.rooms:
            raise ProtocolError(m.NOT_IN_ROOM, f"not a member of room '{room_id}'")
        self._remove_from_room(session, room_id)
        self._reply(session, {"type": "leave-success", "roomId": room_id})

    def _remove_from_room(self, session: Session, room_id: str) -> None:
        identity = session.identity
        members = self.rooms[room_id]
        del members[identity]
        session.rooms.discard(room_id)
        if members:
            self._broadcast_room(
                members, {"type": "user-left", "userId": identity, "roomId": room_id}, None
            )
        else:
            del self.rooms[room_id]
        log_event(self._log, "leave", peer=session.address, identity=identity, room=room_id)

    def _broadcast_room(
        self, members: dict[str, Session], message: dict[str, Any], exclude: Session | None
    ) -> int:
        return self._send_all(members.values(), encode(message), exclude)

    def _relay_to_room(self, session: Session, message: dict[str, Any]) -> None:
        room_id = validate_id(message["roomId"], "roomId")
        if room_id not in session.rooms:
            raise ProtocolError(m.NOT_IN_ROOM, f"not a member of room '{room_id}'")
        members = self.rooms[room_id]
        out = dict(message)
        out["sender"] = session.identity
        if "to" in message:
            to = validate_id(message["to"], "to")
            target = members.get(to)
            if target is None or target is session:
                raise ProtocolError(
                    m.PEER_NOT_IN_ROOM, f"'{to}' is not another member of room '{room_id}'"
                )
            self._send(target, encode(out))
            delivered = 1
        else:
            delivered = self._broadcast_room(members, out, session)
        self.forwarded += delivered
        self.metrics.message_relayed(out["type"], delivered)
