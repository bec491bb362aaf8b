"""
Helpers of the cluster tests: a test case on the private redis-server, a
listener that records what a node hears, and bounded waits.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer

import redis_server
from signaling.cluster import INodeListener, RedisBackend, parse_redis_url
from signaling.cluster.connection import CommandConnection, SubscriberConnection
from signaling.cluster.scripts import load_scripts

#: Command timeout in the tests: short, so outage tests finish fast.
TIMEOUT = 1.0


def the_reactor():
    """The running reactor (imported late, as everywhere in the project)."""
    from twisted.internet import reactor

    return reactor


def command_calls(redis: Any) -> dict[str, int]:
    """How many times ``redis`` (a test server) ran each command since its last RESETSTAT."""
    stats = redis.command("INFO", "commandstats").decode()
    return {
        line.split(":")[0][len("cmdstat_"):]: int(line.split("calls=")[1].split(",")[0])
        for line in stats.splitlines() if line.startswith("cmdstat_")
    }


@defer.inlineCallbacks
def wait_until(condition: Callable[[], Any], timeout: float = 5.0, what: Any = "condition"):
    """
    Poll ``condition`` every 10 ms; fail the test after ``timeout`` seconds
    (``what`` names the condition; a callable is asked at the failure).
    """
    reactor = the_reactor()
    deadline = reactor.seconds() + timeout
    while True:
        value = condition()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what() if callable(what) else what}"
            )
        yield task.deferLater(reactor, 0.01, lambda: None)


def sleep(seconds: float) -> defer.Deferred:
    """A Deferred that fires after ``seconds`` on the real reactor."""
    return task.deferLater(the_reactor(), seconds, lambda: None)


@implementer(INodeListener)
class Recorder:
    """An INodeListener that records every call as a tuple in ``calls``."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def deliver(self, to, data):
        self.calls.append(("deliver", to, data))

    def kick(self, identity, conn):
        self.calls.append(("kick", identity, conn))

    def presence(self, data, origin, exclude_id):
        self.calls.append(("presence", data, origin, exclude_id))

    def room_event(self, room, data, origin, exclude_id):
        self.calls.append(("room_event", room, data, origin, exclude_id))

    def backend_lost(self):
        self.calls.append(("backend_lost",))

    def backend_restored(self):
        self.calls.append(("backend_restored",))

    def of(self, kind: str) -> list[tuple]:
        """The recorded calls of one kind, without the kind."""
        return [call[1:] for call in self.calls if call[0] == kind]

    def clear(self) -> None:
        self.calls.clear()


class RedisTestCase(unittest.TestCase):
    """Runs on the shared private redis-server, emptied before each test."""

    timeout = 60

    def setUp(self):
        self.redis = redis_server.shared()
        self.addCleanup(self.redis.resume)

    @property
    def reactor(self):
        return the_reactor()

    def address(self, **changes):
        return parse_redis_url(self.redis.url, **changes)

    @defer.inlineCallbacks
    def node(self, listener=None, node_id=None, timeout=TIMEOUT, **options):
        """A started, available RedisBackend (stopped at cleanup); ``.listener`` records."""
        listener = Recorder() if listener is None else listener
        backend = RedisBackend(
            self.address(), self.reactor, listener, node_id=node_id, timeout=timeout, **options
        )
        backend.start()
        self.addCleanup(backend.stop, retire=False)
        yield backend.when_available(5)
        return backend

    @defer.inlineCallbacks
    def commands(self, address=None, **options):
        """A started CommandConnection with every script (stopped at cleanup)."""
        options.setdefault("timeout", TIMEOUT)
        options.setdefault("scripts", load_scripts().values())
        connection = CommandConnection(address or self.address(), self.reactor, **options)
        connection.start()
        self.addCleanup(connection.stop)
        yield connection.when_up(5)
        return connection

    @defer.inlineCallbacks
    def subscriber(self, on_message, address=None, **options):
        """A started SubscriberConnection (stopped at cleanup)."""
        options.setdefault("timeout", TIMEOUT)
        connection = SubscriberConnection(address or self.address(), self.reactor, on_message, **options)
        connection.start()
        self.addCleanup(connection.stop)
        yield connection.when_up(5)
        return connection
