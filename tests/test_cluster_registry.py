"""
The ClusterRegistry's races, driven step by step: a real Redis and backend,
sessions on recording connections, and the listener calls (kicks,
deliveries) made by the test at the moment that matters, while a claim's
reply is still on its way.
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from zope.interface import implementer

from cluster_helpers import RedisTestCase, wait_until
from signaling import messages as m
from signaling.cluster import RedisBackend
from signaling.cluster.registry import ClusterRegistry
from signaling.messages import ProtocolError
from signaling.session import IConnection, Session

PREFIX = "signaling:"


@implementer(IConnection)
class Recorder:
    """A connection that records what is sent and how it is closed."""

    def __init__(self):
        self.sent = []
        self.closed = None

    def send(self, data):
        self.sent.append(json.loads(data))

    def close(self, code, reason):
        self.closed = (code, reason)

    def abort(self):
        self.closed = ("abort", None)

    def ping(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def took_output(self):
        return False


class RegistryTestCase(RedisTestCase):
    @defer.inlineCallbacks
    def registry(self):
        """A ready ClusterRegistry on its own backend (stopped at cleanup)."""
        registry = ClusterRegistry(task.Clock(), self.reactor, 8, 100)
        backend = RedisBackend(self.address(), self.reactor, registry, timeout=0.5)
        registry.attach(backend)
        backend.start()
        self.addCleanup(backend.stop, retire=False)
        yield wait_until(lambda: registry.ready, what="the registry ready")
        return registry

    def session(self, registry):
        session = Session(Recorder(), "127.0.0.1:1", 0)
        registry.add(session)
        return session

    def holder(self, identity):
        return self.redis.command("HMGET", f"{PREFIX}id:{identity}", "node", "conn")


class ClaimRaceTests(RegistryTestCase):
    @defer.inlineCallbacks
    def test_kick_while_claiming_closes_with_4001(self):
        registry = yield self.registry()
        session = self.session(registry)
        d = registry.bind(session, "x")
        # Another node took "x" right after this claim: its kick overtakes the reply.
        registry.kick("x", registry._conns[session])
        error = yield self.assertFailure(d, ProtocolError)
        self.assertEqual(error.code, m.IDENTITY_MISMATCH)
        self.assertEqual(session.conn.closed, (m.CLOSE_REPLACED, "replaced"))
        self.assertTrue(session.replaced)
        self.assertNotIn("x", registry.identities)
        # Its later close releases nothing: the id belongs to the newcomer.
        session.open = False
        self.assertEqual(registry.remove(session), [])

    @defer.inlineCallbacks
    def test_closed_while_claiming_gives_the_id_back(self):
        registry = yield self.registry()
        session = self.session(registry)
        d = registry.bind(session, "x")
        session.open = False
        self.assertEqual(registry.remove(session), [])
        error = yield self.assertFailure(d, ProtocolError)
        self.assertEqual(error.code, m.UNAVAILABLE)
        yield wait_until(lambda: self.redis.command("EXISTS", f"{PREFIX}id:x") == 0,
                         what="the release")
        self.assertEqual(registry.identities, {})

    @defer.inlineCallbacks
    def test_delivery_while_claiming_waits_for_the_reply(self):
        registry = yield self.registry()
        session = self.session(registry)
        d = registry.bind(session, "x")
        registry.deliver("x", b'{"type":"offer","from":"y"}')
        self.assertEqual(session.conn.sent, [])
        yield d
        self.assertEqual(session.conn.sent, [{"type": "offer", "from": "y"}])

    @defer.inlineCallbacks
    def test_delivery_for_an_id_that_left_is_stored_offline(self):
        registry = yield self.registry()
        registry.deliver("gone", b'{"type":"offer","to":"gone","from":"y","messageId":"m7"}')
        yield wait_until(lambda: self.redis.command("LLEN", f"{PREFIX}offline:q:gone") == 1,
                         what="the message stored")
        [entry] = self.redis.command("LRANGE", f"{PREFIX}offline:q:gone", 0, -1)
        self.assertIn(b"m7", entry)
        # A room message for a member that left is dropped, as on one server.
        registry.deliver("gone", b'{"type":"chat","roomId":"r","sender":"y"}')
        yield registry.backend.store.flush()
        self.assertEqual(self.redis.command("LLEN", f"{PREFIX}offline:q:gone"), 1)


class FanoutTests(RegistryTestCase):
    @defer.inlineCallbacks
    def test_announcement_about_a_closed_session_goes_nowhere(self):
        """A chain of callbacks that outlived its connection announces nothing."""
        registry = yield self.registry()
        other = yield self.registry()
        watcher = self.session(other)
        yield other.bind(watcher, "w")
        yield other.register(watcher, None, None)
        local = self.session(registry)
        yield registry.bind(local, "l")
        yield registry.register(local, None, None)
        late = self.session(registry)
        yield registry.bind(late, "late")
        late.open = False
        self.assertEqual(registry.send_peers(b'{"type":"peer-status","status":"online"}', late), 0)
        yield registry.backend.store.flush()
        yield task.deferLater(self.reactor, 0.1, lambda: None)
        self.assertEqual((local.conn.sent, watcher.conn.sent), ([], []))

    @defer.inlineCallbacks
    def test_departure_is_announced_by_redis_and_locally_once(self):
        registry = yield self.registry()
        other = yield self.registry()
        watcher = self.session(other)
        yield other.bind(watcher, "w")
        yield other.register(watcher, None, None)
        neighbour = self.session(registry)
        yield registry.bind(neighbour, "n")
        yield registry.register(neighbour, None, None)
        leaver = self.session(registry)
        yield registry.bind(leaver, "l")
        yield registry.register(leaver, "phone", None)
        leaver.open = False
        rooms = yield registry.remove(leaver)
        self.assertEqual(rooms, [])
        # What the hub announces in the callbacks of remove()'s result (this
        # generator resumes inside them) reaches this node's sessions only...
        registry.send_peers(b'{"type":"peer-status","peerId":"l","status":"offline"}', leaver)
        self.assertEqual(neighbour.conn.sent, [{"type": "peer-status", "peerId": "l", "status": "offline"}])
        # ...the other node heard it from the release itself, once.
        yield wait_until(lambda: watcher.conn.sent, what="the offline presence")
        yield task.deferLater(self.reactor, 0.1, lambda: None)
        [status] = watcher.conn.sent
        self.assertEqual((status["peerId"], status["status"], status["deviceType"]),
                         ("l", "offline", "phone"))
