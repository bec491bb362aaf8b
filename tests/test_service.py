"""Heartbeats, the stats line, the HTTP endpoints and shutdown, in process."""

import json
import os

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from helpers import (
    Client,
    ServerTestCase,
    capture_log_lines,
    connect,
    server_config,
    start_service,
    wait_for,
)
from signaling.service import make_service


class SilentClient(Client):
    """A client whose side has gone half-open: it never answers pings."""

    answer_pings = False


class HeartbeatTests(ServerTestCase):
    config = {"heartbeat_interval": 30.0}

    @defer.inlineCallbacks
    def test_silent_connection_dropped_within_two_intervals(self):
        watcher = yield self.register("watcher")
        silent = yield self.connect(client_class=SilentClient)
        silent.send({"type": "register", "peerId": "ghost"})
        yield silent.expect("registered")
        yield watcher.expect("peer-status")
        # Taking what it is sent counts as life: let its kernel acknowledge
        # what it got so far (a delayed acknowledgement) before the first sweep.
        [ghost] = [s for s in self.registry.sessions if s.identity == "ghost"]
        yield wait_for(lambda: ghost.conn.unacknowledged() == 0, "the ghost's acknowledgements")

        self.clock.advance(30)  # first sweep: pings both
        yield self.roundtrip(watcher)  # the watcher's pong has arrived by now
        self.clock.advance(30)  # second sweep: the silent one is gone
        code, _ = yield silent.wait_closed()
        self.assertNotEqual(code, 1000)
        status = yield watcher.expect("peer-status")
        self.assertEqual((status["peerId"], status["status"]), ("ghost", "offline"))
        self.assertEqual(len(self.registry.sessions), 1)

    @defer.inlineCallbacks
    def test_any_message_counts_as_life(self):
        silent = yield self.connect(client_class=SilentClient)
        for _ in range(3):
            self.clock.advance(30)
            silent.send({"type": "ping"})
            yield silent.expect("pong")
        self.assertEqual(len(self.registry.sessions), 1)

    @defer.inlineCallbacks
    def test_pong_keeps_connection(self):
        client = yield self.connect()
        for _ in range(3):
            self.clock.advance(30)
            [session] = self.registry.sessions
            yield wait_for(lambda: session.alive, "the server to see the pong to its ping")
        self.assertEqual(len(self.registry.sessions), 1)
        self.assertFalse(client.closed.called)


class StatsLineTests(ServerTestCase):
    config = {"stats_interval": 300.0}

    def setUp(self):
        self.lines = capture_log_lines(self, "[Stats]")
        return super().setUp()

    @defer.inlineCallbacks
    def test_stats_line_counts_exactly(self):
        a = yield self.register("a")
        b = yield self.register("b")
        yield self.connect()  # never registers, still counted
        room = yield self.join("r", "m1")
        yield self.join("r", "m2")
        a.send({"type": "offer", "to": "b", "offer": {}})
        yield b.expect("offer", skip=("peer-status",))
        room.send({"type": "chat", "roomId": "r", "message": "hi"})  # one delivery
        a.send({"type": "offer", "to": "away1", "offer": {}})
        a.send({"type": "offer", "to": "away2", "offer": {}})
        yield a.expect("peer-offline", skip=("peer-status",))
        yield a.expect("peer-offline")
        yield b.drop()
        yield a.expect("peer-status")  # b offline
        yield self.roundtrip(a)
        self.clock.advance(300)
        self.assertEqual(self.lines, ["[Stats] 连接数: 4, 总连接: 5, 转发消息: 2, 离线消息: 2"])

        # Every connection closes: the current count returns to exactly zero.
        for client in list(self.clients):
            yield client.drop()
        yield wait_for(lambda: not self.registry.sessions, "every session to close")
        self.clock.advance(300)
        self.assertEqual(self.lines[-1], "[Stats] 连接数: 0, 总连接: 5, 转发消息: 2, 离线消息: 2")


class HttpTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_health(self):
        self.clock.advance(1704672000)
        yield self.register("a")
        response, body = yield self.http_get("/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        health = json.loads(body)
        self.assertEqual(health["status"], "healthy")
        self.assertEqual(health["service"], "signaling")
        self.assertEqual(health["connections"], {"current": 1, "total": 1})
        self.assertEqual(health["messages"], {"forwarded": 0, "offlineQueued": 0})
        self.assertEqual(health["timestamp"], "2024-01-08T00:00:00+00:00")
        self.assertEqual(health["uptime"], 1704672000)
        self.assertEqual(health["pid"], os.getpid())

    @defer.inlineCallbacks
    def test_stats(self):
        a = yield self.register("a")
        a.send({"type": "offer", "to": "gone", "offer": {}})
        yield a.expect("peer-offline")
        response, body = yield self.http_get("/stats")
        stats = json.loads(body)
        self.assertEqual(
            {k: stats[k] for k in ("connections", "connectionsTotal", "peers", "offlineQueued",
                                   "offlineStored")},
            {"connections": 1, "connectionsTotal": 1, "peers": 1, "offlineQueued": 1,
             "offlineStored": 1},
        )

    @defer.inlineCallbacks
    def test_preflight_and_unknown_path(self):
        response, body = yield self.http_get(
            "/health", method=b"OPTIONS",
            headers={b"Origin": [b"https://app.example"],
                     b"Access-Control-Request-Method": [b"GET"],
                     b"Access-Control-Request-Headers": [b"X-Custom"]})
        self.assertEqual(response.code, 204)
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-headers"), [b"X-Custom"])
        self.assertIn(b"GET", response.headers.getRawHeaders(b"access-control-allow-methods")[0])
        response, _ = yield self.http_get("/nothing-here")
        self.assertEqual(response.code, 404)
        response, _ = yield self.http_get("/health", method=b"POST")
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def test_websocket_on_any_path(self):
        client = yield self.connect("/some/deep/path?x=1")
        yield self.roundtrip(client)


class CorsOriginTests(ServerTestCase):
    config = {"cors_origin": "https://app.example"}

    @defer.inlineCallbacks
    def test_configured_cors_origin(self):
        response, _ = yield self.http_get("/health")
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example"])


class ShutdownTests(ServerTestCase):
    config = {"shutdown_timeout": 0.5}

    @defer.inlineCallbacks
    def test_clients_get_1001_and_stubborn_ones_are_cut(self):
        polite = yield self.register("polite")
        stubborn = yield self.register("stubborn")
        stubborn.sendCloseFrame = lambda *a, **kw: None  # never answers the close
        # Bounded: a drain that waited for the stubborn client would never end.
        yield self.service.stopService().addTimeout(5, reactor)
        code, _ = yield polite.wait_closed()
        self.assertEqual(code, 1001)
        yield stubborn.wait_closed()
        self.assertEqual(self.registry.sessions, set())


class ListenTests(unittest.TestCase):
    def test_port_in_use_is_raised(self):
        first = start_service(self)
        port = first.ports()[0].getHost().port
        second = make_service(server_config(port=port), reactor)
        self.assertRaises(CannotListenError, second.privilegedStartService)

    @defer.inlineCallbacks
    def test_listen_endpoints(self):
        service = start_service(
            self, port=None, listen=("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1")
        )
        ports = [p.getHost().port for p in service.ports()]
        self.assertEqual(len(ports), 2)
        for port in ports:
            client = yield connect(f"ws://127.0.0.1:{port}/")
            client.send({"type": "ping"})
            yield client.expect("pong")
            yield client.drop()


UPGRADE_REQUEST = (
    b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _raw_exchange(port, chunks, until):
    """Send ``chunks`` over one TCP connection (pausing between them); read until ``until``."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        received = b""
        for chunk, wait_for_bytes in chunks:
            sock.sendall(chunk)
            time.sleep(0.05)
            while wait_for_bytes and wait_for_bytes not in received:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        while until not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
        return received


class SamePortRoutingTests(ServerTestCase):
    """Connections start as WebSocket; plain HTTP is handed over to the site."""

    @defer.inlineCallbacks
    def test_upgrade_head_in_pieces(self):
        from twisted.internet.threads import deferToThread

        pieces = [UPGRADE_REQUEST[:10], UPGRADE_REQUEST[10:60], UPGRADE_REQUEST[60:]]
        received = yield deferToThread(
            _raw_exchange, self.port, [(p, None) for p in pieces], b"\r\n\r\n")
        self.assertTrue(received.startswith(b"HTTP/1.1 101"), received)

    @defer.inlineCallbacks
    def test_keep_alive_http_then_upgrade(self):
        from twisted.internet.threads import deferToThread

        received = yield deferToThread(
            _raw_exchange, self.port,
            [(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b'"healthy"'),
             (UPGRADE_REQUEST, None)],
            b"HTTP/1.1 101")
        self.assertIn(b"HTTP/1.1 200", received)
        self.assertIn(b'"status": "healthy"', received)
        self.assertIn(b"HTTP/1.1 101", received)


class BrowserLikeClientTests(ServerTestCase):
    """Browsers always offer permessage-deflate; the server declines it and talks plainly."""

    @defer.inlineCallbacks
    def test_client_offering_permessage_deflate(self):
        client = yield self.connect(client_class=DeflateOfferingClient)
        client.send({"type": "register", "peerId": "browser"})
        yield client.expect("registered")
        self.assertIsNone(client._perMessageCompress)


class DeflateOfferingClient(Client):
    """A client whose opening handshake offers permessage-deflate."""

    def _connectionMade(self):
        from autobahn.websocket.compress import PerMessageDeflateOffer

        self.perMessageCompressionOffers = [PerMessageDeflateOffer()]
        super()._connectionMade()
