"""
Unit tests of the hub: every message type through
:meth:`~signaling.hub.Hub.receive_payload`, with in-memory connections and a
fake clock, no sockets. The same behaviour over real WebSocket connections
is covered by the other test modules.
"""

import json

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer

from signaling.auth import TokenVerifier
from signaling.config import Config
from signaling.hub import Hub
from signaling.registry import LocalRegistry
from signaling.session import IConnection
from signaling.store import MemoryStore, StoreLimits

SECRET = "s" * 32


@implementer(IConnection)
class RecordingConnection:
    """An in-memory connection that records what the hub does to it."""

    def __init__(self):
        self.sent = []
        self.closed = None
        self.aborted = False
        self.pings = 0
        self.reading = True
        #: messages the send buffer takes before it is full (None: no limit)
        self.capacity = self.room = None
        self.drained = []

    def send(self, data):
        self.sent.append(json.loads(data))
        if self.room is not None:
            self.room -= 1

    def close(self, code, reason):
        self.closed = (code, reason)

    def abort(self):
        self.aborted = True

    def ping(self):
        self.pings += 1

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def writable(self):
        return self.room is None or self.room > 0

    def took_output(self):
        return False

    def when_drained(self, callback):
        if self.room is None:
            callback()
        else:
            self.drained.append(callback)

    def drain(self):
        """The client read everything: the buffer has room again."""
        if self.room is not None:
            self.room = self.capacity
        callbacks, self.drained = self.drained, []
        for callback in callbacks:
            callback()

    def types(self):
        return [m["type"] for m in self.sent]

    def last(self):
        return self.sent[-1]


class HubTestCase(unittest.SynchronousTestCase):
    """A hub on a fake clock with an in-memory store."""

    config = {}

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.config_ = Config(**{"db": ":memory:", "rate_limit": 0, **self.config})
        self.store = MemoryStore(StoreLimits.from_config(self.config_))
        self.registry = LocalRegistry(
            self.store, self.config_.max_rooms_per_connection, self.config_.max_room_members
        )
        verifier = TokenVerifier.from_secret(SECRET) if self.config_.auth_secret else None
        self.hub = Hub(self.config_, self.clock, self.store, verifier=verifier,
                       registry=self.registry)

    def connect(self):
        conn = RecordingConnection()
        return conn, self.hub.connect(conn, "127.0.0.1:1")

    def tearDown(self):
        for session in list(self.registry.sessions):
            session.conn.drain()

    def send(self, session, message):
        self.hub.receive_payload(session, json.dumps(message))

    def peer(self, peer_id, **fields):
        conn, session = self.connect()
        self.send(session, {"type": "register", "peerId": peer_id, **fields})
        self.assertEqual(conn.sent[0]["type"], "registered")
        conn.sent.clear()
        return conn, session

    def member(self, room_id, user_id, session=None):
        conn = None
        if session is None:
            conn, session = self.connect()
        self.send(session, {"type": "join-room", "roomId": room_id, "sender": user_id})
        return conn, session

    def assert_error(self, conn, code, request_type=None):
        message = conn.last()
        self.assertEqual((message["type"], message["code"]), ("error", code), message)
        if request_type is not None:
            self.assertEqual(message["requestType"], request_type)
        return message


