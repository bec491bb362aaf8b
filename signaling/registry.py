"""
Where sessions, identities, peers and rooms live, with their invariants.

:class:`IRegistry` is what the handlers use; :class:`LocalRegistry` keeps
everything in this process. A clustered registry implements the same
interface over a shared backend: its *global* methods may then return a
Deferred (callers use :func:`signaling.maybe.then`), while the *local* ones
always answer at once from this process's own sessions.

Invariants kept here:

- an identity is held by at most one open session, and a session binds at
  most one identity, for good;
- a registered peer is a session holding its identity, listed in
  registration order;
- a room holds only sessions that hold their member id, in join order, and
  an empty room does not exist;
- a replaced session holds nothing: its registration and rooms moved to the
  session that took its identity over;
- a closed session holds nothing, also when a global call on its behalf
  completes after it closed (then the call changes nothing).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from zope.interface import Attribute, Interface, implementer

from . import messages as m
from .config import Config
from .messages import ProtocolError, encode
from .session import Session
from .store import IOfflineStore

__all__ = ["IRegistry", "LocalRegistry", "PeersPage", "may_bind", "send_all"]


class PeersPage:
    """
    One page of registered peers in registration order.

    :ivar peers: objects with ``identity``, ``device_type``, ``device_info``,
        ``connected_at`` and ``registered_seq`` (sessions, or records of
        peers on other servers)
    :ivar more: whether peers follow this page
    :ivar total: registered peers in all, the requester excluded
    """

    __slots__ = ("peers", "more", "total")

    def __init__(self, peers: Sequence[Any], more: bool, total: int) -> None:
        self.peers = peers
        self.more = more
        self.total = total


class IRegistry(Interface):
    """Sessions, identities, peers and rooms (see the module docstring)."""

    sessions = Attribute("The open sessions on this server (a set; local).")

    def add(session):
        """A session opened (local)."""

    def remove(session):
        """
        A session closed (global). Releases its identity, registration and
        rooms unless it was replaced; returns the ids of the rooms it left.
        """

    def holder(identity):
        """The session on this server holding ``identity``, or None (local)."""

    def bind(session, identity):
        """
        Bind ``identity`` to ``session`` for good (global). Taking an identity
        over from another session moves that session's registration and rooms
        to ``session`` and marks it replaced; the replaced session (when on
        this server) is returned for the caller to close, else None.

        :raises ProtocolError: ``IDENTITY_MISMATCH`` (the session holds
            another id), ``FORBIDDEN`` (the holder is authenticated and
            ``session`` is not).
        """

    def register(session, device_type, device_info):
        """
        Mark ``session``'s identity a registered peer, keeping its place in
        the order (global). A device field given as None keeps the value the
        session has (inherited by a takeover).
        """

    def join(session, room_id):
        """
        Add ``session``'s identity to ``room_id`` (created on demand; global).
        Returns ``(others, joined)``: the other members' ids in join order, and
        False when it was a member already.

        :raises ProtocolError: ``TOO_MANY_ROOMS``; ``ROOM_FULL`` when the room
            has its most members, or when the list of its members would not
            fit in one message (then nothing changes).
        """

    def leave(session, room_id):
        """Remove ``session``'s identity from ``room_id`` it is in (global)."""

    def room_member(room_id, identity):
        """The session of member ``identity`` of ``room_id`` on this server, or None (local)."""

    def send_room(room_id, data, exclude):
        """
        Send ``data`` to every member of ``room_id`` but ``exclude`` (global,
        at most once); returns how many members on this server got it.
        """

    def send_member(room_id, identity, data):
        """
        Send ``data`` to member ``identity`` of ``room_id`` on another server
        (global; :meth:`room_member` found no such member on this one).
        Returns True when it was delivered, False when ``identity`` is not a
        member of ``room_id`` (or a Deferred of either).
        """

    def send_peers(data, exclude):
        """
        Send ``data`` to every registered peer but ``exclude`` (global, at
        most once); returns how many on this server got it.
        """

    def route(identity, message_id, data, sender, now):
        """
        Deliver ``data`` (the encoded message as ``identity`` receives it) to
        ``identity``, which has no session on this server: where it is held,
        or else into the offline store under ``message_id`` (global). Returns a Deferred firing with True when it was
        delivered, False when it was stored; it fails with
        :class:`~signaling.store.QueueFull` when it could not be stored.
        """

    def peers_page(exclude, after, limit):
        """
        A :class:`PeersPage` of registered peers after position ``after``,
        ``exclude`` left out, at most ``limit`` of them (None: all; global).
        """

    def counts():
        """``{"connections", "peers", "rooms"}`` on this server, now (local)."""


