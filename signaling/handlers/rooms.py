"""
Room messages (PROTOCOL section 3): ``join-room``, ``leave-room`` and relay
to the members of a room (``roomId``, optionally ``to`` one member).
"""

from __future__ import annotations

from typing import Any, Callable

from .. import messages as m
from ..logs import log_event
from ..maybe import then
from ..messages import ProtocolError, encode, validate_id
from ..session import Session
from .context import Context
from .peers import take_over

__all__ = ["RoomHandlers"]


class RoomHandlers:
    """Joining, leaving and talking in rooms."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def handlers(self) -> dict[str, Callable[[Session, dict[str, Any]], Any]]:
        """The control types this family answers."""
        return {"join-room": self.join_room, "leave-room": self.leave_room}

    def join_room(self, session: Session, message: dict[str, Any]) -> Any:
        """Bind the ``sender`` id, join the room, tell the other members."""
        ctx = self._ctx
        room_id = validate_id(message.get("roomId"), "roomId")
        user_id = validate_id(message.get("sender", session.identity), "sender")
        ctx.authorizer.authorize(session, user_id, message)
        ctx.authorizer.check_room(session, room_id)
        return then(ctx.registry.bind(session, user_id), self._bound, session, room_id)

    def _bound(self, replaced: Session | None, session: Session, room_id: str) -> Any:
        return then(take_over(self._ctx, session, replaced), self._join, session, room_id)

    def _join(self, _: Any, session: Session, room_id: str) -> Any:
        return then(self._ctx.registry.join(session, room_id), self._joined, session, room_id)

    def _joined(self, joined: tuple[list[str], bool], session: Session, room_id: str) -> None:
        ctx = self._ctx
        others, new = joined
        user_id = session.identity
        if new:
            log_event(ctx.log, "join", peer=session.address, identity=user_id, room=room_id)
            self.announce_joined(session, room_id)
        ctx.reply(
            session,
            {"type": "join-success", "roomId": room_id, "userId": user_id, "members": others},
        )

    def announce_joined(self, session: Session, room_id: str) -> None:
        """Tell the other members of ``room_id`` that ``session``'s identity joined it."""
        self._ctx.registry.send_room(
            room_id,
            encode({"type": "user-joined", "userId": session.identity, "roomId": room_id}),
            session,
        )

    def leave_room(self, session: Session, message: dict[str, Any]) -> Any:
        """Leave a room, tell the members who stay."""
        room_id = validate_id(message.get("roomId"), "roomId")
        if room_id not in session.rooms:
            raise ProtocolError(m.NOT_IN_ROOM, f"not a member of room '{room_id}'")
        return then(self._ctx.registry.leave(session, room_id), self._left, session, room_id)

    def _left(self, _: Any, session: Session, room_id: str) -> None:
        self._ctx.announce_left(session, session.identity, [room_id])
        self._ctx.reply(session, {"type": "leave-success", "roomId": room_id})

    def relay(self, session: Session, message: dict[str, Any]) -> Any:
        """
        Forward a message with ``roomId`` to the room, or to its member
        ``to``.
        """
        ctx = self._ctx
        room_id = validate_id(message["roomId"], "roomId")
        if room_id not in session.rooms:
            raise ProtocolError(m.NOT_IN_ROOM, f"not a member of room '{room_id}'")
        # Room clients read "sender", peer clients "from": both are the bound
        # id. Ids are written as the server knows them (NFC).
        changes = {"roomId": room_id, "sender": session.identity, "from": session.identity}
        type_ = message["type"]
        if "to" in message:
            to = changes["to"] = validate_id(message["to"], "to")
            data = ctx.relayed_bytes(encode({**message, **changes}))
            target = ctx.registry.room_member(room_id, to)
            if target is None and to != session.identity:
                # Maybe a member on another server (cluster mode).
                return then(
                    ctx.registry.send_member(room_id, to, data),
                    self._sent_to_member, room_id, to, type_,
                )
            if target is None or target is session:
                raise ProtocolError(
                    m.PEER_NOT_IN_ROOM, f"'{to}' is not another member of room '{room_id}'"
                )
            target.send(data)
            delivered = 1
        else:
            data = ctx.relayed_bytes(encode({**message, **changes}))
            delivered = ctx.registry.send_room(room_id, data, session)
        ctx.relayed(type_, delivered)
        return None

    def _sent_to_member(self, delivered: bool, room_id: str, to: str, type_: str) -> None:
        if not delivered:
            raise ProtocolError(
                m.PEER_NOT_IN_ROOM, f"'{to}' is not another member of room '{room_id}'"
            )
        self._ctx.relayed(type_, 1)