class RegisterTests(HubTestCase):
    def test_registered_then_presence(self):
        watcher, _ = self.peer("w")
        conn, session = self.connect()
        self.send(session, {"type": "register", "peerId": "p", "deviceType": "web",
                            "deviceInfo": {"os": "x"}})
        self.assertEqual(conn.sent, [{"type": "registered", "peerId": "p", "serverTime": 1000000}])
        self.assertEqual(watcher.sent, [{
            "type": "peer-status", "peerId": "p", "status": "online", "deviceType": "web",
            "deviceInfo": {"os": "x"}, "timestamp": 1000000,
        }])

    def test_device_fields_never_given(self):
        watcher, _ = self.peer("w")
        self.peer("p")
        self.assertEqual(watcher.last(), {"type": "peer-status", "peerId": "p",
                                          "status": "online", "timestamp": 1000000})
        conn, session = self.connect()
        self.send(session, {"type": "get-peers"})
        [p] = [peer for peer in conn.last()["peers"] if peer["peerId"] == "p"]
        self.assertEqual((p["deviceType"], p["deviceInfo"]), ("unknown", {}))

    def test_again_is_idempotent(self):
        watcher, _ = self.peer("w")
        conn, session = self.peer("p")
        watcher.sent.clear()
        self.send(session, {"type": "register", "peerId": "p"})
        self.assertEqual(conn.types(), ["registered"])
        self.assertEqual(watcher.sent, [])

    def test_other_id_is_a_mismatch(self):
        conn, session = self.peer("p")
        self.send(session, {"type": "register", "peerId": "q"})
        self.assert_error(conn, "IDENTITY_MISMATCH", "register")

    def test_bad_fields(self):
        conn, session = self.connect()
        for message, text in (
            ({"type": "register"}, "'peerId'"),
            ({"type": "register", "peerId": "p", "deviceType": 3}, "'deviceType'"),
            ({"type": "register", "peerId": "p", "deviceInfo": []}, "'deviceInfo'"),
            ({"type": "register", "peerId": "p", "deviceInfo": {"x": "y" * 5000}}, "'deviceInfo'"),
        ):
            self.send(session, message)
            self.assertIn(text, self.assert_error(conn, "INVALID_FIELD")["error"])
        self.assertFalse(session.registered)

    def test_takeover_moves_registration_and_rooms(self):
        watcher, _ = self.peer("w")
        old_conn, old = self.peer("p", deviceType="mobile")
        self.member("r", "p", old)
        watcher.sent.clear()
        new_conn, new = self.connect()
        self.send(new, {"type": "join-room", "roomId": "r2", "sender": "p"})
        self.assertEqual(old_conn.closed, (4001, "replaced"))
        self.assertIs(self.registry.peers["p"], new)
        self.assertIs(self.registry.rooms["r"]["p"], new)
        self.assertEqual(new.rooms, {"r", "r2"})
        self.assertEqual(new.device_type, "mobile")
        self.hub.disconnect(old)
        self.assertIs(self.registry.identities["p"], new)
        self.assertEqual(watcher.sent, [])


class GetPeersTests(HubTestCase):
    def test_everyone_but_the_requester_in_order(self):
        for name in ("a", "b", "c"):
            self.peer(name, deviceType=name)
        conn, session = self.peer("me")
        self.send(session, {"type": "get-peers"})
        reply = conn.last()
        self.assertEqual([p["peerId"] for p in reply["peers"]], ["a", "b", "c"])
        self.assertEqual((reply["count"], reply["total"]), (3, 3))
        self.assertNotIn("nextCursor", reply)

    def test_pages(self):
        for name in ("a", "b", "c"):
            self.peer(name)
        conn, session = self.connect()
        self.send(session, {"type": "get-peers", "limit": 2})
        first = conn.last()
        self.assertEqual([p["peerId"] for p in first["peers"]], ["a", "b"])
        self.send(session, {"type": "get-peers", "limit": 2, "cursor": first["nextCursor"]})
        second = conn.last()
        self.assertEqual([p["peerId"] for p in second["peers"]], ["c"])
        self.assertNotIn("nextCursor", second)

    def test_bad_limit_and_cursor(self):
        conn, session = self.connect()
        for message in ({"type": "get-peers", "limit": 0}, {"type": "get-peers", "limit": True},
                        {"type": "get-peers", "cursor": "x"}, {"type": "get-peers", "cursor": 5}):
            self.send(session, message)
            self.assert_error(conn, "INVALID_FIELD", "get-peers")


