"""
What an operator sees, in process: /metrics after real traffic, the stats
counters against /stats and /metrics, the metrics listener, and the drain.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.web.client import Agent, HTTPConnectionPool

from helpers import (
    ConnectionRefused,
    ServerTestCase,
    capture_log_lines,
    connect,
    http_get,
    parse_metrics,
    sample,
    start_service,
    total,
    wait_for,
)
from signaling import __version__


class MetricsAfterTrafficTests(ServerTestCase):
    """Counters and gauges move by exactly what a scripted exchange did."""

    @defer.inlineCallbacks
    def scrape(self) -> Any:
        response, body = yield self.http_get("/metrics")
        self.assertEqual(response.code, 200)
        return parse_metrics(body)

    @defer.inlineCallbacks
    def test_exchange(self):
        before = yield self.scrape()
        self.assertEqual(total(before, "signaling_messages_received_total"), 0)

        a = yield self.register("a")
        b = yield self.register("b")
        yield a.expect("peer-status")
        for _ in range(2):
            a.send({"type": "offer", "to": "b", "offer": {"sdp": "v=0"}})
            yield b.expect("offer")
        b.send({"type": "answer", "to": "a", "answer": {"sdp": "v=0"}})
        yield a.expect("answer")
        a.send({"type": "x-custom", "to": "b"})  # a client-invented type
        yield b.expect("x-custom")
        a.send({"type": "leave-room", "roomId": "nowhere"})
        yield a.expect_error("NOT_IN_ROOM")
        a.send({"type": "offer", "to": "away", "offer": {"sdp": "v=0"}})
        yield a.expect("peer-offline")
        m1 = yield self.join("r", "m1")
        m2 = yield self.join("r", "m2")
        m3 = yield self.join("r", "m3")
        m1.send({"type": "chat", "roomId": "r", "message": "hi"})
        yield m2.expect("chat", skip=("user-joined",))
        yield m3.expect("chat")
        yield m3.drop()
        yield m1.expect("user-left", skip=("user-joined",))

        s = yield self.scrape()
        received = "signaling_messages_received_total"
        relayed = "signaling_messages_relayed_total"
        expected = {
            (received, "register"): 2, (received, "offer"): 3, (received, "answer"): 1,
            (received, "other"): 1, (received, "leave-room"): 1, (received, "join-room"): 3,
            (received, "chat"): 1,
            (relayed, "offer"): 2, (relayed, "answer"): 1, (relayed, "other"): 1,
            (relayed, "chat"): 2,
        }
        for (name, type_), value in expected.items():
            self.assertEqual(sample(s, name, type=type_), value, (name, type_))
        self.assertEqual(total(s, received), sum(v for (n, _), v in expected.items() if n == received))
        self.assertEqual(total(s, relayed), 6)
        self.assertEqual(sample(s, "signaling_errors_total", code="NOT_IN_ROOM"), 1)
        self.assertEqual(total(s, "signaling_errors_total"), 1)
        self.assertEqual(sample(s, "signaling_offline_queued_total"), 1)
        self.assertEqual(sample(s, "signaling_connections_opened_total"), 5)
        self.assertEqual(sample(s, "signaling_connections_closed_total"), 1)
        self.assertEqual(total(s, "signaling_connections_refused_total"), 0)
        self.assertEqual(sample(s, "signaling_heartbeat_drops_total"), 0)
        self.assertEqual(sample(s, "signaling_connections"), 4)
        self.assertEqual(sample(s, "signaling_peers"), 2)
        self.assertEqual(sample(s, "signaling_rooms"), 1)
        self.assertEqual(sample(s, "signaling_offline_messages"), 1)
        self.assertEqual(sample(s, "signaling_offline_bytes"), self.store.total_bytes)
        self.assertGreater(self.store.total_bytes, 0)
        self.assertEqual(sample(s, "signaling_offline_quarantined"), 0)
        # Every non-control message is timed: 3 offers, 1 answer, 1 x-custom, 1 chat.
        self.assertEqual(sample(s, "signaling_relay_latency_seconds_count"), 6)
        self.assertEqual(sample(s, "signaling_build_info", version=__version__), 1)
        self.assertIn(("process_open_fds", ()), s)
        self.assertFalse([name for name, _ in s if name.endswith("_created")])

    @defer.inlineCallbacks
    def test_two_services_in_one_process(self):
        other = start_service(self)
        other_port = other.ports()[0].getHost().port
        yield self.register("here-1")
        yield self.register("here-2")
        yield self.register("there", url=f"ws://127.0.0.1:{other_port}/")

        _, body = yield http_get(f"http://127.0.0.1:{other_port}/metrics")
        theirs = parse_metrics(body)
        ours = yield self.scrape()
        self.assertEqual(sample(ours, "signaling_connections_opened_total"), 2)
        self.assertEqual(sample(theirs, "signaling_connections_opened_total"), 1)
        self.assertEqual(sample(ours, "signaling_peers"), 2)
        self.assertEqual(sample(theirs, "signaling_peers"), 1)


class MetricsListenerTests(ServerTestCase):
    """``metrics_listen``: /metrics moves to its own listener."""

    config = {"metrics_listen": ("tcp:0:interface=127.0.0.1",)}

    @defer.inlineCallbacks
    def test_metrics_only_on_the_metrics_listener(self):
        main, extra = (port.getHost().port for port in self.service.ports())
        self.assertEqual(main, self.port)
        yield self.register("a")
        response, _ = yield http_get(f"http://127.0.0.1:{main}/metrics")
        self.assertEqual(response.code, 404)
        response, body = yield http_get(f"http://127.0.0.1:{extra}/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(sample(parse_metrics(body), "signaling_connections"), 1)
        for port in (main, extra):
            for path in ("/health", "/ready"):
                response, body = yield http_get(f"http://127.0.0.1:{port}{path}")
                self.assertEqual(response.code, 200, (port, path))
        response, _ = yield http_get(f"http://127.0.0.1:{extra}/stats")
        self.assertEqual(response.code, 404)
        with self.assertRaises(ConnectionRefused):
            yield connect(f"ws://127.0.0.1:{extra}/")


class StatsCountersTests(ServerTestCase):
    """
    The stats line, ``/stats`` and ``/metrics`` agree exactly after a
    sequence with room broadcasts, directed room messages, offline storage
    and delivery, a refused handshake and a takeover. (The plain
    connect/relay/disconnect case is in ``test_service``.)
    """

    config = {"stats_interval": 300.0, "max_connections": 6}

    def setUp(self) -> Any:
        self.lines = capture_log_lines(self, "[Stats]")
        return super().setUp()

    @defer.inlineCallbacks
    def test_counters_agree(self):
        a = yield self.register("a")
        b = yield self.register("b")
        u1 = yield self.join("room", "u1")
        u2 = yield self.join("room", "u2")
        u3 = yield self.join("room", "u3")
        u1.send({"type": "chat", "roomId": "room", "message": "all"})  # 2 deliveries
        u1.send({"type": "chat", "roomId": "room", "to": "u2", "message": "one"})  # 1
        yield u2.expect("chat", skip=("user-joined",))
        yield u2.expect("chat")
        a.send({"type": "offer", "to": "b", "offer": {}})  # 1
        yield b.expect("offer", skip=("peer-status",))
        a.send({"type": "offer", "to": "c", "offer": {}})
        a.send({"type": "offer", "to": "c", "offer": {}})
        yield a.expect("peer-offline", skip=("peer-status",))
        yield a.expect("peer-offline")
        self.assertEqual(self.store.count, 2)

        # The sixth connection takes the offline messages: they leave the
        # store and are not counted as forwarded.
        c = yield self.connect()
        c.send({"type": "register", "peerId": "c"})
        yield c.expect("registered")
        yield c.expect("offline-message")
        yield c.expect("offline-message")
        with self.assertRaises(ConnectionRefused):  # the seventh is refused: not in the total
            yield self.connect()

        yield u3.drop()
        yield u1.expect("user-left", skip=("chat", "user-joined"))
        a2 = yield self.register("a")  # takes "a" over; the old one closes with 4001
        code, _ = yield a.wait_closed()
        self.assertEqual(code, 4001)
        a2.send({"type": "offer", "to": "b", "offer": {}})  # 1
        yield b.expect("offer", skip=("peer-status",))
        a2.send({"type": "offer", "to": "gone", "offer": {}})
        yield a2.expect("peer-offline", skip=("peer-status",))
        yield wait_for(lambda: len(self.registry.sessions) == 5, "5 sessions")

        self.clock.advance(300)
        self.assertEqual(self.lines, ["[Stats] 连接数: 5, 总连接: 7, 转发消息: 5, 离线消息: 1"])
        _, body = yield self.http_get("/stats")
        stats = json.loads(body)
        self.assertEqual(stats.pop("pid"), os.getpid())
        del stats["uptime"], stats["offlineBytes"]
        self.assertEqual(stats, {
            "connections": 5, "connectionsTotal": 7, "peers": 3, "rooms": 1,
            "forwarded": 5, "offlineQueued": 3, "offlineStored": 1, "offlineQuarantined": 0,
        })
        _, body = yield self.http_get("/metrics")
        s = parse_metrics(body)
        self.assertEqual(sample(s, "signaling_connections"), 5)
        self.assertEqual(sample(s, "signaling_connections_opened_total"), 7)
        self.assertEqual(sample(s, "signaling_connections_closed_total"), 2)
        self.assertEqual(total(s, "signaling_messages_relayed_total"), 5)
        self.assertEqual(sample(s, "signaling_offline_messages"), 1)
        self.assertEqual(sample(s, "signaling_offline_queued_total"), 3)
        self.assertEqual(
            sample(s, "signaling_connections_refused_total", reason="max_connections"), 1
        )


class DrainTests(ServerTestCase):
    """
    The graceful drain of ``stopService``.

    Every listener (the main port and the metrics listener alike) stops at
    the start of the drain, so a new HTTP connection is refused while
    draining; the honest observable of ``/ready`` answering 503 is an HTTP
    connection that was already open (a load balancer's keep-alive
    connection), which keeps being served during the drain. A client that
    never answers the close keeps the drain going, but only until the
    server's close handshake timeout (about one second) cuts it.
    """

    config = {
        "shutdown_timeout": 2.0,
        "reconnect_jitter": 0.5,
        "metrics_listen": ("tcp:0:interface=127.0.0.1",),
    }

    @defer.inlineCallbacks
    def test_drain(self):
        metrics_port = self.service.ports()[1].getHost().port
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        kept_alive = Agent(reactor, pool=pool)
        polite = yield self.register("polite")
        stubborn = yield self.register("stubborn")
        yield polite.expect("peer-status")
        stubborn.sendCloseFrame = lambda *args, **kwargs: None  # never answers the close
        response, body = yield http_get(self.http + "/ready", agent=kept_alive)
        self.assertEqual((response.code, json.loads(body)), (200, {"status": "ready"}))

        stopping = self.service.stopService()
        self.assertTrue(self.service.draining)
        response, body = yield http_get(self.http + "/ready", agent=kept_alive)
        self.assertEqual((response.code, json.loads(body)), (503, {"status": "draining"}))
        self.assertFalse(stopping.called, "the drain ended before /ready was asked")
        for port in (self.port, metrics_port):
            with self.assertRaises(ConnectionRefusedError):
                yield http_get(f"http://127.0.0.1:{port}/health")

        for client in (polite, stubborn):
            notice = yield client.expect("server-shutdown")
            self.assertEqual(set(notice), {"type", "reconnectAfterMs", "timestamp"})
            self.assertIsInstance(notice["reconnectAfterMs"], int)
            self.assertTrue(0 <= notice["reconnectAfterMs"] <= 500, notice)
        code, _ = yield polite.wait_closed()
        self.assertEqual(code, 1001)
        yield stubborn.wait_closed()
        yield stopping
        self.assertEqual(self.registry.sessions, set())

    @defer.inlineCallbacks
    def test_idle_http_connections_are_cut_at_the_end(self):
        """
        A keep-alive HTTP connection that asks nothing during the drain does
        not outlive the service: an embedding application gets every socket
        back when ``stopService`` fires.
        """
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        idle = Agent(reactor, pool=pool)
        response, _ = yield http_get(self.http + "/health", agent=idle)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.service.gate.open, 1)
        yield self.service.stopService()
        self.assertEqual(self.service.gate.open, 0)
