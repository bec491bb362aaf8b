"""
Cluster mode: several server processes share one signaling space through Redis.

- :mod:`.address`: ``--redis`` URLs (:func:`parse_redis_url`).
- :mod:`.connection`: the Redis client adapter (one command connection, one
  subscriber connection; :class:`BackendUnavailable`).
- :mod:`.scripts` and ``scripts/*.lua``: every shared-state change as one
  atomic Lua script.
- :mod:`.envelope`: the binary messages on the channels.
- :mod:`.listener`: :class:`INodeListener`, what a node hears, and the
  :class:`NodeSubscriber` that decodes channel messages into its calls.
- :mod:`.backend`: :class:`RedisBackend`, one node's handle on all of it.
- :mod:`.offline`: :class:`RedisOfflineStore`, the offline store in Redis.

The design is described in ``docs/cluster.md``.
"""

from .address import RedisAddress, parse_redis_url
from .backend import Claim, Join, NotHolder, PeerInfo, PeersPage, Reaped, RedisBackend, Release
from .connection import BackendError, BackendUnavailable
from .listener import INodeListener, NodeSubscriber
from .offline import OfflineLimits, RedisOfflineStore

__all__ = [
    "BackendError", "BackendUnavailable", "Claim", "INodeListener", "Join", "NodeSubscriber",
    "NotHolder", "OfflineLimits", "PeerInfo", "PeersPage", "Reaped", "RedisAddress",
    "RedisBackend", "RedisOfflineStore", "Release", "parse_redis_url",
]
