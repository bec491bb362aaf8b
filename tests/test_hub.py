"""
Unit tests of the hub's pure logic: in-memory connections and a fake clock,
no sockets. The end-to-end behaviour is covered over real WebSocket
connections in the other test modules.
"""

import json

from twisted.internet import task
from twisted.trial import unittest
from zope.interface import implementer

from signaling.config import Config
from signaling.hub import Hub, IConnection
from signaling.store import MemoryStore, StoreLimits


@implementer(IConnection)
class RecordingConnection:
    """An in-memory connection that records what the hub does to it."""

    def __init__(self):
        self.sent = []
        self.closed = None
        self.aborted = False
        self.pings = 0

    def send(self, data):
        self.sent.append(json.loads(data))

    def close(self, code, reason):
        self.closed = (code, reason)

    def abort(self):
        self.aborted = True

    def ping(self):
        self.pings += 1

    def types(self):
        return [m["type"] for m in self.sent]


class HubTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        config = Config(db=":memory:", rate_limit=0)
        self.hub = Hub(config, self.clock, MemoryStore(StoreLimits()))

    def connect(self):
        conn = RecordingConnection()
        return conn, self.hub.connect(conn, "127.0.0.1:1")

    def test_heartbeat_pings_then_drops_silent(self):
        conn, session = self.connect()
        self.assertEqual(self.hub.heartbeat(), 0)
        self.assertEqual(conn.pings, 1)
        self.assertEqual(self.hub.heartbeat(), 1)
        self.assertTrue(conn.aborted)
        self.assertEqual(self.hub.sessions, set())

    def test_pong_or_message_keeps_alive(self):
        conn, session = self.connect()
        for keep_alive in (self.hub.pong, lambda s: self.hub.receive(s, {"type": "ping"})):
            self.hub.heartbeat()
            keep_alive(session)
        self.assertEqual(self.hub.heartbeat(), 0)
        self.assertFalse(conn.aborted)

    def test_disconnect_is_idempotent(self):
        watcher, w = self.connect()
        self.hub.receive(w, {"type": "register", "peerId": "w"})
        conn, session = self.connect()
        self.hub.receive(session, {"type": "register", "peerId": "p"})
        self.hub.disconnect(session)
        self.hub.disconnect(session)
        offline = [m for m in watcher.sent if m.get("status") == "offline"]
        self.assertEqual(len(offline), 1)
        self.assertEqual(self.hub.stats()["connections"], 1)

    def test_takeover_transfers_rooms_and_registration(self):
        old_conn, old = self.connect()
        self.hub.receive(old, {"type": "register", "peerId": "p", "deviceType": "mobile"})
        self.hub.receive(old, {"type": "join-room", "roomId": "r", "sender": "p"})
        new_conn, new = self.connect()
        self.hub.receive(new, {"type": "join-room", "roomId": "r2", "sender": "p"})
        self.assertEqual(old_conn.closed, (4001, "replaced"))
        self.assertIs(self.hub.peers["p"], new)
        self.assertIs(self.hub.rooms["r"]["p"], new)
        self.assertEqual(new.rooms, {"r", "r2"})
        self.assertEqual(new.device_type, "mobile")
        # The replaced session's close changes nothing.
        self.hub.disconnect(old)
        self.assertIs(self.hub.identities["p"], new)
        self.assertEqual(self.hub.stats()["connections"], 1)

    def test_unhandled_types_and_counts(self):
        conn, session = self.connect()
        self.hub.receive(session, {"type": "mystery"})
        self.assertEqual(conn.sent[-1]["code"], "UNKNOWN_MESSAGE_TYPE")
        self.assertEqual(self.hub.forwarded, 0)

    def test_stats_line_text(self):
        from twisted.logger import formatEvent, globalLogPublisher

        lines = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.connect()
        self.hub.log_stats()
        self.assertIn("[Stats] 连接数: 1, 总连接: 1, 转发消息: 0, 离线消息: 0", lines)


class RateLimitTests(unittest.SynchronousTestCase):
    def test_rate_limited_then_closed(self):
        clock = task.Clock()
        hub = Hub(Config(db=":memory:", rate_limit=1, rate_burst=1), clock, MemoryStore())
        conn = RecordingConnection()
        session = hub.connect(conn, "127.0.0.1:1")
        self.assertTrue(hub.admit(session))
        self.assertFalse(hub.admit(session))
        self.assertEqual(conn.sent[-1]["code"], "RATE_LIMITED")
        self.assertGreater(conn.sent[-1]["retryAfterMs"], 0)
        for _ in range(100):
            if conn.closed:
                break
            hub.admit(session)
        self.assertEqual(conn.closed[0], 1008)