class PingAndUnknownTests(HubTestCase):
    def test_ping(self):
        conn, session = self.connect()
        self.send(session, {"type": "ping"})
        self.assertEqual(conn.sent, [{"type": "pong", "timestamp": 1000000}])

    def test_unknown_type_without_target(self):
        conn, session = self.connect()
        self.send(session, {"type": "mystery"})
        self.assert_error(conn, "UNKNOWN_MESSAGE_TYPE", "mystery")
        self.assertEqual(self.hub.stats()["forwarded"], 0)

    def test_invalid_payloads(self):
        conn, session = self.connect()
        for payload in (b"\xff", "[]", "{}", '{"type":1}', "nope"):
            self.hub.receive_payload(session, payload)
            self.assert_error(conn, "INVALID_MESSAGE")
        self.assertTrue(session.open)


class DirectedTests(HubTestCase):
    config = {"offline_max": 1}

    def test_relay_sets_from(self):
        a, alice = self.peer("alice")
        b, _ = self.peer("bob")
        self.send(alice, {"type": "offer", "to": "bob", "from": "mallory", "sdp": "x"})
        self.assertEqual(b.sent, [{"type": "offer", "to": "bob", "from": "alice",
                                   "sender": "alice", "sdp": "x"}])
        self.send(alice, {"type": "message", "to": "bob", "payload": 1})
        self.assertEqual(b.last()["timestamp"], 1000000)
        self.assertEqual(self.hub.stats()["forwarded"], 2)

    def test_needs_registration(self):
        conn, session = self.connect()
        self.send(session, {"type": "offer", "to": "bob"})
        self.assert_error(conn, "REGISTRATION_REQUIRED", "offer")

    def test_offline_then_queue_full(self):
        a, alice = self.peer("alice")
        self.send(alice, {"type": "message", "to": "zoe", "messageId": "m1", "payload": 1})
        self.assertEqual(a.last(), {"type": "peer-offline", "peerId": "zoe", "messageId": "m1",
                                    "queued": True})
        self.send(alice, {"type": "message", "to": "zoe", "messageId": "m2", "payload": 2})
        error = self.assert_error(a, "QUEUE_FULL", "message")
        self.assertEqual((error["peerId"], error["messageId"]), ("zoe", "m2"))
        z = RecordingConnection()
        z.capacity = z.room = 5
        zoe = self.hub.connect(z, "127.0.0.1:2")
        self.send(zoe, {"type": "register", "peerId": "zoe"})
        self.assertEqual(z.types(), ["registered", "offline-message"])
        self.assertEqual(z.last()["originalMessage"]["from"], "alice")
        self.assertEqual(self.store.count, 1, "kept until the bytes left the buffer")
        z.drain()
        self.assertEqual(self.store.count, 0)