@implementer(IRegistry)
class LocalRegistry:
    """Every session, peer and room of a single server process."""

    def __init__(self, store: IOfflineStore, max_rooms_per_session: int,
                 max_room_members: int, max_members_bytes: int = 1 << 30) -> None:
        """
        ``max_members_bytes``: the most bytes the encoded member ids of a
        room may take (what ``join-success`` lists).
        """
        self._store = store
        self._max_rooms = max_rooms_per_session
        self._max_members = max_room_members
        self._max_members_bytes = max_members_bytes
        #: room id -> bytes its member ids take in a JSON list
        self._members_bytes: dict[str, int] = {}
        #: The state, public for inspection (tests, debugging); change it only
        #: through the methods, which keep the invariants.
        self.sessions: set[Session] = set()
        #: bound identity -> the session holding it (room members and peers)
        self.identities: dict[str, Session] = {}
        #: registered peer id -> session, in registration order
        self.peers: dict[str, Session] = {}
        #: room id -> {member id -> session}, in join order
        self.rooms: dict[str, dict[str, Session]] = {}
        self._registrations = 0

    @classmethod
    def from_config(cls, store: IOfflineStore, config: Config) -> "LocalRegistry":
        """The registry of a single server configured by ``config``."""
        return cls(
            store, config.max_rooms_per_connection, config.max_room_members,
            config.max_outgoing_size - JOIN_SUCCESS_ENVELOPE,
        )

    def add(self, session: Session) -> None:
        self.sessions.add(session)

    def remove(self, session: Session) -> list[str]:
        self.sessions.discard(session)
        identity = session.identity
        if session.replaced or identity is None:
            return []
        left = list(session.rooms)
        for room_id in left:
            self._remove_member(identity, room_id)
        session.rooms = set()
        del self.identities[identity]
        if session.registered:
            del self.peers[identity]
        return left

    def holder(self, identity: str) -> Session | None:
        return self.identities.get(identity)

    def bind(self, session: Session, identity: str) -> Session | None:
        holder = self.identities.get(identity)
        if not may_bind(session, identity, holder):
            return None
        if holder is not None:
            self._take_over(holder, session, identity)
        session.identity = identity
        self.identities[identity] = session
        return holder

    def _take_over(self, old: Session, new: Session, identity: str) -> None:
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

    def register(self, session: Session, device_type: Any, device_info: Any) -> None:
        if not session.open:
            return
        if not session.registered:
            self._registrations += 1
            session.registered_seq = self._registrations
            session.registered = True
        # A newcomer that took the id over keeps what the old registration
        # said about the device unless it says otherwise.
        if device_type is not None:
            session.device_type = device_type
        if device_info is not None:
            session.device_info = device_info
        self.peers[session.identity] = session  # type: ignore[index]

    def join(self, session: Session, room_id: str) -> tuple[list[str], bool]:
        if not session.open:
            return [], False
        identity = session.identity
        members = self.rooms.get(room_id)
        if members is not None and identity in members:
            return [member for member in members if member != identity], False
        if len(session.rooms) >= self._max_rooms:
            raise ProtocolError(
                m.TOO_MANY_ROOMS, f"a connection may be in at most {self._max_rooms} rooms"
            )
        if members is not None and len(members) >= self._max_members:
            raise ProtocolError(m.ROOM_FULL, f"room '{room_id}' is full")
        size = self._members_bytes.get(room_id, 0) + len(encode_id(identity)) + 1  # type: ignore[arg-type]
        if size > self._max_members_bytes:
            raise ProtocolError(
                m.ROOM_FULL, f"room '{room_id}' has too many members to list in one message"
            )
        if members is None:
            members = self.rooms[room_id] = {}
        others = list(members)
        members[identity] = session  # type: ignore[index]
        self._members_bytes[room_id] = size
        session.rooms.add(room_id)
        return others, True

    def leave(self, session: Session, room_id: str) -> None:
        self._remove_member(session.identity, room_id)  # type: ignore[arg-type]
        session.rooms.discard(room_id)

    def _remove_member(self, identity: str, room_id: str) -> None:
        members = self.rooms[room_id]
        del members[identity]
        if members:
            self._members_bytes[room_id] -= len(encode_id(identity)) + 1
        else:
            del self.rooms[room_id]
            del self._members_bytes[room_id]

    def room_member(self, room_id: str, identity: str) -> Session | None:
        members = self.rooms.get(room_id)
        return None if members is None else members.get(identity)

    def send_room(self, room_id: str, data: bytes, exclude: Session | None) -> int:
        members = self.rooms.get(room_id)
        return 0 if members is None else send_all(members.values(), data, exclude)

    def send_member(self, room_id: str, identity: str, data: bytes) -> bool:
        return False  # there is no other server

    def send_peers(self, data: bytes, exclude: Session | None) -> int:
        return send_all(self.peers.values(), data, exclude)

    def route(self, identity: str, message_id: str, data: bytes,
              sender: str | None, now: float) -> Any:
        return self._store.enqueue(identity, message_id, data, now, sender).addCallback(
            lambda _: False
        )

    def peers_page(self, exclude: Session | None, after: int, limit: int | None) -> PeersPage:
        others = [
            peer for peer in self.peers.values()
            if peer is not exclude and peer.registered_seq > after
        ]
        total = len(self.peers) - (1 if exclude is not None and exclude.registered else 0)
        if limit is None or len(others) <= limit:
            return PeersPage(others, False, total)
        return PeersPage(others[:limit], True, total)

    def counts(self) -> dict[str, int]:
        return {
            "connections": len(self.sessions),
            "peers": len(self.peers),
            "rooms": len(self.rooms),
        }


