"""
Redis unreachable, in the protocol's words: :class:`BackendUnavailable`
becomes ``ProtocolError(UNAVAILABLE)``, so the hub answers the client with
an ``UNAVAILABLE`` error ("try again") and never needs to know
that a network or Redis exists.

:func:`unavailable` is the one error builder for it; :class:`ProtocolStore`
puts the offline store of cluster mode behind the same mapping.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import messages as m
from ..messages import ProtocolError
from ..store import IOfflineStore
from .connection import BackendUnavailable

__all__ = ["ProtocolStore", "refuse_unavailable", "unavailable"]

_log = Logger()


def unavailable() -> ProtocolError:
    """
    The ``UNAVAILABLE`` refusal. Why Redis cannot be reached (its address
    included) is logged by the connection, not told to clients.
    """
    return ProtocolError(
        m.UNAVAILABLE,
        "the cluster backend cannot be reached or did not answer in time; "
        "try again (what did not get an answer in time may have been done)",
    )


def refuse_unavailable(failure: Failure) -> Failure:
    """An errback: :class:`BackendUnavailable` becomes :func:`unavailable`, anything else passes."""
    if failure.check(BackendUnavailable):
        raise unavailable()
    return failure


@implementer(IOfflineStore)
class ProtocolStore:
    """
    The offline store the hub uses in cluster mode: a
    :class:`~signaling.cluster.offline.RedisOfflineStore` whose request
    methods (``pending``, ``remove``, ``enqueue``) fail with ``UNAVAILABLE``
    instead of :class:`BackendUnavailable`, and whose ``expire`` sweep skips
    a round while Redis is away instead of failing. ``count`` and
    ``total_bytes`` are the cluster's (last seen).
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    @property
    def count(self) -> int:
        return self.store.count

    @property
    def total_bytes(self) -> int:
        return self.store.total_bytes

    #: Redis keeps no unreadable rows to set aside (entries are checked as
    #: they are stored).
    quarantined = 0

    def enqueue(self, recipient: str, message_id: str, message: dict[str, Any], now: float,
                sender: str | None = None) -> defer.Deferred:
        return self.store.enqueue(recipient, message_id, message, now, sender).addErrback(
            refuse_unavailable
        )

    def pending(self, recipient: str, now: float) -> defer.Deferred:
        return self.store.pending(recipient, now).addErrback(refuse_unavailable)

    def remove(self, recipient: str, message_ids: Iterable[str]) -> defer.Deferred:
        return self.store.remove(recipient, message_ids).addErrback(refuse_unavailable)

    def expire(self, now: float) -> defer.Deferred:
        def skipped(failure: Failure) -> int:
            if failure.check(BackendUnavailable):
                _log.info("offline expiry skipped: {error}", error=failure.getErrorMessage())
            else:
                _log.failure("offline expiry failed", failure)
            return 0

        return self.store.expire(now).addErrback(skipped)

    def flush(self) -> defer.Deferred:
        return self.store.flush()

    def close(self) -> defer.Deferred:
        return self.store.close()