class BacklogTests(HubTestCase):
    """Offline messages are delivered as fast as the recipient reads them."""

    config = {"offline_max": 10}

    def backlog(self, n):
        a, alice = self.peer("alice")
        for i in range(n):
            self.send(alice, {"type": "message", "to": "zoe", "messageId": f"m{i}", "payload": i})
        self.assertEqual(self.store.count, n)

    def zoe(self, capacity, **fields):
        conn = RecordingConnection()
        conn.capacity = conn.room = capacity
        session = self.hub.connect(conn, "127.0.0.1:2")
        self.send(session, {"type": "register", "peerId": "zoe", **fields})
        return conn, session

    def offline_ids(self, conn):
        return [m["messageId"] for m in conn.sent if m["type"] == "offline-message"]

    def test_written_as_the_buffer_drains_and_removed_once_written(self):
        watcher, _ = self.peer("watcher")
        self.backlog(7)
        z, zoe = self.zoe(capacity=3)
        self.assertEqual(z.types(), ["registered", "offline-message", "offline-message"])
        self.assertEqual(self.store.count, 7)
        z.drain()
        self.assertEqual(self.store.count, 5)
        z.drain()
        self.assertEqual(self.offline_ids(z), [f"m{i}" for i in range(7)])
        self.assertEqual(self.store.count, 2)
        self.assertFalse([m for m in watcher.sent if m.get("peerId") == "zoe"])
        z.drain()
        self.assertEqual(self.store.count, 0)
        self.assertEqual(watcher.last()["status"], "online", "announced once all was written")

    def test_requests_wait_behind_the_backlog(self):
        self.backlog(4)
        z, zoe = self.zoe(capacity=2)
        self.send(zoe, {"type": "ping"})
        self.assertNotIn("pong", z.types())
        for _ in range(3):
            z.drain()
        self.assertEqual(z.types()[-1], "pong")

    def test_connection_lost_midway_keeps_the_rest(self):
        self.backlog(6)
        z, zoe = self.zoe(capacity=3)
        z.drain()
        self.assertEqual(self.store.count, 4)
        self.hub.disconnect(zoe)
        z.drain()
        self.assertEqual(self.store.count, 4)
        again, _ = self.zoe(capacity=None)
        self.assertEqual(self.offline_ids(again), ["m2", "m3", "m4", "m5"])

    def test_ack_mode_keeps_everything_until_acknowledged(self):
        self.backlog(3)
        z, zoe = self.zoe(capacity=2, ack=True)
        z.drain()
        z.drain()
        self.assertEqual(self.offline_ids(z), ["m0", "m1", "m2"])
        self.assertEqual(self.store.count, 3)
        self.send(zoe, {"type": "ack", "messageIds": ["m0", "m1", "m2"]})
        self.assertEqual(self.store.count, 0)


class AckTests(HubTestCase):
    def test_ack_mode(self):
        a, alice = self.peer("alice")
        self.send(alice, {"type": "message", "to": "zoe", "messageId": "m1"})
        z, zoe = self.connect()
        self.send(zoe, {"type": "register", "peerId": "zoe", "ack": True})
        self.assertEqual(z.types(), ["registered", "offline-message"])
        self.assertEqual(self.store.count, 1)
        for bad in ({"type": "ack"}, {"type": "ack", "messageIds": [1]}):
            self.send(zoe, bad)
            self.assert_error(z, "INVALID_FIELD", "ack")
        self.send(zoe, {"type": "ack", "messageIds": ["m1"]})
        self.assertEqual(self.store.count, 0)

    def test_needs_registration(self):
        conn, session = self.connect()
        self.send(session, {"type": "ack", "messageIds": []})
        self.assert_error(conn, "REGISTRATION_REQUIRED", "ack")


class RoomTests(HubTestCase):
    config = {"max_room_members": 2, "max_rooms_per_connection": 1}

    def test_join_and_leave(self):
        a, alice = self.member("r", "alice")
        self.assertEqual(a.sent, [{"type": "join-success", "roomId": "r", "userId": "alice",
                                   "members": []}])
        b, bob = self.member("r", "bob")
        self.assertEqual(b.last()["members"], ["alice"])
        self.assertEqual(a.last(), {"type": "user-joined", "userId": "bob", "roomId": "r"})
        self.member("r", "bob", bob)
        self.assertEqual(b.last()["type"], "join-success")
        self.assertEqual(a.last()["type"], "user-joined")  # nobody told twice
        self.send(bob, {"type": "leave-room", "roomId": "r"})
        self.assertEqual(b.last(), {"type": "leave-success", "roomId": "r"})
        self.assertEqual(a.last(), {"type": "user-left", "userId": "bob", "roomId": "r"})
        self.send(alice, {"type": "leave-room", "roomId": "r"})
        self.assertEqual(self.registry.rooms, {})

    def test_limits(self):
        self.member("r", "alice")
        self.member("r", "bob")
        c, carol = self.member("r", "carol")
        self.assert_error(c, "ROOM_FULL", "join-room")
        self.member("s", "carol", carol)
        self.member("t", "carol", carol)
        self.assert_error(c, "TOO_MANY_ROOMS", "join-room")

    def test_leave_a_room_not_joined(self):
        conn, session = self.member("r", "alice")
        self.send(session, {"type": "leave-room", "roomId": "s"})
        self.assert_error(conn, "NOT_IN_ROOM", "leave-room")

    def test_relay(self):
        a, alice = self.member("r", "alice")
        b, bob = self.member("r", "bob")
        self.send(alice, {"type": "chat", "roomId": "r", "sender": "mallory", "message": "hi"})
        self.assertEqual(b.last(), {"type": "chat", "roomId": "r", "sender": "alice",
                                    "from": "alice", "message": "hi"})
        self.send(alice, {"type": "offer", "roomId": "r", "to": "bob"})
        self.assertEqual(b.last()["type"], "offer")
        for target, code in (("alice", "PEER_NOT_IN_ROOM"), ("zed", "PEER_NOT_IN_ROOM")):
            self.send(alice, {"type": "offer", "roomId": "r", "to": target})
            self.assert_error(a, code, "offer")
        self.send(alice, {"type": "chat", "roomId": "elsewhere"})
        self.assert_error(a, "NOT_IN_ROOM", "chat")
        self.assertEqual(self.hub.stats()["forwarded"], 2)

    def test_disconnect_leaves_rooms(self):
        a, alice = self.member("r", "alice")
        b, bob = self.member("r", "bob")
        self.hub.disconnect(bob)
        self.assertEqual(a.last(), {"type": "user-left", "userId": "bob", "roomId": "r"})
        self.assertEqual(list(self.registry.rooms["r"]), ["alice"])


