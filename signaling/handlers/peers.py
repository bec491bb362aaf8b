"""
Peer messages (PROTOCOL section 4): ``register``, ``get-peers``, directed
relay with ``to``, and presence (``peer-status``).
"""

from __future__ import annotations

from typing import Any, Callable

from .. import messages as m
from ..logs import log_event
from ..maybe import then
from ..config import MAX_DEVICE_TYPE_LENGTH
from ..messages import ProtocolError, encode, validate_id
from ..session import Session
from .context import Context
from .offline import OfflineHandlers

__all__ = ["PeerHandlers"]

#: Longest cursor accepted (a registration number).
_MAX_CURSOR_DIGITS = 20
#: Room for the ``peers-list`` fields around the entries.
_PEERS_LIST_ENVELOPE = 128


class PeerHandlers:
    """Registration, peer lists, directed messages and presence."""

    def __init__(self, ctx: Context, offline: OfflineHandlers) -> None:
        self._ctx = ctx
        self._offline = offline

    def handlers(self) -> dict[str, Callable[[Session, dict[str, Any]], Any]]:
        """The control types this family answers."""
        return {"register": self.register, "get-peers": self.get_peers}

    # -- register -------------------------------------------------------------

    def register(self, session: Session, message: dict[str, Any]) -> Any:
        """Bind and register a peer id, deliver its offline messages, announce it."""
        ctx = self._ctx
        peer_id = validate_id(message.get("peerId"), "peerId")
        device_type, device_info = self._device_fields(message)
        ctx.authorizer.authorize(session, peer_id, message)
        if session.registered and session.identity == peer_id:
            self._reply_registered(session, peer_id)
            return None
        return then(
            ctx.registry.bind(session, peer_id), self._bound,
            session, peer_id, device_type, device_info, message.get("ack") is True,
        )

    def _device_fields(self, message: dict[str, Any]) -> tuple[Any, Any]:
        device_type = message.get("deviceType")
        if device_type is not None and (
            not isinstance(device_type, str) or len(device_type) > MAX_DEVICE_TYPE_LENGTH
        ):
            raise ProtocolError(
                m.INVALID_FIELD,
                f"'deviceType' must be a string of at most {MAX_DEVICE_TYPE_LENGTH} characters",
            )
        device_info = message.get("deviceInfo")
        if device_info is not None:
            if not isinstance(device_info, dict):
                raise ProtocolError(m.INVALID_FIELD, "'deviceInfo' must be an object")
            limit = self._ctx.config.max_device_info_bytes
            if len(encode(device_info)) > limit:
                raise ProtocolError(
                    m.INVALID_FIELD, f"'deviceInfo' must be at most {limit} bytes"
                )
        return device_type, device_info

    def _bound(self, replaced: Session | None, session: Session, peer_id: str,
               device_type: Any, device_info: Any, ack_mode: bool) -> Any:
        session.ack_mode = ack_mode
        return then(
            take_over(self._ctx, session, replaced), self._register,
            session, peer_id, device_type, device_info,
        )

    def _register(self, _: Any, session: Session, peer_id: str, device_type: Any,
                  device_info: Any) -> Any:
        return then(
            self._ctx.registry.register(session, device_type, device_info),
            self._registered, session, peer_id,
        )

    def _registered(self, _: Any, session: Session, peer_id: str) -> Any:
        log_event(self._ctx.log, "register", peer=session.address, identity=peer_id)
        self._reply_registered(session, peer_id)
        return then(self._offline.deliver(session), self._announce_online, session)

    def _reply_registered(self, session: Session, peer_id: str) -> None:
        self._ctx.reply(
            session, {"type": "registered", "peerId": peer_id, "serverTime": self._ctx.now_ms()}
        )

    def _announce_online(self, _: Any, session: Session) -> None:
        self.announce(session, "online")

    # -- presence -------------------------------------------------------------

    def announce(self, session: Session, status: str) -> None:
        """Tell every other registered peer that ``session``'s peer came or went."""
        ctx = self._ctx
        if ctx.config.presence != "all":
            return
        message: dict[str, Any] = {"type": "peer-status", "peerId": session.identity, "status": status}
        # A device field the peer never gave is left out (as the peer seed did).
        if not ctx.config.hide_device_info:
            if session.device_type is not None:
                message["deviceType"] = session.device_type
            if status == "online" and session.device_info is not None:
                message["deviceInfo"] = session.device_info
        message["timestamp"] = ctx.now_ms()
        ctx.registry.send_peers(encode(message), session)

    # -- get-peers ------------------------------------------------------------

    def get_peers(self, session: Session, message: dict[str, Any]) -> Any:
        """Answer ``peers-list``: everyone, or a page when ``limit``/``cursor`` is given."""
        config = self._ctx.config
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
            if not (isinstance(cursor, str) and cursor.isascii() and cursor.isdigit()
                    and len(cursor) <= _MAX_CURSOR_DIGITS):
                raise ProtocolError(m.INVALID_FIELD, "'cursor' must be a cursor from 'nextCursor'")
            after = int(cursor)
        return then(
            self._ctx.registry.peers_page(session, after, limit if paged else None),
            self._reply_peers, session,
        )

    def _reply_peers(self, page: Any, session: Session) -> None:
        """
        The ``peers-list``, built from each peer's encoded entry. Peers that
        would make it larger than the server sends are left for the next
        page: ``nextCursor`` says where it starts, also for a request that
        asked for everyone.
        """
        hide = self._ctx.config.hide_device_info
        budget = self._ctx.config.max_outgoing_size - _PEERS_LIST_ENVELOPE
        entries: list[bytes] = []
        more = page.more
        for peer in page.peers:
            if hide:
                entry = {"peerId": peer.identity, "connectedAt": peer.connected_at}
            else:
                # A device field the peer never gave shows as the peer seed
                # showed it, so client code such as deviceInfo.name works.
                entry = {
                    "peerId": peer.identity,
                    "deviceType": "unknown" if peer.device_type is None else peer.device_type,
                    "deviceInfo": {} if peer.device_info is None else peer.device_info,
                    "connectedAt": peer.connected_at,
                }
            data = encode(entry)
            budget -= len(data) + 1
            if budget < 0 and entries:
                more = True
                break
            entries.append(data)
        tail = b',"count":%d,"total":%d' % (len(entries), page.total)
        if more:
            tail += b',"nextCursor":"%d"' % page.peers[len(entries) - 1].registered_seq
        session.send(b'{"type":"peers-list","peers":[' + b",".join(entries) + b"]" + tail + b"}")

    # -- directed relay -------------------------------------------------------

    def relay(self, session: Session, message: dict[str, Any]) -> Any:
        """
        Forward a message with ``to`` to that peer, or store it while it is
        offline.
        """
        if not session.registered:
            raise ProtocolError(
                m.REGISTRATION_REQUIRED, "send 'register' before messaging other peers"
            )
        ctx = self._ctx
        to = validate_id(message["to"], "to")
        # Both families of clients read the sender: peer clients in "from",
        # room clients in "sender"; neither may be chosen by the client. The
        # id is written as the server knows it (NFC).
        changes = {"to": to, "from": session.identity, "sender": session.identity}
        if message["type"] == "message" and "timestamp" not in message:
            changes["timestamp"] = ctx.now_ms()
        data = encode({**message, **changes})
        target = ctx.registry.holder(to)
        if target is not None:
            target.send(ctx.relayed_bytes(data))
            ctx.relayed(message["type"], 1)
            return None
        self._offline.route(session, to, data, message)
        return None


def take_over(ctx: Context, session: Session, replaced: Session | None) -> Any:
    """
    ``session`` took its id over (from ``replaced``, when that was on this
    server: close it); the id leaves the rooms ``session``'s token does not
    allow. Returns None, or a Deferred when leaving takes a round trip.
    """
    if replaced is not None:
        log_event(
            ctx.log, "takeover", peer=session.address, identity=session.identity,
            old=replaced.address,
        )
        replaced.conn.close(m.CLOSE_REPLACED, "replaced")
    return ctx.leave_rooms_not_granted(session)
