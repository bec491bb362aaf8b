"""
:class:`ClusterNode`: what ``--redis`` adds to a server process. It builds
the node's :class:`~signaling.cluster.backend.RedisBackend`, the
:class:`~signaling.cluster.registry.ClusterRegistry` the hub uses instead of
the in-process one, and the offline store in Redis (the ``--db`` SQLite file
is not used in cluster mode); :func:`signaling.service.make_service` wires
them in.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from ..config import Config
from ..registry import JOIN_SUCCESS_ENVELOPE
from ..store import StoreLimits
from .address import RedisAddress, parse_redis_url
from .backend import RedisBackend
from .offline import OfflineLimits
from .registry import ClusterRegistry
from .unavailable import ProtocolStore

__all__ = ["ClusterNode", "redis_address"]

_log = Logger(namespace="signaling.cluster")


def redis_address(config: Config) -> RedisAddress:
    """
    Where Redis is, from ``--redis`` and ``--redis-password-file``.

    :raises ValueError: an unusable URL or password file.
    """
    if config.redis_url is None:
        raise ValueError("cluster mode needs --redis")
    return parse_redis_url(config.redis_url, config.redis_password_file)


class ClusterNode:
    """
    One server process's membership of the cluster.

    :ivar registry: the hub's registry (also the backend's listener).
    :ivar store: the hub's offline store (Redis, shared by every node).
    :ivar backend: the Redis side of it all.
    """

    def __init__(self, config: Config, reactor: Any, clock: Any) -> None:
        self.address = redis_address(config)
        self.registry = ClusterRegistry(
            clock, reactor, config.max_rooms_per_connection, config.max_room_members,
            config.max_outgoing_size - JOIN_SUCCESS_ENVELOPE,
        )
        self.backend = RedisBackend(
            self.address,
            reactor,
            self.registry,
            prefix=config.redis_prefix,
            timeout=config.redis_timeout,
            node_timeout=config.node_timeout,
            limits=OfflineLimits.from_limits(StoreLimits.from_config(config)),
            presence=config.presence == "all",
            device_type=not config.hide_device_info,
        )
        self.registry.attach(self.backend)
        self.store = ProtocolStore(self.backend.store)

    @property
    def node_id(self) -> str:
        """This node's id in Redis (random, new at every start)."""
        return self.backend.node_id

    @property
    def ready(self) -> bool:
        """True while Redis is reachable and this node's state in it is in place."""
        return self.registry.ready

    def start(self) -> None:
        """Connect to Redis (and keep reconnecting)."""
        _log.info(
            "cluster mode: node {node} on Redis at {where}; offline messages are kept in"
            " Redis (the --db file is not used)",
            node=self.node_id, where=self.address.describe(),
        )
        self.backend.start()

    def stop(self) -> defer.Deferred:
        """Release whatever this node still holds in Redis and disconnect."""
        return self.backend.stop(retire=True)

    def stats(self) -> defer.Deferred:
        """
        Fires with the cluster's totals for ``/stats``: ``nodeId``,
        ``available``, and while available ``nodes``, ``peers``,
        ``offlineStored`` and ``offlineBytes`` (never fails).
        """
        base: dict[str, Any] = {"nodeId": self.node_id, "available": self.ready}
        if not self.ready:
            return defer.succeed(base)

        def failed(failure: Any) -> dict[str, Any]:
            _log.info("cluster totals unavailable: {error}", error=failure.getErrorMessage())
            return dict(base, available=False)

        return self.backend.cluster_stats().addCallbacks(lambda totals: dict(base, **totals), failed)
