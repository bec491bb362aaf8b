"""
The offline store of cluster mode, in Redis (``signaling.store.IOfflineStore``).

Per recipient a LIST ``offline:q:{id}`` of entries, oldest first; each entry
is ``<len>:<message id><len>:<sender><stored at>:<body>`` where body is the
encoded message exactly as the recipient receives it (any Unicode, NUL or
length round-trips: nothing is parsed but the header). ``offline:due``
(ZSET) scores each recipient with its oldest entry for expiry,
``offline:stats`` (HASH) holds the cluster-wide ``count`` and ``bytes``, and
``offline:senders`` (HASH) the bytes each sender has stored, for the
per-sender quota. Every change is one Lua script, so the limits hold across
nodes.

A write is acknowledged by Redis before its Deferred fires (the sender is
told ``queued: true`` only then); how durable it is then depends on Redis
persistence (``appendonly yes``, see ``docs/cluster.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from ..messages import encode
from ..store import IOfflineStore, QueueFull, StoredMessage, StoreLimits
from .connection import BackendUnavailable, CommandConnection, Script
from .listener import raw, text
from .scripts import load_scripts

__all__ = ["OfflineLimits", "RedisOfflineStore", "parse_entry"]

_log = Logger()

#: Recipients handled by one EXPIRE script call (keeps each call short).
EXPIRE_BATCH = 1000


@dataclass(frozen=True)
class OfflineLimits(StoreLimits):
    """
    :class:`signaling.store.StoreLimits` plus the per-sender byte quota
    (``None``: a tenth of ``max_bytes``), so that one sender cannot fill
    the store for everybody.
    """

    max_bytes_per_sender: int | None = None

    @property
    def sender_quota(self) -> int:
        """Bytes one sender may have stored at once."""
        if self.max_bytes_per_sender is None:
            return max(1, self.max_bytes // 10)
        return self.max_bytes_per_sender

    @classmethod
    def from_limits(cls, limits: StoreLimits, max_bytes_per_sender: int | None = None) -> "OfflineLimits":
        """These limits with the quota added (``limits`` may already be :class:`OfflineLimits`)."""
        if isinstance(limits, OfflineLimits) and max_bytes_per_sender is None:
            return limits
        return cls(
            max_per_peer=limits.max_per_peer,
            ttl=limits.ttl,
            max_bytes=limits.max_bytes,
            max_peers=limits.max_peers,
            max_bytes_per_sender=max_bytes_per_sender,
        )


def parse_entry(recipient: str, entry: bytes) -> tuple[StoredMessage, str]:
    """One stored entry as (:class:`StoredMessage`, sender; "" for none)."""
    colon = entry.index(b":")
    end = colon + 1 + int(entry[:colon])
    message_id = entry[colon + 1:end]
    colon = entry.index(b":", end)
    at = colon + 1 + int(entry[end:colon])
    sender = entry[colon + 1:at]
    colon = entry.index(b":", at)
    stored_at = float(entry[at:colon])
    return StoredMessage(recipient, text(message_id), entry[colon + 1:], stored_at), text(sender)


@lru_cache(maxsize=None)
def _scripts() -> dict[str, Script]:
    return load_scripts()


@implementer(IOfflineStore)
class RedisOfflineStore:
    """
    Offline messages in Redis, shared by every node.

    ``count`` and ``total_bytes`` are the cluster-wide totals as last seen:
    updated from every script reply and refreshed every
    ``refresh_interval`` seconds once :meth:`start` ran; reading them never
    waits for Redis. The connection belongs to the caller (it must have
    been built with :func:`signaling.cluster.scripts.load_scripts`'s
    scripts); :meth:`close` leaves it open.
    """

    def __init__(
        self,
        connection: CommandConnection,
        clock: Any,
        limits: StoreLimits = OfflineLimits(),
        prefix: str = "signaling:",
        refresh_interval: float = 5.0,
    ) -> None:
        self.connection = connection
        self.limits = OfflineLimits.from_limits(limits)
        #: Messages stored in the whole cluster (last seen).
        self.count = 0
        #: Encoded bytes stored in the whole cluster (last seen).
        self.total_bytes = 0
        self._prefix = raw(prefix)
        self._stats_key = self._prefix + b"offline:stats"
        self._queue_prefix = self._prefix + b"offline:q:"
        scripts = _scripts()
        self._enqueue = scripts["enqueue"]
        self._remove = scripts["remove"]
        self._expire = scripts["expire"]
        limits_ = self.limits
        #: ARGV tail of ENQUEUE and ROUTE: the limits, as bytes, built once.
        self.limit_args = (
            b"%d" % limits_.max_per_peer,
            b"%d" % limits_.max_bytes,
            b"%d" % limits_.max_peers,
            b"%d" % limits_.sender_quota,
        )
        self._refresher = task.LoopingCall(self._refresh_quietly)
        self._refresher.clock = clock
        self._refresh_interval = refresh_interval

    # -- totals -------------------------------------------------------------

    def start(self) -> None:
        """Refresh the totals now and every ``refresh_interval`` seconds."""
        if not self._refresher.running:
            self._refresher.start(self._refresh_interval, now=True)

    def refresh(self) -> defer.Deferred:
        """Read the cluster-wide totals from Redis; fires with ``(count, total_bytes)``."""
        d = self.connection.execute(b"HMGET", self._stats_key, b"count", b"bytes")

        def read(reply: list) -> tuple[int, int]:
            self.note_totals(int(reply[0] or 0), int(reply[1] or 0))
            return self.count, self.total_bytes

        return d.addCallback(read)

    def _refresh_quietly(self) -> None:
        def failed(failure: Any) -> None:
            if not failure.check(BackendUnavailable):
                _log.failure("refreshing the offline store totals failed", failure)

        self.refresh().addErrback(failed)

    def note_totals(self, count: int, total_bytes: int) -> None:
        """Take the totals a script replied with."""
        self.count = count
        self.total_bytes = total_bytes

    def full_error(self, reason: bytes, recipient: str) -> QueueFull:
        """The :class:`QueueFull` for a script's refusal ``reason``."""
        limits = self.limits
        if reason == b"peer":
            text_ = f"offline queue for '{recipient}' is full ({limits.max_per_peer} messages)"
        elif reason == b"peers":
            text_ = "too many peers have offline queues"
        elif reason == b"sender":
            text_ = (
                f"your offline messages use your whole quota ({limits.sender_quota} bytes) "
                "until they are delivered"
            )
        else:
            text_ = "offline store is full"
        return QueueFull(text_)

    # -- IOfflineStore ------------------------------------------------------

    def enqueue(
        self,
        recipient: str,
        message_id: str,
        message: dict[str, Any],
        now: float,
        sender: str | None = None,
    ) -> defer.Deferred:
        """
        Store ``message`` for ``recipient``. Fires with the
        :class:`~signaling.store.StoredMessage` once Redis acknowledged the
        write; fails with :class:`~signaling.store.QueueFull` (nothing
        stored) when the recipient's queue, the number of recipients, the
        total bytes or ``sender``'s quota would be passed, or with
        :class:`BackendUnavailable` (then the write may or may not have
        happened).
        """
        try:
            body = message if type(message) is bytes else encode(message)
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        d = self.connection.run(
            self._enqueue,
            self._prefix,
            raw(recipient),
            raw(message_id),
            repr(float(now)).encode("ascii"),
            b"" if sender is None else raw(sender),
            body,
            *self.limit_args,
        )
        entry = StoredMessage(recipient, message_id, body, float(now))
        return d.addCallback(self.stored_reply, recipient, entry)

    def stored_reply(self, reply: list, recipient: str, result: Any) -> Any:
        """Handle an ENQUEUE or ROUTE reply about storing: ``result``, or raise :class:`QueueFull`."""
        if reply[0] == b"full":
            raise self.full_error(reply[1], recipient)
        self.note_totals(reply[1], reply[2])
        return result

    def pending(self, recipient: str, now: float) -> defer.Deferred:
        """Fires with the unexpired messages for ``recipient``, oldest first."""
        oldest = now - self.limits.ttl
        d = self.connection.execute(b"LRANGE", self._queue_prefix + raw(recipient), 0, -1)

        def entries(reply: list[bytes]) -> list[StoredMessage]:
            found = []
            for item in reply:
                entry, _ = parse_entry(recipient, item)
                if entry.stored_at > oldest:
                    found.append(entry)
            return found

        return d.addCallback(entries)

    def remove(self, recipient: str, message_ids: Iterable[str]) -> defer.Deferred:
        """Forget every entry of ``recipient`` with one of ``message_ids``; fires with how many."""
        ids = [raw(message_id) for message_id in message_ids]
        if not ids:
            return defer.succeed(0)
        d = self.connection.run(self._remove, self._prefix, raw(recipient), *ids)

        def removed(reply: list) -> int:
            self.note_totals(reply[1], reply[2])
            return reply[0]

        return d.addCallback(removed)

    @defer.inlineCallbacks
    def expire(self, now: float):
        """Drop every message stored ``ttl`` seconds or more before ``now``; fires with how many."""
        cutoff = repr(float(now) - self.limits.ttl).encode("ascii")
        total = 0
        while True:
            reply = yield self.connection.run(self._expire, self._prefix, cutoff, EXPIRE_BATCH)
            total += reply[0]
            self.note_totals(reply[1], reply[2])
            if not reply[3]:
                return total

    def flush(self) -> defer.Deferred:
        """
        Fires once every write issued so far is acknowledged or failed
        (a PING travels behind them on the one connection).
        """
        return self.connection.execute(b"PING").addBoth(lambda _: None)

    def close(self) -> defer.Deferred:
        """Stop refreshing the totals and flush; the connection stays open."""
        if self._refresher.running:
            self._refresher.stop()
        return self.flush()
