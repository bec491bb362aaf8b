"""
The Redis client adapter: one command connection and one subscriber
connection, each reconnecting by itself, on txredisapi's protocol.

txredisapi (pinned ``==1.6.0``) keeps Twisted's default reactor and plain
Deferreds. Its known defects are handled here, and only here:

- its connection pool reorders concurrent commands, and commands issued while
  Redis is down wait without limit: :class:`CommandConnection` holds exactly
  ONE connection (replies come back in the order commands were written, so
  scripts and publishes keep their order), fails at once with
  :class:`BackendUnavailable` while that connection is down, and a watchdog
  fails every command that waits longer than ``timeout`` (then drops the
  stalled connection, which reconnects);
- it does not resubscribe after a reconnect: :class:`SubscriberConnection`
  subscribes again to every channel each time its connection is (re)made;
- its reconnect backoff grows to 10 s: here it is capped at ``max_delay``
  (1 s by default), so a restarted Redis is used again within a second.

Both connections report up/down transitions through ``on_status(up)``.
Everything is read and written as bytes (``charset=None``, no number
conversion), so payloads cross Redis untouched.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import replace
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..internals import direct_transport, write_now
from .address import RedisAddress

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "CommandConnection",
    "Script",
    "SubscriberConnection",
    "make_endpoint",
]

_log = Logger()

#: ``protocol`` argument meaning txredisapi's default protocol class: the one
#: with hiredis's C reply parser when hiredis is installed.
DEFAULT_PROTOCOL = None

#: Channels per SUBSCRIBE command when resubscribing after a reconnect.
SUBSCRIBE_BATCH = 512

#: The most items, and about the most bytes, one batched script call carries
#: (:meth:`CommandConnection.run_batched`); a fuller batch is sent at once.
MAX_BATCH_ITEMS = 256
MAX_BATCH_BYTES = 256 * 1024


class BackendUnavailable(Exception):
    """
    Redis cannot be reached, or did not answer in time.

    A command that failed this way may or may not have run: it was either
    never sent (the connection was down) or its reply did not arrive.
    """


class BackendError(Exception):
    """Redis answered a command with an error (a bug or a misconfiguration)."""


class Script:
    """
    One Lua script: its text and SHA1, run with EVALSHA.

    ``name`` is for error messages only.
    """

    __slots__ = ("name", "text", "sha")

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text.encode("utf-8")
        self.sha = hashlib.sha1(self.text).hexdigest().encode("ascii")

    def __repr__(self) -> str:
        return f"<Script {self.name} {self.sha[:8].decode()}>"


def make_endpoint(address: RedisAddress, reactor: Any, timeout: float) -> Any:
    """The client endpoint for ``address`` (unix socket, TCP or TLS)."""
    if address.path is not None:
        return UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)
    if not address.tls:
        return endpoint
    from twisted.internet import ssl

    if address.ca_file is not None:
        with open(address.ca_file, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
    else:
        trust = ssl.platformTrust()
    return wrapClientTLS(ssl.optionsForClientTLS(address.host, trustRoot=trust), endpoint)


def _text(value: Any) -> str:
    """An error message from hiredis (str) or the pure-Python parser (str or bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@lru_cache(maxsize=None)
def _txredisapi() -> Any:
    """
    txredisapi, imported on first use: it imports the global reactor when
    imported, which must not happen before a program chose its reactor.
    """
    import txredisapi

    return txredisapi


class _FastCommands:
    """
    Added to txredisapi's protocol: the per-command path, made short. The
    command bytes are built in one pass (txredisapi converts every argument
    twice and extends a buffer four times per argument: that was the
    largest single cost of a relayed message, ROUTE having a dozen
    arguments) and written at once when the socket takes it
    (:func:`signaling.internals.write_now`); each command waits for its
    reply on one Deferred in a plain FIFO (txredisapi chains three per
    command through a queue); replies are not walked for conversions, since
    this project reads raw bytes (``charset=None``, no number conversion).
    Every command of the connection goes this way, txredisapi's own AUTH and
    SELECT included, so replies and Deferreds pair up in order.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replies: deque[defer.Deferred] = deque()
        self._direct: Any = None

    def connectionMade(self) -> None:
        self._direct = direct_transport(self.transport)  # type: ignore[attr-defined]
        super().connectionMade()  # type: ignore[misc]

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            if type(arg) is not bytes:
                arg = self._encode_value(arg)  # type: ignore[attr-defined]
            parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        return b"".join(parts)

    def execute_command(self, *args: Any, **kwargs: Any) -> defer.Deferred:
        if not self.connected:  # type: ignore[attr-defined]
            raise _txredisapi().ConnectionError("Not connected")
        command = self._build_command(*args)
        direct = self._direct
        if direct is not None:
            write_now(direct, command)
        else:
            self.transport.write(command)  # type: ignore[attr-defined]
        d: defer.Deferred = defer.Deferred()
        self._replies.append(d)
        return d

    def tryConvertData(self, data: Any) -> Any:
        return data

    def replyReceived(self, reply: Any) -> None:
        if not self._replies:
            super().replyReceived(reply)  # type: ignore[misc]
        elif isinstance(reply, Exception):
            self._replies.popleft().errback(reply)
        else:
            self._replies.popleft().callback(reply)

    def connectionLost(self, why: Any) -> None:
        waiting, self._replies = self._replies, deque()
        super().connectionLost(why)  # type: ignore[misc]
        for d in waiting:
            d.errback(_txredisapi().ConnectionError("Lost connection"))


@lru_cache(maxsize=None)
def _fast(protocol: Any) -> Any:
    """``protocol`` (a txredisapi protocol class) with :class:`_FastCommands`."""
    if issubclass(protocol, _FastCommands):
        return protocol
    return type(protocol.__name__, (_FastCommands, protocol), {})


@lru_cache(maxsize=None)
def _factory_class() -> Any:
    return type("_Factory", (_FactoryMixin, _txredisapi().RedisFactory), {})


class _FactoryMixin:
    """
    Added to txredisapi's reconnecting factory: holds one connection and tells
    its owner when that connection becomes usable (after AUTH and SELECT) and
    when it is gone.
    """

    def __init__(self, owner: "_Connection", address: RedisAddress, protocol: Any) -> None:
        super().__init__(  # type: ignore[call-arg]
            None,
            address.db or None,
            1,
            isLazy=True,
            charset=None,
            password=address.password,
            convertNumbers=False,
            username=address.username,
        )
        self.deferred = None  # nobody waits on txredisapi's own "pool ready" Deferred
        self.protocol = _fast(protocol or _txredisapi().RedisProtocol)
        self.initialDelay = owner.initial_delay
        self.maxDelay = owner.max_delay
        self.owner = owner

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)  # type: ignore[misc]
        if conn in self.pool:  # type: ignore[attr-defined]
            self.owner._connection_ready(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)  # type: ignore[misc]
        self.owner._connection_gone(conn)

    def connectionError(self, why: str) -> None:
        # AUTH or SELECT was refused; txredisapi has stopped reconnecting.
        self.owner._refused(why)


class _Connection:
    """What both connections share: starting, stopping, status and waiting."""

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        timeout: float,
        max_delay: float,
        protocol: Any,
        name: str,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.timeout = timeout
        self.max_delay = max_delay
        self.initial_delay = min(0.1, max_delay)
        self.name = name
        #: Called with True when the connection becomes usable, False when it is lost.
        self.on_status: Callable[[bool], None] | None = None
        #: Why the last connection attempt was refused (bad password...), if it was.
        self.refused: str | None = None
        self._protocol = protocol
        self._factory: Any = None
        self._up = False
        self._waiters: list[defer.Deferred] = []

    @property
    def up(self) -> bool:
        """True while the connection is usable."""
        return self._up

    def start(self) -> None:
        """Start connecting (and reconnecting whenever the connection is lost)."""
        if self._factory is not None:
            return
        self._factory = _factory_class()(self, self.address, self._make_protocol())
        self._factory.startConnecting(make_endpoint(self.address, self.reactor, self.timeout))

    def stop(self) -> defer.Deferred:
        """Stop reconnecting and close the connection; fires when it is closed."""
        factory, self._factory = self._factory, None
        self._set_up(False)
        self._fail_waiters(BackendUnavailable(f"the Redis {self.name} connection was stopped"))
        if factory is None:
            return defer.succeed(None)
        return factory.disconnect()

    def when_up(self, timeout: float | None = None) -> defer.Deferred:
        """
        A Deferred that fires once the connection is usable, or fails with
        :class:`BackendUnavailable` after ``timeout`` seconds (default: the
        command timeout) or at once if Redis refused the login.
        """
        if self._up:
            return defer.succeed(None)
        if self.refused is not None:
            return defer.fail(BackendUnavailable(self.refused))
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)

        def timed_out(failure: Failure, limit: float) -> Failure:
            if failure.check(defer.TimeoutError):
                if d in self._waiters:
                    self._waiters.remove(d)
                raise BackendUnavailable(
                    f"Redis at {self.address.describe()} not reachable within {limit:g} s"
                )
            return failure

        limit = self.timeout if timeout is None else timeout
        d.addTimeout(limit, self.reactor)
        d.addErrback(timed_out, limit)
        return d

    def _set_up(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        _log.info(
            "Redis {name} connection to {where} is {state}",
            name=self.name,
            where=self.address.describe(),
            state="up" if up else "down",
        )
        if self.on_status is not None:
            self.on_status(up)
        if up:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(error)

    def _refused(self, why: str) -> None:
        self.refused = f"Redis at {self.address.describe()} refused the login: {why}"
        _log.error("{reason}", reason=self.refused)
        self._fail_waiters(BackendUnavailable(self.refused))

    def _make_protocol(self) -> Any:
        return self._protocol

    def _connection_ready(self, proto: Any) -> None:
        raise NotImplementedError

    def _connection_gone(self, proto: Any) -> None:
        raise NotImplementedError


class _Link:
    """
    One established command connection and the send times of the commands
    still waiting for their reply (oldest first: Redis answers in order).
    """

    __slots__ = ("proto", "sent", "reason", "replies", "seen")

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.sent: deque[float] = deque()
        self.reason: str | None = None
        #: Replies received so far (progress, for the watchdog).
        self.replies = 0
        #: ``replies`` when the watchdog first saw an overdue command, else None.
        self.seen: int | None = None

    def settle(self, result: Any) -> Any:
        """The reply of the oldest command arrived (or the connection died)."""
        sent = self.sent
        if sent:
            sent.popleft()
        self.replies += 1
        if isinstance(result, Failure):
            tx = _txredisapi()
            if result.check(tx.ResponseError):
                raise BackendError(_text(result.value.args[0] if result.value.args else ""))
            if result.check(tx.ConnectionError):
                raise BackendUnavailable(self.reason or "the connection to Redis was lost")
        return result

    def stalled(self, now: float, timeout: float) -> bool:
        """
        True when the oldest command is overdue and was already overdue at
        the previous check with no reply since (or, while replies trickle
        in, is twice overdue). Two checks are needed so that a reactor that
        was busy for a while gets to read the replies waiting in the socket
        before the connection is given up.
        """
        if not self.sent or now - self.sent[0] <= timeout:
            self.seen = None
            return False
        if self.seen is not None and (
            self.seen == self.replies or now - self.sent[0] > 2 * timeout
        ):
            return True
        self.seen = self.replies
        return False


class _Batch:
    """Calls of one script waiting to be sent as one (:meth:`CommandConnection.run_batched`)."""

    __slots__ = ("script", "head", "convert", "args", "items", "waiting", "size")

    def __init__(
        self, script: Script, head: tuple, convert: Callable[[Any, Any], Any] | None
    ) -> None:
        self.script = script
        self.head = head
        self.convert = convert
        self.args: list[bytes] = []
        self.items: list[Sequence[bytes]] = []
        self.waiting: list[defer.Deferred] = []
        self.size = 0

    def replied(self, replies: Any) -> None:
        """Fire each item's Deferred with its reply, converted."""
        if type(replies) is not list or len(replies) != len(self.waiting):
            self.failed(Failure(BackendError(
                f"script {self.script.name} answered {len(self.waiting)} items"
                f" with {replies!r:.100}"
            )))
            return
        convert = self.convert
        for d, item, reply in zip(self.waiting, self.items, replies):
            if convert is not None:
                try:
                    reply = convert(reply, item)
                except Exception:
                    d.errback()
                    continue
            d.callback(reply)

    def failed(self, failure: Failure) -> None:
        for d in self.waiting:
            d.errback(failure.value)


class CommandConnection(_Connection):
    """
    The one connection that carries every command, script and publish.

    Usable once connected, logged in, and every registered :class:`Script`
    is loaded (so EVALSHA never misses after a Redis restart). Every
    command's Deferred fires with the reply (bytes, int, None or nested
    lists of those) or fails with :class:`BackendUnavailable` (down, or no
    reply in time, see the module docstring: the watchdog then drops the
    connection, which reconnects) or :class:`BackendError` (Redis answered
    with an error).
    """

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        timeout: float = 2.0,
        max_delay: float = 1.0,
        scripts: Iterable[Script] = (),
        protocol: Any = DEFAULT_PROTOCOL,
    ) -> None:
        super().__init__(address, reactor, timeout, max_delay, protocol, "command")
        self.scripts = list(scripts)
        self._link: _Link | None = None
        self._loading: _Link | None = None
        self._batch: _Batch | None = None
        self._batch_call: Any = None
        self._watchdog = task.LoopingCall(self._check_stalled)
        self._watchdog.clock = reactor
        self._seconds = reactor.seconds

    def execute(self, *args: Any) -> defer.Deferred:
        """Send one command (its words as bytes, str or numbers); see the class docstring."""
        link = self._link
        if link is None:
            return defer.fail(BackendUnavailable(self._down_reason()))
        return self._send(link, args)

    def run(self, script: Script, *args: Any) -> defer.Deferred:
        """
        Run ``script`` with ``args`` as ARGV (no KEYS) by EVALSHA. Should
        Redis have lost the script anyway (``SCRIPT FLUSH``), it is sent
        once with EVAL, which loads it again.
        """
        link = self._link
        if link is None:
            return defer.fail(BackendUnavailable(self._down_reason()))
        d = self._send(link, (b"EVALSHA", script.sha, 0) + args)
        d.addErrback(self._noscript, script, args)
        return d

    def run_batched(
        self,
        script: Script,
        head: tuple,
        item: Sequence[bytes],
        convert: Callable[[Any, Any], Any] | None = None,
    ) -> defer.Deferred:
        """
        Run ``script`` for ``item`` together with the other items given for
        it in the same turn of the reactor: one EVALSHA whose ARGV is
        ``head`` (the same tuple object for every item) followed by every
        item's arguments, in the order given. The script replies with a list
        of one reply per item; the returned Deferred fires with this item's
        reply, or ``convert(reply, item)`` (items with another ``convert``
        go in another call), or fails as :meth:`run` fails, with every item
        of the call.

        The batch is sent at the end of the reactor's turn, when it is full
        (:data:`MAX_BATCH_ITEMS`, :data:`MAX_BATCH_BYTES`), or before any
        other command, so that commands reach Redis in the order they were
        issued.
        """
        batch = self._batch
        if batch is not None and (
            batch.script is not script or batch.head is not head or batch.convert != convert
        ):
            self._send_batch()
            batch = None
        if batch is None:
            if self._link is None:
                return defer.fail(BackendUnavailable(self._down_reason()))
            batch = self._batch = _Batch(script, head, convert)
            self._batch_call = self.reactor.callLater(0, self._send_batch)
        d: defer.Deferred = defer.Deferred()
        batch.waiting.append(d)
        batch.items.append(item)
        batch.args.extend(item)
        batch.size += sum(map(len, item))
        if len(batch.waiting) >= MAX_BATCH_ITEMS or batch.size >= MAX_BATCH_BYTES:
            self._send_batch()
        return d

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, None
        if self._batch_call is not None:
            if self._batch_call.active():
                self._batch_call.cancel()
            self._batch_call = None
        if batch is None:
            return
        d = self.run(batch.script, *batch.head, *batch.args)
        d.addCallbacks(batch.replied, batch.failed)

    def _noscript(self, failure: Failure, script: Script, args: tuple) -> Any:
        if failure.check(BackendError) and str(failure.value).startswith("NOSCRIPT"):
            _log.warn("Redis lost script {script}; sending it again", script=script.name)
            return self.execute(b"EVAL", script.text, 0, *args)
        return failure

    def _send(self, link: _Link, args: Sequence[Any]) -> defer.Deferred:
        if self._batch is not None:
            self._send_batch()
        try:
            d = link.proto.execute_command(*args)
        except _txredisapi().ConnectionError:
            return defer.fail(BackendUnavailable(self._down_reason()))
        link.sent.append(self._seconds())
        return d.addBoth(link.settle)

    def _down_reason(self) -> str:
        if self.refused is not None:
            return self.refused
        return f"Redis at {self.address.describe()} is not connected"

    def _connection_ready(self, proto: Any) -> None:
        link = _Link(proto)
        self._loading = link
        if not self._watchdog.running:
            self._watchdog.start(self.timeout / 4, now=False)
        # A first round trip (PING) before anything counts as up: over TLS the
        # connection is "made" before the handshake has even been checked.
        loads = [self._send(link, (b"PING",))]
        loads += [self._send(link, (b"SCRIPT", b"LOAD", s.text)) for s in self.scripts]
        defer.gatherResults(loads, consumeErrors=True).addCallbacks(
            self._scripts_loaded, self._scripts_failed, callbackArgs=(link,), errbackArgs=(link,)
        )

    def _scripts_loaded(self, shas: list[bytes], link: _Link) -> None:
        if self._loading is not link:
            return
        self._loading = None
        for script, sha in zip(self.scripts, shas[1:]):
            if sha != script.sha:
                _log.error("Redis gave script {script} the SHA1 {sha}", script=script.name, sha=sha)
        self._link = link
        self._set_up(True)

    def _scripts_failed(self, failure: Failure, link: _Link) -> None:
        if self._loading is not link:
            return
        self._loading = None
        error = failure.getErrorMessage()
        if "NOAUTH" in error and self._factory is not None:
            # Logged in without a password to a server that wants one.
            self._factory.stopTrying()
            self._refused(error)
        else:
            _log.error("loading the Lua scripts into Redis failed: {error}", error=error)
        link.reason = "loading the Lua scripts into Redis failed"
        link.proto.transport.abortConnection()

    def _connection_gone(self, proto: Any) -> None:
        if self._loading is not None and self._loading.proto is proto:
            self._loading = None
        if self._link is not None and self._link.proto is proto:
            self._link = None
            self._set_up(False)
        if self._link is None and self._loading is None and self._watchdog.running:
            self._watchdog.stop()

    def _check_stalled(self) -> None:
        now = self._seconds()
        for link in (self._link, self._loading):
            if link is not None and link.stalled(now, self.timeout):
                link.reason = (
                    f"Redis at {self.address.describe()} did not answer within {self.timeout:g} s"
                )
                _log.warn("{reason}; reconnecting", reason=link.reason)
                link.proto.transport.abortConnection()

    def stop(self) -> defer.Deferred:
        if self._watchdog.running:
            self._watchdog.stop()
        self._link = self._loading = None
        self._send_batch()
        return super().stop()


