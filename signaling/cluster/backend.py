"""
:class:`RedisBackend`: one node's view of the cluster's shared state.

It owns the node's two Redis connections (commands, subscriptions), its
identity (``node_id``), its heartbeat and the reaper of dead nodes, and
exposes every Lua script as a method returning a Deferred with plain Python
values. Everything a method publishes carries this node as origin; the
caller delivers to its own local connections itself (that keeps working
while Redis is down) and the other nodes get the rest through their
:class:`~signaling.cluster.listener.INodeListener`.

Every method fails with
:class:`~signaling.cluster.connection.BackendUnavailable` when Redis is down
or does not answer within ``timeout`` (and then nothing can be promised
about whether the operation happened), and with
:class:`~signaling.cluster.connection.BackendError` if Redis refuses a
command (a bug).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, NamedTuple, Sequence

from twisted.internet import defer, task
from twisted.logger import Logger

from ..messages import encode
from ..store import StoreLimits
from .address import RedisAddress
from .connection import DEFAULT_PROTOCOL, BackendUnavailable, CommandConnection, SubscriberConnection
from .envelope import event
from .listener import NodeSubscriber, raw, text
from .offline import OfflineLimits, RedisOfflineStore, _scripts

__all__ = [
    "Claim", "Join", "NotHolder", "PeerInfo", "PeersPage", "Reaped", "RedisBackend",
    "Release",
]

_log = Logger()

#: Ids released by one REAP script call (keeps each call short).
REAP_BATCH = 1000


class NotHolder(Exception):
    """The connection does not hold the id in Redis (any more): it was taken over."""


class Claim(NamedTuple):
    """
    The outcome of :meth:`RedisBackend.claim`.

    ``status`` is one of ``"new"`` (nobody held the id), ``"same"`` (this
    connection held it already), ``"takeover"`` (a live connection held it;
    its node was sent a kick unless it is this node, whose caller closes
    its own old connection), ``"stale"`` (the holder's node is dead;
    replaced without a kick), ``"forbidden"`` (the live holder is
    authenticated and the claimant is not: nothing changed) or ``"lost"``
    (``reclaim=True`` and another live connection holds it: nothing
    changed). For ``"takeover"`` and ``"stale"`` the new holder inherits
    the registration (``registered``, ``seq``, ``device_type``,
    ``device_info``) and ``rooms`` of the old one.
    """

    status: str
    old_node: str | None
    old_conn: str | None
    registered: bool
    seq: int
    device_type: Any
    device_info: Any
    rooms: list[str]

    @property
    def bound(self) -> bool:
        """True when the claimant holds the id now."""
        return self.status in ("new", "same", "takeover", "stale")


class Release(NamedTuple):
    """The outcome of :meth:`RedisBackend.release`."""

    #: False when the connection did not hold the id (nothing was done).
    released: bool
    #: The id was a registered peer (its offline presence was published).
    registered: bool
    #: The rooms it left (user-left was published to their other members).
    rooms: list[str]


class Join(NamedTuple):
    """The outcome of :meth:`RedisBackend.join`."""

    #: ``"joined"``, ``"already"`` (a member before) or ``"full"``.
    status: str
    #: The other members on live nodes, in join order (empty when full).
    members: list[str]


class PeerInfo(NamedTuple):
    """One registered peer of a :class:`PeersPage`."""

    peer_id: str
    seq: int
    device_type: Any
    device_info: Any
    connected_at: int


class PeersPage(NamedTuple):
    """The outcome of :meth:`RedisBackend.peers`."""

    peers: list[PeerInfo]
    #: Registered peers other than the excluded one (peers of nodes that
    #: died within the last node timeout may still count).
    total: int
    #: The ``after_seq`` of the next page, or None when this is the last.
    next_cursor: int | None


class _ReapBatch(NamedTuple):
    released: int
    more: bool
    nodes: list[str]


class Reaped(NamedTuple):
    """The outcome of :meth:`RedisBackend.reap`."""

    #: How many ids of dead nodes were released.
    released: int
    #: The dead nodes forgotten.
    nodes: list[str]


def _json(value: bytes) -> Any:
    return json.loads(value) if value else None


class RedisBackend:
    """
    One node of the cluster (see the module docstring).

    :param address: where Redis is (:func:`~signaling.cluster.address.parse_redis_url`).
    :param reactor: the reactor (clock and connections).
    :param listener: the :class:`~signaling.cluster.listener.INodeListener`
        that receives deliveries, kicks, events and up/down transitions.
    :param node_id: this node's id (default: 16 random hex digits).
    :param prefix: put in front of every key and channel name.
    :param timeout: seconds a command may wait for its reply.
    :param node_timeout: a node whose heartbeat is this old is dead and
        reaped; the heartbeat and the reaper run every third of it.
    :param limits: the offline store's limits (``StoreLimits`` or
        :class:`~signaling.cluster.offline.OfflineLimits`).
    :param presence: publish ``peer-status offline`` for reaped peers.
    :param device_type: put ``deviceType`` in those messages.
    """

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        listener: Any,
        node_id: str | None = None,
        prefix: str = "signaling:",
        timeout: float = 2.0,
        node_timeout: float = 15.0,
        limits: StoreLimits = OfflineLimits(),
        presence: bool = True,
        device_type: bool = True,
        max_delay: float = 1.0,
        protocol: Any = DEFAULT_PROTOCOL,
    ) -> None:
        self.node_id = node_id or secrets.token_hex(8)
        self.prefix = prefix
        self.listener = listener
        self.node_timeout = node_timeout
        self.reactor = reactor
        #: True while both connections are up and the heartbeat is in place.
        self.available = False
        self._scripts = scripts = _scripts()
        self.commands = CommandConnection(
            address, reactor, timeout, max_delay, scripts.values(), protocol
        )
        self.node_subscriber = NodeSubscriber(self.node_id, prefix, listener)
        self.subscriptions = SubscriberConnection(
            address, reactor, self.node_subscriber, timeout, max_delay, protocol
        )
        self.subscriptions.channels.update(
            (self.node_subscriber.node_channel, self.node_subscriber.presence_channel)
        )
        #: The offline store, sharing the command connection.
        self.store = RedisOfflineStore(self.commands, reactor, limits, prefix)
        self._p = raw(prefix)
        self._node = raw(self.node_id)
        self._route_head = (self._p, self._node, *self.store.limit_args)
        self._flags = (b"1" if presence else b"0", b"1" if device_type else b"0")
        self._commands_ready = False
        self._stopped = False
        #: When this node last became available (the reaper's grace starts then).
        self._available_since = 0.0
        #: The epoch of Redis's data as of the last heartbeat: it changes
        #: when Redis lost its data (a restart without persistence).
        self.epoch: str | None = None
        self._beat = task.LoopingCall(self._timer, self.heartbeat_check, False)
        self._beat.clock = reactor
        self._reaper = task.LoopingCall(self._timer, self.reap, True)
        self._reaper.clock = reactor
        self.commands.on_status = self._commands_status
        self.subscriptions.on_status = self._subscriptions_status

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Connect (and keep reconnecting); the listener hears when the node is available."""
        self._stopped = False
        self.commands.start()
        self.subscriptions.start()
        self.store.start()

    def when_available(self, timeout: float | None = None) -> defer.Deferred:
        """Fires once the node is available, or fails with BackendUnavailable after ``timeout``."""
        limit = self.commands.timeout * 2 if timeout is None else timeout
        deadline = self.reactor.seconds() + limit

        def check() -> Any:
            if self.available:
                return None
            if self.commands.refused is not None:
                raise BackendUnavailable(self.commands.refused)
            if self.reactor.seconds() >= deadline:
                raise BackendUnavailable(f"the cluster node was not available within {limit:g} s")
            return task.deferLater(self.reactor, 0.02, check)

        return defer.maybeDeferred(check)

    @defer.inlineCallbacks
    def stop(self, retire: bool = True):
        """
        Stop the timers and close both connections. With ``retire`` (and
        Redis reachable), first release every id still bound to this node,
        with the usual events, and forget the node, so nobody waits for the
        reaper.
        """
        self._stopped = True
        for loop in (self._beat, self._reaper):
            if loop.running:
                loop.stop()
        yield self.store.close()
        if retire and self.commands.up:
            try:
                yield self.retire()
            except Exception:
                _log.failure("retiring cluster node {node} failed", node=self.node_id)
        self._set_available(False)
        yield defer.gatherResults(
            [self.commands.stop(), self.subscriptions.stop()], consumeErrors=True
        )

    @defer.inlineCallbacks
    def retire(self):
        """Mark this node dead and release its ids now (events come from this node)."""
        yield self.commands.execute(b"DEL", self._key(b"node:", self._node, b":alive"))
        released = 0
        while True:
            reply = yield self._reap(self._node)
            released += reply.released
            if not reply.more:
                return released

    def _timer(self, action: Any, reaper: bool) -> None:
        """
        Run a periodic action while the command connection is ready (the
        ``reaper`` only while the node is available, and not during the
        first ``node_timeout`` after it became available); errors are
        logged, never raised, so the loop survives.
        """
        if not self._commands_ready or (reaper and not self.available):
            return
        if reaper and self.reactor.seconds() - self._available_since < self.node_timeout:
            # Just back after an outage: the other nodes may still be
            # reconnecting, their heartbeats lapsed meanwhile; they are not dead.
            return

        def failed(failure: Any) -> None:
            if not failure.check(BackendUnavailable):
                _log.failure("cluster timer failed", failure)

        defer.maybeDeferred(action).addErrback(failed)

    def _commands_status(self, up: bool) -> None:
        if not up:
            self._commands_ready = False
            self._set_available(False)
            return

        def beaten(_: Any) -> None:
            if self.commands.up:
                self._commands_ready = True
                self._set_available(True)

        def failed(failure: Any) -> None:
            _log.warn("first heartbeat failed: {error}", error=failure.getErrorMessage())

        self.heartbeat().addCallbacks(beaten, failed)

    def _subscriptions_status(self, up: bool) -> None:
        self._set_available(up)

    def _set_available(self, up: bool) -> None:
        available = (
            up and self._commands_ready and self.subscriptions.up and not self._stopped
        )
        if self._commands_ready and not self._stopped and not self._beat.running:
            self._beat.start(self.node_timeout / 3, now=False)
        if available == self.available:
            return
        self.available = available
        if available:
            self._available_since = self.reactor.seconds()
            if not self._reaper.running:
                self._reaper.start(self.node_timeout / 3, now=True)
            self._tell("backend_restored")
        else:
            self._tell("backend_lost")

    def _tell(self, method: str) -> None:
        try:
            getattr(self.listener, method)()
        except Exception:
            _log.failure("the cluster listener failed in {method}", method=method)

    # -- helpers ------------------------------------------------------------

    def _key(self, *parts: bytes) -> bytes:
        return self._p + b"".join(parts)

    def _run(self, name: str, *args: Any) -> defer.Deferred:
        return self.commands.run(self._scripts[name], self._p, *args)

    # -- node ---------------------------------------------------------------

    def heartbeat(self) -> defer.Deferred:
        """
        Keep this node alive for ``node_timeout`` more seconds. Fires with
        True if it was alive already, False if not (its entries may be gone:
        first beat, a stall longer than ``node_timeout``, or Redis lost its
        data).
        """
        ttl = b"%d" % max(1, int(self.node_timeout * 1000))
        d = self._run("heartbeat", self._node, ttl, secrets.token_hex(8).encode("ascii"))
        return d.addCallback(self._beaten)

    def _beaten(self, reply: list) -> bool:
        self.epoch = text(reply[1])
        return bool(reply[0])

    def heartbeat_check(self) -> defer.Deferred:
        """:meth:`heartbeat`, telling the listener to re-register when the node was considered dead."""

        def check(was_alive: bool) -> None:
            if not was_alive and self.available:
                _log.warn(
                    "cluster node {node} had been given up as dead (or Redis lost its data); "
                    "registering its connections again",
                    node=self.node_id,
                )
                self._tell("backend_restored")

        return self.heartbeat().addCallback(check)

    @defer.inlineCallbacks
    def reap(self):
        """
        Release the ids of every dead node (no heartbeat for ``node_timeout``),
        publishing user-left and peer-status offline for them, and forget
        those nodes. Fires with a :class:`Reaped`. Safe on several nodes at
        once: each script is atomic, so an id is released once.
        """
        released = 0
        nodes: list[str] = []
        while True:
            reply = yield self._reap(b"")
            released += reply.released
            nodes.extend(reply.nodes)
            if not reply.more:
                return Reaped(released, nodes)

    def _reap(self, target: bytes) -> defer.Deferred:
        now_ms = b"%d" % int(self.reactor.seconds() * 1000)
        d = self._run("reap", self._node, now_ms, REAP_BATCH, *self._flags, target)
        return d.addCallback(lambda r: _ReapBatch(r[0], bool(r[1]), [text(n) for n in r[2:]]))

    # -- identities ---------------------------------------------------------

    def claim(
        self,
        identity: str,
        conn: str,
        authenticated: bool,
        connected_at_ms: int,
        reclaim: bool = False,
    ) -> defer.Deferred:
        """
        Bind ``identity`` to this node's connection ``conn`` (a str unique on
        this node), taking it over from another holder as the protocol says
        (an authenticated holder cannot be taken over by an unauthenticated
        one). ``connected_at_ms`` is what get-peers shows as
        ``connectedAt``. With ``reclaim`` (after an outage), never take it
        from a live holder. Fires with a :class:`Claim`.
        """
        d = self._run(
            "claim",
            raw(identity),
            self._node,
            raw(conn),
            b"1" if authenticated else b"0",
            b"%d" % connected_at_ms,
            b"reclaim" if reclaim else b"claim",
        )
        return d.addCallback(self._claim_reply)

    @staticmethod
    def _claim_reply(r: list) -> Claim:
        return Claim(
            status=text(r[0]),
            old_node=text(r[1]) or None,
            old_conn=text(r[2]) or None,
            registered=r[3] == b"1",
            seq=int(r[4] or 0),
            device_type=_json(r[5]),
            device_info=_json(r[6]),
            rooms=[text(room) for room in r[7:]],
        )

    def register(
        self,
        identity: str,
        conn: str,
        device_type: Any = None,
        device_info: Any = None,
        announce: bytes = b"",
    ) -> defer.Deferred:
        """
        Make ``identity`` (held by ``conn``) a registered peer with these
        device details (plain JSON values), and publish ``announce`` (the
        encoded peer-status online message; ``b""`` for none) to the other
        nodes' registered peers. Fires with its registration seq (kept from
        an earlier registration or takeover); fails with
        :class:`NotHolder` when ``conn`` does not hold ``identity``.
        """
        d = self._run(
            "register", raw(identity), self._node, raw(conn),
            encode(device_type), encode(device_info), announce,
        )
        return d.addCallback(self._fenced, identity)

    @staticmethod
    def _fenced(reply: int, identity: str) -> int:
        if reply < 0:
            raise NotHolder(f"this connection no longer holds '{identity}'")
        return reply

    def release(
        self, identity: str, conn: str, announce: bytes | None = b"", now: float | None = None
    ) -> defer.Deferred:
        """
        ``conn`` closed: if (and only if) it still holds ``identity``, leave
        every room (user-left to the other members, built by the script) and
        unregister, publishing ``announce`` (peer-status offline; ``b""``
        for none) if it was a registered peer. With ``announce=None`` the
        script builds that peer-status itself, as :meth:`reap` does (stamped
        ``now``, by default the reactor's time), so the departure reaches
        the other nodes atomically with the release. Fires with a
        :class:`Release`.
        """
        if announce is None:
            now_ms = b"%d" % int((self.reactor.seconds() if now is None else now) * 1000)
            d = self._run("release", raw(identity), self._node, raw(conn), b"", now_ms, *self._flags)
        else:
            d = self._run("release", raw(identity), self._node, raw(conn), announce)
        return d.addCallback(lambda r: Release(bool(r[0]), bool(r[1]), [text(x) for x in r[2:]]))

    # -- rooms --------------------------------------------------------------

    def join(
        self, room: str, identity: str, conn: str, max_members: int, announce: bytes = b"",
        max_bytes: int = 0,
    ) -> defer.Deferred:
        """
        Add ``identity`` (held by ``conn``) to ``room`` and publish
        ``announce`` (user-joined; ``b""`` for none) to its other members,
        unless the room has ``max_members`` (status ``full``) or its member
        ids would take more than ``max_bytes`` as a JSON list (status
        ``long``; 0: no such limit).
        Subscribe with :meth:`watch_room` *before* joining, so no event of
        the room is missed. Fires with a :class:`Join`; fails with
        :class:`NotHolder` when ``conn`` does not hold ``identity``.
        """
        d = self._run(
            "join", raw(room), raw(identity), self._node, raw(conn), b"%d" % max_members,
            announce, b"%d" % max_bytes,
        )

        def joined(r: list) -> Join:
            if r[0] == b"lost":
                raise NotHolder(f"this connection no longer holds '{identity}'")
            return Join(text(r[0]), [text(m) for m in r[1:]])

        return d.addCallback(joined)

    def leave(self, room: str, identity: str, conn: str, announce: bytes = b"") -> defer.Deferred:
        """
        Remove ``identity`` (held by ``conn``) from ``room``, publishing
        ``announce`` (user-left; ``b""`` for none) to the remaining members.
        Fires with True if it was a member; fails with :class:`NotHolder`.
        """
        d = self._run("leave", raw(room), raw(identity), self._node, raw(conn), announce)
        return d.addCallback(self._fenced, identity).addCallback(bool)

    def watch_room(self, room: str) -> defer.Deferred:
        """Subscribe to ``room``'s channel (while a local connection is in it); fires once confirmed."""
        return self.subscriptions.subscribe(self.node_subscriber.room_channel(room))

    def unwatch_room(self, room: str) -> None:
        """Stop receiving ``room``'s events (its last local member left)."""
        self.subscriptions.unsubscribe(self.node_subscriber.room_channel(room))

    def publish_room(self, room: str, data: bytes, exclude_id: str) -> defer.Deferred:
        """
        Send ``data`` to the members of ``room`` on the other nodes, except
        ``exclude_id`` (the sender). Fires with how many nodes listen.
        """
        channel = self.node_subscriber.room_channel(room)
        return self.commands.execute(
            b"PUBLISH", channel, event(b"R", self._node, raw(exclude_id), data)
        )

    def publish_presence(self, data: bytes, exclude_id: str) -> defer.Deferred:
        """Send ``data`` to the registered peers of the other nodes, except ``exclude_id``."""
        return self.commands.execute(
            b"PUBLISH",
            self.node_subscriber.presence_channel,
            event(b"P", self._node, raw(exclude_id), data),
        )

    # -- peers and routing --------------------------------------------------

    def peers(self, after_seq: int = 0, limit: int = 100, exclude: str | None = None) -> defer.Deferred:
        """
        A page of registered peers with a seq above ``after_seq``, in
        registration order across all nodes, without ``exclude`` (the
        asking peer). Fires with a :class:`PeersPage`.
        """
        d = self._run("peers", b"%d" % after_seq, b"%d" % limit, b"" if exclude is None else raw(exclude))

        def page(r: list) -> PeersPage:
            peers = [
                PeerInfo(text(r[i + 1]), int(r[i]), _json(r[i + 2]), _json(r[i + 3]), int(r[i + 4]))
                for i in range(2, len(r), 5)
            ]
            more = r[1] == 1 and peers
            return PeersPage(peers, r[0], peers[-1].seq if more else None)

        return d.addCallback(page)

    def route(
        self,
        to: str,
        data: bytes,
        message_id: str,
        now: float,
        sender: str | None,
        room: str | None = None,
    ) -> defer.Deferred:
        """
        Deliver ``data`` (the exact bytes ``to`` must receive) to ``to`` on
        whichever node holds it. The messages routed in one turn of the
        reactor share one script call (one round trip) and one publish per
        receiving node, and keep their order. Fires with True when it was
        published to that node, else False: without a ``room``, it was then
        stored offline as message ``message_id`` from ``sender`` at ``now``
        (acknowledged by Redis); with a ``room``, ``to`` is not a member of
        it or cannot be reached, and nothing was stored. Fails with
        :class:`~signaling.store.QueueFull` when storing would pass a limit
        (nothing stored).
        """
        to_bytes = raw(to)
        id_bytes = raw(message_id)
        sender_bytes = b"" if sender is None else raw(sender)
        return self.commands.run_batched(
            self._scripts["route"],
            self._route_head,
            (
                to_bytes,
                b"%d:%s%d:%s" % (len(to_bytes), to_bytes, len(data), data),
                b"%d:%s%d:%s%r:" % (len(id_bytes), id_bytes, len(sender_bytes), sender_bytes,
                                    float(now)),
                b"" if room is None else raw(room),
            ),
            self._routed,
        )

    def _routed(self, reply: Any, item: Sequence[bytes]) -> bool:
        if reply == 1:
            return True
        if reply == 0:
            return False
        return self.store.stored_reply(reply, text(item[0]), False)

    # -- cluster ------------------------------------------------------------

    def cluster_stats(self) -> defer.Deferred:
        """
        The cluster's totals: ``{"nodes", "peers", "offlineStored",
        "offlineBytes"}`` (nodes known, registered peers, offline messages
        and their bytes), read in one round trip's time.
        """
        execute = self.commands.execute
        d = defer.gatherResults(
            [
                execute(b"SCARD", self._key(b"nodes")),
                execute(b"ZCARD", self._key(b"peers")),
                self.store.refresh(),
            ],
            consumeErrors=True,
        )
        d.addErrback(lambda f: f.value.subFailure)
        return d.addCallback(
            lambda r: {"nodes": r[0], "peers": r[1], "offlineStored": r[2][0], "offlineBytes": r[2][1]}
        )
