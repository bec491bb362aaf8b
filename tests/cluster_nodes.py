"""
Protocol tests on a cluster: several servers in this process (each on its
own port, in cluster mode) sharing the private redis-server of the test run.

:class:`ClusterServerTestCase` is a :class:`helpers.ServerTestCase` whose
clients are spread over the nodes (``spread = True``: client *k* goes to node
*k mod n*) or all put on the first node (``spread = False``), so the
black-box test classes of the protocol run unchanged on a cluster.
``self.registry`` and ``self.store`` become views of the whole cluster: the
local views of every node, and Redis itself for rooms and the offline store
(checked against each other).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

import redis_server
from helpers import ServerTestCase, server_config, settle_autobahn_timers, wait_for
from signaling.service import make_service

#: Command timeout of the nodes in tests (short, so outage tests finish fast).
REDIS_TIMEOUT = 0.5
#: Node timeout in tests (the smallest the configuration accepts).
NODE_TIMEOUT = 3.0
PREFIX = "signaling:"


def cluster_config(redis: Any, **overrides: Any) -> Any:
    """A node's configuration on ``redis`` (a redis_server.RedisServer)."""
    values: dict[str, Any] = {
        "redis_url": redis.url,
        "redis_timeout": REDIS_TIMEOUT,
        "node_timeout": NODE_TIMEOUT,
    }
    values.update(overrides)
    return server_config(**values)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogatepass")


class ClusterView:
    """
    The registry as the tests look at it, across every node: sessions,
    identities and peers from the nodes' local views; rooms from Redis,
    checked against the local views.
    """

    def __init__(self, services: list[Any], redis: Any) -> None:
        self._registries = [service.registry for service in services]
        self._redis = redis

    @property
    def sessions(self) -> set:
        return set().union(*(r.sessions for r in self._registries))

    @property
    def identities(self) -> dict:
        merged: dict = {}
        for registry in self._registries:
            merged.update(registry.identities)
        return merged

    @property
    def peers(self) -> dict:
        merged = [item for r in self._registries for item in r.peers.items()]
        return dict(sorted(merged, key=lambda item: item[1].registered_seq))

    @property
    def rooms(self) -> dict[str, list[str]]:
        """room -> member ids in join order, as Redis has them; the local views must agree."""
        in_redis = {}
        for key in self._redis.command("KEYS", PREFIX + "room:*"):
            room = _text(key)[len(PREFIX) + len("room:"):]
            in_redis[room] = [_text(m) for m in self._redis.command("ZRANGE", key, 0, -1)]
        local: dict[str, set] = {}
        for registry in self._registries:
            for room, members in registry.rooms.items():
                local.setdefault(room, set()).update(members)
        assert local == {room: set(members) for room, members in in_redis.items()}, (
            f"the nodes' rooms {local} differ from Redis's {in_redis}"
        )
        return in_redis


class StoreView:
    """The offline store's cluster-wide totals, read from Redis."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    def _total(self, field: str) -> int:
        return int(self._redis.command("HGET", PREFIX + "offline:stats", field) or 0)

    @property
    def count(self) -> int:
        return self._total("count")

    @property
    def total_bytes(self) -> int:
        return self._total("bytes")


class ClusterServerTestCase(ServerTestCase):
    """A ServerTestCase on ``nodes`` servers sharing one Redis (see the module docstring)."""

    nodes = 3
    spread = True

    def setUp(self) -> Any:
        self.clock = task.Clock()
        self.clients = []
        self.redis = self.redis_server()
        self.services = [
            self.start_node(**dict(self.config, **self.node_overrides(index)))
            for index in range(self.nodes)
        ]
        first = self.services[0]
        self.service = first
        self.hub = first.hub
        self.registry = ClusterView(self.services, self.redis)
        self.store = StoreView(self.redis)
        self.urls = [f"ws://127.0.0.1:{s.ports()[0].getHost().port}/" for s in self.services]
        self.port = first.ports()[0].getHost().port
        self.url = self.urls[0]
        self.http = f"http://127.0.0.1:{self.port}"
        self._placed = 0
        return wait_for(lambda: all(s.cluster.ready for s in self.services), "every node ready")

    def redis_server(self) -> Any:
        """The redis-server of this test (the test run's shared one, emptied)."""
        return redis_server.shared()

    def node_overrides(self, index: int) -> dict[str, Any]:
        """Configuration values of node ``index`` beside ``self.config``."""
        return {}

    def start_node(self, **overrides: Any) -> Any:
        """Start one more node of this test's cluster (stopped at cleanup)."""
        overrides.setdefault("fast_path", self.fast_path)
        service = make_service(cluster_config(self.redis, **overrides), reactor, clock=self.clock)
        service.startService()
        self.addCleanup(self._stop_node, service)
        return service

    def start_server(self, **overrides: Any) -> None:
        raise NotImplementedError("a cluster test starts its nodes in setUp")

    @defer.inlineCallbacks
    def _stop_node(self, service: Any) -> Any:
        for client in self.clients:
            yield client.drop()
        if service.running:
            yield service.stopService()
        yield settle_autobahn_timers()

    def next_url(self) -> str:
        """The node the next client goes to."""
        if not self.spread:
            return self.urls[0]
        url = self.urls[self._placed % len(self.urls)]
        self._placed += 1
        return url

    def connect(self, path: str = "/", headers: dict[str, str] | None = None,
                client_class: type = None, url: str | None = None,  # type: ignore[assignment]
                context_factory: Any = None) -> Any:
        if url is None:
            url = self.next_url().rstrip("/") + path
        kwargs: dict[str, Any] = {"headers": headers, "url": url, "context_factory": context_factory}
        if client_class is not None:
            kwargs["client_class"] = client_class
        return super().connect(**kwargs)