class _SubscriberMixin:
    """Pub/sub replies for :class:`SubscriberConnection`; other replies go to the base class."""

    owner: "SubscriberConnection"

    def replyReceived(self, reply: Any) -> None:
        if self._ready and type(reply) is list and reply:
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                self.owner._message(reply[1], reply[2])
                return
            if kind == b"subscribe" or kind == b"unsubscribe":
                self.owner._confirmed(self, kind, reply[1])
                return
            if kind == b"pong":
                self.owner._pong(self)
                return
        super().replyReceived(reply)  # type: ignore[misc]


@lru_cache(maxsize=None)
def _subscriber_protocol(base: Any) -> Any:
    return type("SubscriberProtocol", (_SubscriberMixin, _fast(base or _txredisapi().RedisProtocol)), {})


class SubscriberConnection(_Connection):
    """
    The connection that receives published messages.

    It keeps the set of channels it should be subscribed to and subscribes
    to all of them again after every reconnect; it counts as up only once
    every one of them is confirmed, so a listener told "up" misses nothing
    published from then on. ``on_message(channel, payload)`` is called for
    every message (bytes, exactly as published). A PING every ``timeout``
    seconds finds a connection that stopped answering: one that received
    nothing (no message, no pong) for two intervals is dropped and made
    again, within three intervals of going silent.
    """

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        on_message: Callable[[bytes, bytes], None],
        timeout: float = 2.0,
        max_delay: float = 1.0,
        protocol: Any = DEFAULT_PROTOCOL,
    ) -> None:
        sub_address = replace(address, db=0)  # channels ignore the database
        super().__init__(sub_address, reactor, timeout, max_delay, protocol, "subscriber")
        self.on_message = on_message
        #: Channels this connection should be subscribed to.
        self.channels: set[bytes] = set()
        self._proto: Any = None
        self._unconfirmed: dict[bytes, list[defer.Deferred]] = {}
        self._awaiting_pong = False
        #: Messages and pongs received (progress, for the health check).
        self._heard = 0
        self._heard_before = 0
        self._silent = 0
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = reactor

    def subscribe(self, *channels: bytes) -> defer.Deferred:
        """
        Add ``channels``; fires once Redis confirmed all of them. Fails with
        :class:`BackendUnavailable` (and adds nothing) while the connection
        is down or when the confirmation takes longer than ``timeout``.
        """
        proto = self._proto
        if proto is None or not self._up:
            return defer.fail(BackendUnavailable(f"Redis at {self.address.describe()} is not connected"))
        new = [c for c in channels if c not in self.channels]
        if not new:
            return defer.succeed(None)
        self.channels.update(new)
        return self._subscribe(proto, new)

    def unsubscribe(self, *channels: bytes) -> None:
        """Drop ``channels`` (no confirmation is awaited; late messages may still arrive)."""
        gone = [c for c in channels if c in self.channels]
        if not gone:
            return
        self.channels.difference_update(gone)
        for channel in gone:
            for d in self._unconfirmed.pop(channel, []):
                d.errback(BackendUnavailable("unsubscribed before the subscription was confirmed"))
        if self._proto is not None:
            self._proto.transport.write(self._proto._build_command(b"UNSUBSCRIBE", *gone))

    def _subscribe(self, proto: Any, channels: list[bytes]) -> defer.Deferred:
        waits = []
        for start in range(0, len(channels), SUBSCRIBE_BATCH):
            batch = channels[start:start + SUBSCRIBE_BATCH]
            for channel in batch:
                d: defer.Deferred = defer.Deferred()
                self._unconfirmed.setdefault(channel, []).append(d)
                waits.append(d)
            proto.transport.write(proto._build_command(b"SUBSCRIBE", *batch))
        done = defer.gatherResults(waits, consumeErrors=True)
        done.addErrback(lambda f: f.value.subFailure)
        done.addTimeout(self.timeout, self.reactor)
        done.addErrback(self._subscribe_failed)
        return done

    def _subscribe_failed(self, failure: Failure) -> Any:
        if failure.check(defer.TimeoutError):
            raise BackendUnavailable(
                f"Redis at {self.address.describe()} did not confirm a subscription "
                f"within {self.timeout:g} s"
            )
        return failure

    def _confirmed(self, proto: Any, kind: bytes, channel: bytes) -> None:
        if proto is not self._proto or kind != b"subscribe":
            return
        waiters = self._unconfirmed.get(channel)
        if waiters:
            d = waiters.pop(0)
            if not waiters:
                del self._unconfirmed[channel]
            d.callback(None)

    def _message(self, channel: bytes, payload: bytes) -> None:
        self._heard += 1
        try:
            self.on_message(channel, payload)
        except Exception:
            _log.failure("handling a message on Redis channel {channel!r} failed", channel=channel)

    def _make_protocol(self) -> Any:
        return _subscriber_protocol(self._protocol)

    def _ping(self) -> None:
        proto = self._proto
        if proto is None:
            return
        if self._awaiting_pong:
            # The pong may wait behind a backlog of messages: only a
            # connection that stays silent for two whole intervals is dead
            # (two, so that a reactor that was busy gets to read first).
            self._silent = self._silent + 1 if self._heard == self._heard_before else 0
            self._heard_before = self._heard
            if self._silent >= 2:
                _log.warn(
                    "Redis at {where} sent nothing for {seconds} s; reconnecting",
                    where=self.address.describe(),
                    seconds=2 * self.timeout,
                )
                proto.transport.abortConnection()
            return
        self._awaiting_pong = True
        self._silent = 0
        self._heard_before = self._heard
        proto.transport.write(b"*1\r\n$4\r\nPING\r\n")

    def _pong(self, proto: Any) -> None:
        if proto is self._proto:
            self._awaiting_pong = False
            self._heard += 1

    def _connection_ready(self, proto: Any) -> None:
        proto.owner = self
        self._proto = proto
        self._awaiting_pong = False
        if not self._pinger.running:
            self._pinger.start(self.timeout, now=False)
        channels = sorted(self.channels)

        def subscribed(_: Any) -> None:
            if self._proto is proto:
                self._set_up(True)

        def failed(failure: Failure) -> None:
            if self._proto is proto:
                _log.warn("resubscribing failed: {error}", error=failure.getErrorMessage())
                proto.transport.abortConnection()

        if channels:
            confirmed = self._subscribe(proto, channels)
        else:
            # Up only after a round trip (over TLS: after the handshake was checked).
            confirmed = proto.execute_command(b"PING")
        confirmed.addCallbacks(subscribed, failed)

    def _connection_gone(self, proto: Any) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        if self._pinger.running:
            self._pinger.stop()
        self._fail_unconfirmed("the Redis subscriber connection was lost")
        self._set_up(False)

    def stop(self) -> defer.Deferred:
        if self._pinger.running:
            self._pinger.stop()
        self._proto = None
        self._fail_unconfirmed("the Redis subscriber connection was stopped")
        return super().stop()

    def _fail_unconfirmed(self, reason: str) -> None:
        unconfirmed, self._unconfirmed = self._unconfirmed, {}
        for waiters in unconfirmed.values():
            for d in waiters:
                d.errback(BackendUnavailable(reason))
