"""
The offline store: messages held for peers that are not connected.

``IOfflineStore`` is what the hub talks to. ``MemoryStore`` keeps everything
in process memory (``--db :memory:``); the durable SQLite implementation lives
in :mod:`signaling.sqlite_store` and keeps the same in-memory index, so reads
never wait on the disk.

Limits are checked before anything is stored: a message over a limit is
refused with :class:`QueueFull` and nothing is kept (PROTOCOL section 5).
Besides the caps per recipient and in total, each sender id may hold only
its share of the bytes (``StoreLimits.max_bytes_per_sender``), so one
sender can never take the store from the others.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from .config import Config, default_offline_sender_quota
from .messages import encode

__all__ = ["IOfflineStore", "MemoryStore", "QueueFull", "StoreLimits", "StoredMessage"]


@dataclass(frozen=True)
class StoreLimits:
    """The limits of the offline store (their defaults are :class:`Config`'s)."""

    max_per_peer: int = Config.offline_max
    ttl: float = Config.offline_ttl
    max_bytes: int = Config.offline_max_bytes
    max_peers: int = Config.offline_max_peers
    #: Bytes the messages of one sender id may take at once.
    max_bytes_per_sender: int = default_offline_sender_quota(Config.offline_max_bytes)

    @classmethod
    def from_config(cls, config: Config) -> "StoreLimits":
        """The store limits ``config`` sets."""
        return cls(
            max_per_peer=config.offline_max,
            ttl=config.offline_ttl,
            max_bytes=config.offline_max_bytes,
            max_peers=config.offline_max_peers,
            max_bytes_per_sender=config.offline_sender_quota,
        )


class StoredMessage(NamedTuple):
    """
    One queued message, exactly as its recipient will receive it, kept
    encoded: one small object per message instead of a tree of dicts, which
    is less memory and less for every full garbage collection to walk.
    """

    recipient: str
    message_id: str
    body: bytes
    stored_at: float
    #: The id that sent it (what the per-sender quota counts), if known.
    sender: str | None = None

    @property
    def size(self) -> int:
        """Encoded size in bytes (what the byte limit counts)."""
        return len(self.body)

    @property
    def message(self) -> dict[str, Any]:
        """The message as a dict (decoded on each use)."""
        return json.loads(self.body)


class QueueFull(Exception):
    """A message was refused because storing it would pass a limit."""


class IOfflineStore(Interface):
    """Messages held for disconnected peers, oldest first per recipient."""

    count = Attribute("Number of messages stored now.")
    total_bytes = Attribute("Encoded size of every message stored now.")
    quarantined = Attribute(
        "Stored entries set aside because they could not be read (0 for a"
        " store that never reads any back)."
    )

    def enqueue(recipient, message_id, message, now, sender=None):
        """
        Store ``message`` (a dict, or the bytes it is encoded as) for
        ``recipient`` under ``message_id``;
        ``sender`` is the id that sent it, when known, and the bytes each
        sender has stored are capped (``StoreLimits.max_bytes_per_sender``).

        Returns a Deferred that fires with the :class:`StoredMessage` once the
        entry is durable, or fails with :class:`QueueFull` when a limit would be
        passed (then nothing is stored). The entry is visible to
        :meth:`pending` at once.
        """

    def pending(recipient, now):
        """
        The unexpired messages for ``recipient``, oldest first: a list, or a
        Deferred of one from a store that is not in this process.
        """

    def remove(recipient, message_ids):
        """
        Forget the given messages of ``recipient`` (delivered or
        acknowledged); a store not in this process returns a Deferred.
        """

    def expire(now):
        """Drop every message older than the age limit; return how many (or a Deferred of it)."""

    def flush():
        """A Deferred that fires once everything stored so far is durable."""

    def close():
        """Flush and release resources; returns a Deferred."""


class MemoryQueues:
    """
    The in-memory index shared by every store: per-recipient queues with the
    limits of :class:`StoreLimits` enforced on insertion.
    """

    def __init__(self, limits: StoreLimits) -> None:
        self.limits = limits
        self._queues: OrderedDict[str, deque[StoredMessage]] = OrderedDict()
        #: sender id -> bytes of its stored entries (senders with none are absent)
        self._sender_bytes: dict[str, int] = {}
        self.count = 0
        self.total_bytes = 0

    def make_entry(
        self, recipient: str, message_id: str, message: dict[str, Any], now: float,
        sender: str | None = None,
    ) -> StoredMessage:
        """Build an entry for ``message`` from ``sender`` or raise :class:`QueueFull`."""
        body = message if type(message) is bytes else encode(message)
        size = len(body)
        queue = self._queues.get(recipient)
        limits = self.limits
        if queue is not None and len(queue) >= limits.max_per_peer:
            raise QueueFull(
                f"offline queue for '{recipient}' is full "
                f"({limits.max_per_peer} messages)"
            )
        if queue is None and len(self._queues) >= limits.max_peers:
            raise QueueFull("too many peers have offline queues")
        if sender is not None and self.sender_bytes(sender) + size > limits.max_bytes_per_sender:
            raise QueueFull(
                f"offline messages from '{sender}' may take at most "
                f"{limits.max_bytes_per_sender} bytes of the store at once; "
                "wait until some are delivered or expire"
            )
        if self.total_bytes + size > limits.max_bytes:
            raise QueueFull("offline store is full")
        return StoredMessage(recipient, message_id, body, now, sender)

    def sender_bytes(self, sender: str) -> int:
        """Bytes of the entries ``sender`` has stored now."""
        return self._sender_bytes.get(sender, 0)

    def add(self, entry: StoredMessage) -> None:
        """Append an entry built by :meth:`make_entry` (or loaded from disk)."""
        queue = self._queues.get(entry.recipient)
        if queue is None:
            queue = self._queues[entry.recipient] = deque()
        queue.append(entry)
        self.count += 1
        self.total_bytes += entry.size
        if entry.sender is not None:
            self._sender_bytes[entry.sender] = self.sender_bytes(entry.sender) + entry.size

    def pending(self, recipient: str, now: float) -> list[StoredMessage]:
        """Unexpired entries of ``recipient``, oldest first."""
        queue = self._queues.get(recipient)
        if not queue:
            return []
        oldest = now - self.limits.ttl
        return [entry for entry in queue if entry.stored_at > oldest]

    def remove(self, recipient: str, message_ids: Iterable[str]) -> list[StoredMessage]:
        """Remove the named entries of ``recipient``; return the removed ones."""
        queue = self._queues.get(recipient)
        if not queue:
            return []
        wanted = set(message_ids)
        kept: deque[StoredMessage] = deque()
        removed = []
        for entry in queue:
            (removed if entry.message_id in wanted else kept).append(entry)
        self._replace(recipient, kept, removed)
        return removed

    def expire(self, now: float) -> list[StoredMessage]:
        """Remove entries older than the age limit; return them."""
        oldest = now - self.limits.ttl
        expired: list[StoredMessage] = []
        for recipient in list(self._queues):
            queue = self._queues[recipient]
            gone = []
            while queue and queue[0].stored_at <= oldest:
                gone.append(queue.popleft())
            if gone:
                self._replace(recipient, queue, gone)
                expired.extend(gone)
        return expired

    def _replace(
        self, recipient: str, kept: deque[StoredMessage], removed: list[StoredMessage]
    ) -> None:
        if kept:
            self._queues[recipient] = kept
        else:
            self._queues.pop(recipient, None)
        self.count -= len(removed)
        self.total_bytes -= sum(entry.size for entry in removed)
        for entry in removed:
            if entry.sender is not None:
                left = self._sender_bytes[entry.sender] - entry.size
                if left:
                    self._sender_bytes[entry.sender] = left
                else:
                    del self._sender_bytes[entry.sender]


@implementer(IOfflineStore)
class MemoryStore:
    """An offline store that lives in process memory only (lost on restart)."""

    #: Nothing is ever read back, so nothing is ever set aside.
    quarantined = 0

    def __init__(self, limits: StoreLimits = StoreLimits()) -> None:
        self._queues = MemoryQueues(limits)

    @property
    def count(self) -> int:
        return self._queues.count

    @property
    def total_bytes(self) -> int:
        return self._queues.total_bytes

    def enqueue(self, recipient, message_id, message, now, sender=None):
        try:
            entry = self._queues.make_entry(recipient, message_id, message, now, sender)
        except QueueFull:
            return defer.fail()
        self._queues.add(entry)
        return defer.succeed(entry)

    def pending(self, recipient, now):
        return self._queues.pending(recipient, now)

    def remove(self, recipient, message_ids):
        self._queues.remove(recipient, message_ids)

    def expire(self, now):
        return len(self._queues.expire(now))

    def flush(self):
        return defer.succeed(None)

    def close(self):
        return defer.succeed(None)