class AuthTests(HubTestCase):
    config = {"auth_secret": SECRET}

    def token(self, sub, **claims):
        import jwt

        return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")

    def test_token_binds_the_id_and_rooms(self):
        conn, session = self.connect()
        self.send(session, {"type": "register", "peerId": "bob", "token": self.token("alice")})
        self.assert_error(conn, "FORBIDDEN", "register")
        self.send(session, {"type": "join-room", "roomId": "secret", "sender": "alice",
                            "token": self.token("alice", rooms=["lobby"])})
        self.assert_error(conn, "FORBIDDEN", "join-room")
        self.send(session, {"type": "join-room", "roomId": "lobby", "sender": "alice"})
        self.assertEqual(conn.last()["type"], "join-success")

    def test_bad_url_token_closes(self):
        conn, session = self.connect()
        self.assertFalse(self.hub.authenticate(session, "nope"))
        self.assert_error(conn, "UNAUTHORIZED")
        self.assertEqual(conn.closed[0], 1008)

    def test_only_a_token_holder_takes_over(self):
        self.connect()
        _, holder = self.connect()
        self.assertTrue(self.hub.authenticate(holder, self.token("alice")))
        self.send(holder, {"type": "register", "peerId": "alice"})
        conn, session = self.connect()
        self.send(session, {"type": "register", "peerId": "alice"})
        self.assert_error(conn, "FORBIDDEN", "register")


class RateLimitTests(HubTestCase):
    config = {"rate_limit": 1, "rate_burst": 1}

    def test_rate_limited_then_closed(self):
        conn, session = self.connect()
        self.send(session, {"type": "ping"})
        self.send(session, {"type": "ping"})
        error = self.assert_error(conn, "RATE_LIMITED")
        self.assertGreater(error["retryAfterMs"], 0)
        for _ in range(100):
            if conn.closed:
                break
            self.send(session, {"type": "ping"})
        self.assertEqual(conn.closed[0], 1008)


