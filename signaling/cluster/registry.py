"""
:class:`ClusterRegistry`: the :class:`~signaling.registry.IRegistry` of
cluster mode, and the node's :class:`~signaling.cluster.listener.INodeListener`.

It keeps this node's sessions and its *local views* (which local session
holds which id, which local sessions are registered peers, which are in
which room), answered at once as :class:`~signaling.registry.LocalRegistry`
answers them; the *global* part goes through a
:class:`~signaling.cluster.backend.RedisBackend` and answers with Deferreds.

- Fan-outs (``send_room``, ``send_peers``) deliver to the local sessions at
  once and publish one message for the other nodes (at most once).
- A departure is released in Redis by one script that also publishes the
  ``user-left`` and ``peer-status offline`` events to the other nodes, in
  the same step (a peer that reconnects at once elsewhere is never
  announced gone after it is back). The hub's own announcements of that
  departure then reach only this node's sessions: they are made in the
  callbacks of :meth:`ClusterRegistry.remove`'s result, which runs them
  in *local-only* mode.
- Whatever needs Redis while it cannot be reached fails with ``UNAVAILABLE``
  (:mod:`signaling.cluster.unavailable`); local delivery goes on. When Redis
  is back (:meth:`ClusterRegistry.backend_restored`), the node releases what
  closed meanwhile, claims every local id again (a newer holder elsewhere
  wins: the local connection is closed with 4001), registers and joins its
  rooms again, and only then counts as ready.

Ids, rooms and connection ids are plain strings; a connection id is unique
on this node (the node id makes it unique in the cluster).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import messages as m
from ..logs import log_event
from ..message_ids import new_message_id
from ..messages import ProtocolError
from ..registry import IRegistry, PeersPage, may_bind, send_all
from ..session import Session
from .backend import NotHolder
from .connection import BackendUnavailable
from .listener import INodeListener
from .unavailable import refuse_unavailable, unavailable

__all__ = ["ClusterRegistry", "RemotePeer"]

_log = Logger(namespace="signaling.cluster")

#: Peers read per PEERS call when ``get-peers`` asks for all of them.
PEERS_BATCH = 1000

#: Where the fan-outs deliver: everywhere (normally), to this node's sessions
#: only (the hub announcing a departure Redis announced already), to the
#: other nodes only (announcing again what only they were told had gone), or
#: nowhere (a departure that did not happen).
_EVERYWHERE, _LOCAL, _REMOTE, _NOWHERE = "everywhere", "local", "remote", "nowhere"


class RemotePeer:
    """A registered peer as ``get-peers`` lists it (on any node)."""

    __slots__ = ("identity", "registered_seq", "device_type", "device_info", "connected_at")

    def __init__(self, identity: str, registered_seq: int, device_type: Any,
                 device_info: Any, connected_at: int) -> None:
        self.identity = identity
        self.registered_seq = registered_seq
        self.device_type = device_type
        self.device_info = device_info
        self.connected_at = connected_at


def _closed() -> ProtocolError:
    """A request whose connection closed before Redis answered (nobody is told)."""
    return ProtocolError(m.UNAVAILABLE, "the connection closed before the cluster answered")


def _taken_over(identity: str) -> ProtocolError:
    return ProtocolError(
        m.IDENTITY_MISMATCH, f"'{identity}' was taken over by a newer connection"
    )


@implementer(IRegistry, INodeListener)
class ClusterRegistry:
    """
    Sessions, identities, peers and rooms of one node of a cluster (see the
    module docstring). Call :meth:`attach` with the backend before use.

    :param clock: the hub's clock (timestamps of stored messages).
    :param reactor: schedules the few calls that must not run re-entrantly.
    """

    def __init__(self, clock: Any, reactor: Any, max_rooms_per_session: int,
                 max_room_members: int, max_members_bytes: int = 0) -> None:
        """
        ``max_members_bytes``: the most bytes a room's member ids may take as
        the JSON list of a ``join-success`` (0: no limit).
        """
        self.backend: Any = None
        self._clock = clock
        self._reactor = reactor
        self._max_rooms = max_rooms_per_session
        self._max_members = max_room_members
        self._max_members_bytes = max_members_bytes
        #: The local views, public for inspection (tests, debugging); change
        #: them only through the methods.
        self.sessions: set[Session] = set()
        #: bound identity -> the local session holding it
        self.identities: dict[str, Session] = {}
        #: registered peer id -> local session
        self.peers: dict[str, Session] = {}
        #: room id -> {member id -> local session}
        self.rooms: dict[str, dict[str, Session]] = {}
        self._conns: dict[Session, str] = {}
        self._next_conn = 0
        #: connection id -> the identity it is claiming (reply pending)
        self._binding: dict[str, str] = {}
        #: identity being claimed -> deliveries that arrived meanwhile
        self._held: dict[str, list[bytes]] = {}
        #: (identity, connection id) kicked while its claim was pending
        self._kicked: set[tuple[str, str]] = set()
        #: room id -> joins in flight (its channel stays subscribed meanwhile)
        self._joining: dict[str, int] = {}
        #: identity -> connection id closed while Redis could not be told
        self._unreleased: dict[str, str] = {}
        self._fanout = _EVERYWHERE
        self._synced = False
        self._generation = 0
        #: Redis's data epoch when this node's state was last put in place.
        self._synced_epoch: str | None = None
        #: ``on_restored(session, rooms)``: called, with the fan-outs reaching
        #: the other nodes only, for a session whose id had been released by
        #: the other nodes (this node was given up as dead while Redis kept
        #: its data) once it is claimed again, with the rooms it is in again,
        #: so that it is announced anew (the hub's ``announce_again``).
        self.on_restored: Any = None

    def attach(self, backend: Any) -> None:
        """Use ``backend`` (a started or startable RedisBackend with this registry as listener)."""
        self.backend = backend

    @property
    def ready(self) -> bool:
        """True while Redis is reachable and this node's state in it is restored."""
        return self._synced and self.backend is not None and self.backend.available

    def _require_ready(self) -> None:
        if not self.ready:
            raise unavailable()

    # -- sessions -------------------------------------------------------------

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        self._next_conn += 1
        self._conns[session] = "%x" % self._next_conn

    def holder(self, identity: str) -> Session | None:
        return self.identities.get(identity)

    def room_member(self, room_id: str, identity: str) -> Session | None:
        members = self.rooms.get(room_id)
        return None if members is None else members.get(identity)

    def counts(self) -> dict[str, int]:
        return {
            "connections": len(self.sessions),
            "peers": len(self.peers),
            "rooms": len(self.rooms),
        }

    def remove(self, session: Session) -> Any:
        self.sessions.discard(session)
        conn = self._conns.pop(session, None)
        identity = session.identity
        if identity is None or session.replaced or conn is None:
            return []
        left = self._forget(session)
        done: defer.Deferred = defer.Deferred()
        pending = [True]

        def finish(result: tuple[str, list[str]]) -> None:
            if pending[0]:  # failed at once: announce once the hub listens
                self._reactor.callLater(0, self._announce_departure, done, *result)
            else:
                self._announce_departure(done, *result)

        release = self.backend.release(
            identity, conn, announce=None, now=self._clock.seconds()
        )
        release.addCallbacks(
            self._released, self._release_failed,
            callbackArgs=(left,), errbackArgs=(identity, conn, left),
        )
        release.addCallback(finish)
        pending[0] = False
        return done

    def _released(self, release: Any, left: list[str]) -> tuple[str, list[str]]:
        if not release.released:
            # Taken over elsewhere meanwhile (its kick is on the way): the id
            # did not go anywhere, so nobody may hear it left.
            return _NOWHERE, []
        return _LOCAL, release.rooms

    def _release_failed(self, failure: Failure, identity: str, conn: str,
                        left: list[str]) -> tuple[str, list[str]]:
        if not failure.check(BackendUnavailable):
            _log.failure("releasing {identity} failed", failure, identity=identity)
        # Released (and announced to the other nodes) once Redis is back.
        self._unreleased[identity] = conn
        return _LOCAL, left

    def _announce_departure(self, done: defer.Deferred, fanout: str, rooms: list[str]) -> None:
        """Fire ``done`` with ``rooms``; what its callbacks announce goes as ``fanout`` says."""
        self._fanout = fanout
        try:
            done.callback(rooms)
        finally:
            self._fanout = _EVERYWHERE

    def _forget(self, session: Session) -> list[str]:
        """Drop ``session`` from the local views; returns the rooms it was in."""
        identity = session.identity
        left = list(session.rooms)
        for room_id in left:
            self._drop_member(room_id, identity, session)
        if self.identities.get(identity) is session:  # type: ignore[arg-type]
            del self.identities[identity]  # type: ignore[arg-type]
        if self.peers.get(identity) is session:  # type: ignore[arg-type]
            del self.peers[identity]  # type: ignore[arg-type]
        return left

    def _drop_member(self, room_id: str, identity: Any, session: Session) -> None:
        members = self.rooms.get(room_id)
        if members is not None and members.get(identity) is session:
            del members[identity]
            if not members:
                del self.rooms[room_id]
        session.rooms.discard(room_id)
        self._unwatch_if_unused(room_id)

    def _replace(self, session: Session, why: str) -> None:
        """``session`` lost its id to a newer connection: forget it silently, close it with 4001."""
        if session.replaced:
            return
        self._forget(session)
        session.rooms = set()
        session.registered = False
        session.replaced = True
        log_event(
            _log, "takeover", format="{identity} on {peer} was taken over ({reason})",
            peer=session.address, identity=session.identity, reason=why,
        )
        session.conn.close(m.CLOSE_REPLACED, "replaced")

    # -- identities -----------------------------------------------------------

    def bind(self, session: Session, identity: str) -> Any:
        if not may_bind(session, identity, self.identities.get(identity)):
            return None
        self._require_ready()
        conn = self._conns[session]
        self._binding[conn] = identity
        self._held.setdefault(identity, [])
        d = self.backend.claim(identity, conn, session.grant is not None, session.connected_at)
        return d.addBoth(self._claimed, session, identity, conn)

    def _claimed(self, result: Any, session: Session, identity: str, conn: str) -> Any:
        del self._binding[conn]
        kicked = (identity, conn) in self._kicked
        self._kicked.discard((identity, conn))
        try:
            if isinstance(result, Failure):
                return refuse_unavailable(result)
            if not result.bound:
                if result.status == "forbidden":
                    raise ProtocolError(
                        m.FORBIDDEN, f"'{identity}' is held by an authenticated connection"
                    )
                raise unavailable()
            if not session.open:
                # Closed while claiming: give the id back (fenced: only if
                # nobody took it since), announcing what it inherited.
                self._release_quietly(identity, conn)
                raise _closed()
            replaced = self._bind_locally(session, identity, result)
            if kicked:
                self._replace(session, "on another node, while it was binding")
                raise _taken_over(identity)
        finally:
            self._flush_held(identity)
        if result.status in ("takeover", "stale") and replaced is None and result.rooms:
            # Rooms inherited from a connection on another node: listen to them.
            watches = [self.backend.watch_room(room) for room in result.rooms]
            return defer.gatherResults(watches, consumeErrors=True).addBoth(
                self._watched_inherited, replaced
            )
        return replaced

    @staticmethod
    def _watched_inherited(result: Any, replaced: Any) -> Any:
        if isinstance(result, Failure):
            _log.warn("subscribing to inherited rooms failed: {error}",
                      error=result.getErrorMessage())
        return replaced

    def _bind_locally(self, session: Session, identity: str, claim: Any) -> Session | None:
        """Record the claim in the local views; returns a local session it replaced."""
        old = self.identities.get(identity)
        replaced = None
        if old is not None and old is not session:
            replaced = old
            session.registered = old.registered
            session.device_type = old.device_type
            session.device_info = old.device_info
            session.registered_seq = old.registered_seq
            for room_id in old.rooms:
                self.rooms[room_id][identity] = session
            session.rooms |= old.rooms
            old.rooms = set()
            old.registered = False
            old.replaced = True
        elif claim.status in ("takeover", "stale"):
            session.registered = claim.registered
            session.registered_seq = claim.seq
            session.device_type = claim.device_type
            session.device_info = claim.device_info
            for room_id in claim.rooms:
                self.rooms.setdefault(room_id, {})[identity] = session
                session.rooms.add(room_id)
        session.identity = identity
        self.identities[identity] = session
        if session.registered:
            self.peers[identity] = session
        return replaced

    def _flush_held(self, identity: str) -> None:
        """Deliveries that waited for a claim of ``identity``: to its holder now, else on."""
        if identity in self._binding.values():
            return
        held = self._held.pop(identity, [])
        for data in held:
            self.deliver(identity, data)

    def _release_quietly(self, identity: str, conn: str) -> None:
        d = self.backend.release(identity, conn, announce=None, now=self._clock.seconds())
        d.addErrback(self._remember_unreleased, identity, conn)

    def _remember_unreleased(self, failure: Failure, identity: str, conn: str) -> None:
        if not failure.check(BackendUnavailable):
            _log.failure("releasing {identity} failed", failure, identity=identity)
        self._unreleased[identity] = conn

    def _fenced(self, failure: Failure, session: Session) -> Failure:
        """NotHolder: the id went to a newer connection elsewhere; this one is closed."""
        if failure.check(NotHolder):
            self._replace(session, "on another node")
            raise _taken_over(session.identity or "")
        return refuse_unavailable(failure)

    # -- registration ---------------------------------------------------------

    def register(self, session: Session, device_type: Any, device_info: Any) -> Any:
        if not session.open:
            raise _closed()
        if session.replaced:
            raise _taken_over(session.identity or "")
        self._require_ready()
        if device_type is None:
            device_type = session.device_type
        if device_info is None:
            device_info = session.device_info
        d = self.backend.register(
            session.identity, self._conns[session], device_type, device_info
        )
        d.addCallbacks(
            self._registered, self._fenced,
            callbackArgs=(session, device_type, device_info), errbackArgs=(session,),
        )
        return d

    def _registered(self, seq: int, session: Session, device_type: Any, device_info: Any) -> None:
        if not session.open:
            raise _closed()
        if session.replaced:
            raise _taken_over(session.identity or "")
        session.registered = True
        session.registered_seq = seq
        session.device_type = device_type
        session.device_info = device_info
        self.peers[session.identity] = session  # type: ignore[index]

    # -- rooms ----------------------------------------------------------------

    def join(self, session: Session, room_id: str) -> Any:
        if not session.open:
            return [], False
        if room_id not in session.rooms and len(session.rooms) >= self._max_rooms:
            raise ProtocolError(
                m.TOO_MANY_ROOMS, f"a connection may be in at most {self._max_rooms} rooms"
            )
        self._require_ready()
        # Listen to the room before joining it, so no event of it is missed.
        self._joining[room_id] = self._joining.get(room_id, 0) + 1
        d = self.backend.watch_room(room_id)
        d.addCallback(self._send_join, session, room_id)
        d.addBoth(self._joined, session, room_id)
        return d

    def _send_join(self, _: Any, session: Session, room_id: str) -> Any:
        if not session.open or session.replaced:
            raise _closed()
        d = self.backend.join(
            room_id, session.identity, self._conns[session], self._max_members,
            max_bytes=self._max_members_bytes,
        )
        return d.addErrback(self._fenced, session)

    def _joined(self, result: Any, session: Session, room_id: str) -> Any:
        count = self._joining[room_id] - 1
        if count:
            self._joining[room_id] = count
        else:
            del self._joining[room_id]
        if isinstance(result, Failure):
            self._unwatch_if_unused(room_id)
            return refuse_unavailable(result)
        if result.status == "full":
            self._unwatch_if_unused(room_id)
            raise ProtocolError(m.ROOM_FULL, f"room '{room_id}' is full")
        if result.status == "long":
            self._unwatch_if_unused(room_id)
            raise ProtocolError(
                m.ROOM_FULL, f"room '{room_id}' has too many members to list in one message"
            )
        if not session.open or session.replaced:
            self._unwatch_if_unused(room_id)
            raise _closed()
        self.rooms.setdefault(room_id, {})[session.identity] = session  # type: ignore[index]
        session.rooms.add(room_id)
        return result.members, result.status == "joined"

    def leave(self, session: Session, room_id: str) -> Any:
        d = self.backend.leave(room_id, session.identity, self._conns.get(session, ""))
        d.addCallbacks(self._left, self._left_failed,
                       callbackArgs=(session, room_id), errbackArgs=(session,))
        return d

    def _left(self, _: Any, session: Session, room_id: str) -> None:
        self._drop_member(room_id, session.identity, session)

    def _left_failed(self, failure: Failure, session: Session) -> Any:
        if failure.check(NotHolder) and not session.open:
            raise _closed()  # taken over, and closed meanwhile: nothing to answer
        return self._fenced(failure, session)

    def _unwatch_if_unused(self, room_id: str) -> None:
        if room_id not in self.rooms and room_id not in self._joining and self.backend is not None:
            self.backend.unwatch_room(room_id)

    # -- fan-outs and routing -------------------------------------------------

    def _fanout_mode(self, exclude: Session | None) -> str:
        mode = self._fanout
        if mode == _EVERYWHERE and exclude is not None and not exclude.open:
            # An announcement about a connection that has closed meanwhile
            # (a chain of callbacks that outlived it): its departure was
            # announced already, so this one must go nowhere.
            return _NOWHERE
        return mode

    def send_room(self, room_id: str, data: bytes, exclude: Session | None) -> int:
        mode = self._fanout_mode(exclude)
        if mode == _NOWHERE:
            return 0
        members = self.rooms.get(room_id)
        sent = 0
        if members is not None and mode != _REMOTE:
            sent = send_all(members.values(), data, exclude)
        if mode in (_EVERYWHERE, _REMOTE):
            exclude_id = "" if exclude is None else exclude.identity or ""
            self._published(self.backend.publish_room(room_id, data, exclude_id))
        return sent

    def send_peers(self, data: bytes, exclude: Session | None) -> int:
        mode = self._fanout_mode(exclude)
        if mode == _NOWHERE:
            return 0
        sent = 0 if mode == _REMOTE else send_all(self.peers.values(), data, exclude)
        if mode in (_EVERYWHERE, _REMOTE):
            exclude_id = "" if exclude is None else exclude.identity or ""
            self._published(self.backend.publish_presence(data, exclude_id))
        return sent

    @staticmethod
    def _published(d: defer.Deferred) -> None:
        def failed(failure: Failure) -> None:
            if not failure.check(BackendUnavailable):
                _log.failure("publishing to the cluster failed", failure)

        d.addErrback(failed)

    def route(self, identity: str, message_id: str, data: bytes,
              sender: str | None, now: float) -> Any:
        d = self.backend.route(identity, data, message_id, now, sender)
        return d.addErrback(refuse_unavailable)

    def send_member(self, room_id: str, identity: str, data: bytes) -> Any:
        d = self.backend.route(identity, data, "", 0.0, None, room=room_id)
        return d.addErrback(refuse_unavailable)

    def peers_page(self, exclude: Session | None, after: int, limit: int | None) -> Any:
        exclude_id = None if exclude is None else exclude.identity
        if limit is not None:
            d = self.backend.peers(after, limit, exclude_id)
            return d.addCallbacks(_page, refuse_unavailable)
        return self._all_peers(exclude_id, after).addErrback(refuse_unavailable)

    @defer.inlineCallbacks
    def _all_peers(self, exclude_id: str | None, after: int) -> Any:
        peers: list[RemotePeer] = []
        while True:
            page = yield self.backend.peers(after, PEERS_BATCH, exclude_id)
            peers.extend(_page(page).peers)
            if page.next_cursor is None:
                return PeersPage(peers, False, page.total)
            after = page.next_cursor

    # -- INodeListener ----------------------------------------------------------

    def deliver(self, to: str, data: bytes) -> None:
        session = self.identities.get(to)
        if session is not None and session.open:
            session.send(data)
        elif to in self._held:
            self._held[to].append(data)  # its claim is pending: wait for the answer
        else:
            self._reroute(to, data)

    def _reroute(self, to: str, data: bytes) -> None:
        """
        A delivery for an id that just left this node: route it again (to
        its new holder, or into the offline store). A room message for a
        member that left is dropped, as it would be on one server.
        """
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict) or "roomId" in message:
            return
        message_id = m.client_message_id(message) or new_message_id()
        sender = message.get("from")
        d = self.backend.route(
            to, data, message_id, self._clock.seconds(), sender if isinstance(sender, str) else None
        )

        def failed(failure: Failure) -> None:
            _log.warn("a message for {identity} that left this node was lost: {error}",
                      identity=to, error=failure.getErrorMessage())

        d.addErrback(failed)

    def kick(self, identity: str, conn: str) -> None:
        session = self.identities.get(identity)
        if session is not None and self._conns.get(session) == conn:
            self._replace(session, "on another node")
        elif self._binding.get(conn) == identity:
            self._kicked.add((identity, conn))

    def presence(self, data: bytes, origin: str, exclude_id: str) -> None:
        for identity, session in list(self.peers.items()):
            if identity != exclude_id:
                session.send(data)

    def room_event(self, room: str, data: bytes, origin: str, exclude_id: str) -> None:
        members = self.rooms.get(room)
        if members:
            for identity, session in list(members.items()):
                if identity != exclude_id:
                    session.send(data)

    def backend_lost(self) -> None:
        self._synced = False
        self._generation += 1
        _log.warn("cluster backend unavailable: answering UNAVAILABLE to what needs it")

    def backend_restored(self) -> None:
        self._synced = False
        self._generation += 1
        generation = self._generation
        d = self._restore(generation)

        def done(count: int) -> None:
            if generation == self._generation:
                self._synced = True
                self._synced_epoch = self.backend.epoch
                _log.info("cluster backend available; {count} connections registered again",
                          count=count)

        def failed(failure: Failure) -> None:
            if failure.check(BackendUnavailable):
                _log.warn("restoring this node's state in Redis failed: {error}",
                          error=failure.getErrorMessage())
            else:
                _log.failure("restoring this node's state in Redis failed", failure)

        d.addCallbacks(done, failed)

    @defer.inlineCallbacks
    def _restore(self, generation: int) -> Any:
        """Release what closed during the outage, then claim, register and join again."""
        for identity, conn in list(self._unreleased.items()):
            yield self.backend.release(identity, conn, announce=None, now=self._clock.seconds())
            if self._unreleased.get(identity) == conn:
                del self._unreleased[identity]
        if generation != self._generation:
            return 0
        yield defer.gatherResults(
            [self.backend.watch_room(room_id) for room_id in list(self.rooms)],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        sessions = [s for s in self.identities.values() if s.open]
        # Ids Redis no longer knows were released by the other nodes (with
        # their events) if Redis kept its data; if it lost it, nobody was told.
        given_up = self._synced_epoch is not None and self._synced_epoch == self.backend.epoch
        yield defer.gatherResults(
            [self._reclaim(session, generation, given_up) for session in sessions],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        return len(sessions)

    @defer.inlineCallbacks
    def _reclaim(self, session: Session, generation: int, given_up: bool) -> Any:
        identity = session.identity
        conn = self._conns.get(session)
        if conn is None or generation != self._generation:
            return
        claim = yield self.backend.claim(
            identity, conn, session.grant is not None, session.connected_at, reclaim=True
        )
        if not claim.bound:
            if self.identities.get(identity) is session:  # type: ignore[arg-type]
                self._replace(session, "by a newer connection while Redis was away")
            return
        try:
            if session.registered:
                session.registered_seq = yield self.backend.register(
                    identity, conn, session.device_type, session.device_info
                )
            for room_id in list(session.rooms):
                joined = yield self.backend.join(room_id, identity, conn, self._max_members)
                if joined.status == "full":
                    _log.warn("{identity} could not rejoin room {room}: it is full now",
                              identity=identity, room=room_id)
                    self._drop_member(room_id, identity, session)
        except NotHolder:
            self._replace(session, "by a newer connection while Redis was away")
            return
        if claim.status == "new" and given_up and self.on_restored is not None and session.open:
            self._fanout = _REMOTE
            try:
                self.on_restored(session, sorted(session.rooms))
            finally:
                self._fanout = _EVERYWHERE


def _page(page: Any) -> PeersPage:
    peers = [
        RemotePeer(p.peer_id, p.seq, p.device_type, p.device_info, p.connected_at)
        for p in page.peers
    ]
    return PeersPage(peers, page.next_cursor is not None, page.total)