#: Room for the ``join-success`` fields around the list of members.
JOIN_SUCCESS_ENVELOPE = 1024


def encode_id(identity: str) -> bytes:
    """An id as it appears in a JSON list."""
    return encode({"": identity})[4:-1]


def may_bind(session: Session, identity: str, holder: Session | None) -> bool:
    """
    Whether ``session`` is to be bound to ``identity``, now held by
    ``holder`` here (None: nobody here): False when it is closed or bound to
    that id already.

    :raises ProtocolError: ``IDENTITY_MISMATCH`` when it is bound to another
        id; ``FORBIDDEN`` when an authenticated connection holds the id and
        ``session`` has no token.
    """
    if not session.open:
        return False
    if session.identity is not None:
        if session.identity != identity:
            raise ProtocolError(
                m.IDENTITY_MISMATCH,
                f"this connection is bound to '{session.identity}', not '{identity}'",
            )
        return False
    if holder is not None and holder.grant is not None and session.grant is None:
        raise ProtocolError(m.FORBIDDEN, f"'{identity}' is held by an authenticated connection")
    return True


def send_all(sessions: Iterable[Session], data: bytes, exclude: Session | None) -> int:
    """
    Send the same bytes object to each session but ``exclude`` (the
    WebSocket layer frames it once); returns how many were open.
    """
    sent = 0
    for session in sessions:
        if session is not exclude and session.send(data):
            sent += 1
    return sent