class LifecycleTests(HubTestCase):
    def test_heartbeat_pings_then_drops_silent(self):
        conn, session = self.connect()
        self.assertEqual(self.hub.heartbeat(), 0)
        self.assertEqual(conn.pings, 1)
        self.assertEqual(self.hub.heartbeat(), 1)
        self.assertTrue(conn.aborted)
        self.assertEqual(self.registry.sessions, set())

    def test_pong_or_message_keeps_alive(self):
        conn, session = self.connect()
        for keep_alive in (self.hub.pong, lambda s: self.send(s, {"type": "ping"})):
            self.hub.heartbeat()
            keep_alive(session)
        self.assertEqual(self.hub.heartbeat(), 0)
        self.assertFalse(conn.aborted)

    def test_disconnect_is_idempotent(self):
        watcher, _ = self.peer("w")
        conn, session = self.peer("p")
        self.hub.disconnect(session)
        self.hub.disconnect(session)
        offline = [m for m in watcher.sent if m.get("status") == "offline"]
        self.assertEqual(len(offline), 1)
        self.assertEqual(self.hub.stats()["connections"], 1)

    def test_shut_down(self):
        conns = [self.connect()[0] for _ in range(3)]
        self.hub.shut_down(1001, "bye", 2.0)
        for conn in conns:
            self.assertEqual(conn.last()["type"], "server-shutdown")
            self.assertLessEqual(conn.last()["reconnectAfterMs"], 2000)
            self.assertEqual(conn.closed, (1001, "bye"))
        self.assertEqual(self.hub.open_sessions(), 3)
        self.hub.abort_all()
        self.assertEqual(self.hub.open_sessions(), 0)
        self.assertTrue(all(conn.aborted for conn in conns))

    def test_stats_line_text(self):
        from twisted.logger import formatEvent, globalLogPublisher

        lines = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.connect()
        self.hub.log_stats()
        self.assertIn("[Stats] 连接数: 1, 总连接: 1, 转发消息: 0, 离线消息: 0", lines)

    def test_a_bug_costs_one_request(self):
        conn, session = self.peer("p")
        self.patch(self.registry, "peers_page", lambda *args: 1 // 0)
        self.send(session, {"type": "get-peers", "messageId": "q"})
        error = self.assert_error(conn, "INTERNAL_ERROR", "get-peers")
        self.assertEqual(error["messageId"], "q")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.send(session, {"type": "ping"})
        self.assertEqual(conn.last()["type"], "pong")


class SlowRegistry(LocalRegistry):
    """A registry whose identity binding answers later, as a clustered one does."""

    def __init__(self, *args):
        super().__init__(*args)
        self.pending = []

    def bind(self, session, identity):
        d = defer.Deferred()
        self.pending.append(d)
        return d.addCallback(lambda _: LocalRegistry.bind(self, session, identity))


class AsynchronousRegistryTests(HubTestCase):
    config = {"max_waiting_messages": 3}

    def setUp(self):
        super().setUp()
        self.registry = SlowRegistry(self.store, 32, 1000)
        self.hub = Hub(self.config_, self.clock, self.store, registry=self.registry)

    def test_later_requests_wait_in_order(self):
        conn, session = self.connect()
        self.send(session, {"type": "register", "peerId": "p"})
        self.send(session, {"type": "ping"})
        self.send(session, {"type": "get-peers"})
        self.assertEqual(conn.sent, [])
        self.send(session, {"type": "ping"})
        self.assertFalse(conn.reading)
        self.registry.pending.pop().callback(None)
        self.assertEqual(conn.types(), ["registered", "pong", "peers-list", "pong"])
        self.assertTrue(conn.reading)

    def test_a_failed_request_is_answered_and_the_rest_go_on(self):
        conn, session = self.connect()
        self.send(session, {"type": "register", "peerId": "p", "messageId": "r1"})
        self.send(session, {"type": "ping"})
        self.registry.pending.pop().errback(RuntimeError("backend gone"))
        self.assertEqual(conn.types(), ["error", "pong"])
        self.assertEqual(conn.sent[0]["code"], "INTERNAL_ERROR")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_disconnect_while_waiting(self):
        conn, session = self.connect()
        self.send(session, {"type": "register", "peerId": "p"})
        self.send(session, {"type": "ping"})
        self.hub.disconnect(session)
        self.registry.pending.pop().callback(None)
        self.assertEqual(conn.types(), [])
        self.assertEqual((self.registry.identities, self.registry.peers), ({}, {}))
        self.assertEqual(self.registry.sessions, set())
