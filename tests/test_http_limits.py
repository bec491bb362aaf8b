"""
What a hostile HTTP client meets, over raw sockets on 127.0.0.1, on both
paths (the fast path sniffs request heads itself, the public path starts in
the HTTP site): every connection counts against the caps from accept,
request heads and bodies have a size and a time limit (431, 413, 408, then
close), and no response names a library. The descriptor exhaustion of a
real ``python -m signaling`` under a low ``RLIMIT_NOFILE`` is at the end.
"""

from __future__ import annotations

import json
import resource

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python import usage
from twisted.trial import unittest

from certs import PKI
from helpers import (
    WAIT, ConnectionRefused, ServerTestCase, connect, parse_metrics, pause, sample, wait_for,
)
from processes import MODULE, ProcessTestCase, SystemTempMixin
from signaling.tap import Options

UPGRADE = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)


class Raw(Protocol):
    """A raw TCP client: records what the server sends and when it closes."""

    def __init__(self) -> None:
        self.received = b""
        self.sent = 0
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)

    def send(self, data: bytes) -> None:
        self.sent += len(data)
        self.transport.write(data)

    @property
    def closed(self) -> bool:
        return self.lost.called

    def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """The first response: (status, headers by lower-case name, body)."""
        head, _, body = self.received.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if len(lines[0].split()) < 2:
            raise AssertionError(f"not a response: {self.received[:200]!r}")
        return int(lines[0].split()[1]), headers, body


class RawClients:
    """Raw clients of this test's server, cut at cleanup."""

    @defer.inlineCallbacks
    def raw(self, data: bytes = b"", port: int | None = None, source: str = "127.0.0.1") -> Raw:
        """A raw connection from ``source`` (to this server's port unless ``port``), sending ``data``."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port or self.port,
                                      bindAddress=(source, 0))
        client = yield connectProtocol(endpoint, Raw())
        self.addCleanup(self._cut, client)
        if data:
            client.send(data)
        return client

    @defer.inlineCallbacks
    def raws(self, count: int, data: bytes = b"", **where) -> list[Raw]:
        """``count`` raw connections made one after the other (see :meth:`raw`)."""
        clients = []
        for _ in range(count):
            clients.append((yield self.raw(data, **where)))
        return clients

    @staticmethod
    def _cut(client: Raw) -> defer.Deferred:
        if not client.closed:
            client.transport.abortConnection()
        return client.lost

    def until_closed(self, client: Raw, timeout: float = WAIT) -> defer.Deferred:
        """Wait until the server closed ``client``."""
        return wait_for(lambda: client.closed, "the server to close the connection", timeout)

    @defer.inlineCallbacks
    def refused_with(self, client: Raw, status: int) -> tuple[dict[bytes, bytes], dict]:
        """
        Wait until the server answered ``client`` with ``status`` and closed
        it; (headers, JSON body). Every refusal has the same shape.
        """
        yield self.until_closed(client)
        code, headers, body = client.response()
        self.assertEqual(code, status, client.received[:300])
        self.assertEqual(headers[b"connection"], b"close")
        self.assertEqual(int(headers[b"content-length"]), len(body))
        self.assertNotIn(b"server", headers)
        return headers, json.loads(body)


def refused_count(service, reason: str) -> float:
    """``signaling_connections_refused_total{reason}`` of ``service`` now."""
    body, _ = service.metrics.render()
    return sample(parse_metrics(body), "signaling_connections_refused_total", reason=reason)


# -- request heads --------------------------------------------------------------------


class RequestHeadTests(RawClients, ServerTestCase):
    """Request heads: 16 KiB at most (the default), refused with 431 at the limit."""

    @defer.inlineCallbacks
    def test_head_over_the_limit_gets_431(self):
        pad = b"X-Pad: " + b"a" * (16 * 1024) + b"\r\n"
        client = yield self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n")
        _, body = yield self.refused_with(client, 431)
        self.assertEqual(body, {"error": "request head too large"})
        self.assertEqual(refused_count(self.service, "head_too_large"), 1)

    @defer.inlineCallbacks
    def test_head_without_end_is_refused_at_the_limit(self):
        """The server stops reading once the head passes 16 KiB: it never buffers more."""
        client = yield self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
        while not client.closed and client.sent < 1024 * 1024:
            client.send(line * 4)
            yield pause(0)
        yield self.refused_with(client, 431)
        # What was sent before the close: the limit, plus what was in flight.
        self.assertLess(client.sent, 16 * 1024 + 64 * 1024)

    @defer.inlineCallbacks
    def test_upgrade_head_over_the_limit_gets_431(self):
        pad = b"Cookie: " + b"c" * (16 * 1024) + b"\r\n"
        client = yield self.raw(UPGRADE + pad + b"\r\n")
        yield self.refused_with(client, 431)
        self.assertEqual(self.registry.sessions, set())


# -- request bodies -------------------------------------------------------------------


class RequestBodyTests(RawClients, ServerTestCase):
    """Request bodies: 1 KiB at most (the default), refused with 413 before they are read."""

    @defer.inlineCallbacks
    def test_huge_content_length_gets_413_before_the_body(self):
        client = yield self.raw(b"POST /health HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 200000000\r\nExpect: 100-continue\r\n\r\n")
        _, body = yield self.refused_with(client, 413)
        self.assertEqual(body, {"error": "request body too large"})
        self.assertNotIn(b"100 Continue", client.received)
        self.assertEqual(refused_count(self.service, "body_too_large"), 1)

    @defer.inlineCallbacks
    def test_chunked_body_over_the_limit_gets_413(self):
        client = yield self.raw(b"POST /health HTTP/1.1\r\nHost: x\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n"
                                + b"200\r\n" + b"z" * 0x200 + b"\r\n")
        yield pause(0.1)
        self.assertEqual(client.received, b"")  # 512 bytes are within the limit
        client.send(b"400\r\n" + b"z" * 0x400 + b"\r\n")
        yield self.refused_with(client, 413)

    @defer.inlineCallbacks
    def test_small_bodies_are_read(self):
        client = yield self.raw(b"POST /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                b"Content-Length: 10\r\n\r\n0123456789")
        yield self.until_closed(client)
        self.assertEqual(client.response()[0], 405)
        client = yield self.raw(b"POST /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        yield self.until_closed(client)
        self.assertEqual(client.response()[0], 405)

    @defer.inlineCallbacks
    def test_upgrade_with_a_body_gets_400(self):
        client = yield self.raw(UPGRADE + b"Content-Length: 5\r\n\r\nhello")
        yield self.until_closed(client)
        code, _, body = client.response()
        self.assertEqual((code, json.loads(body)), (400, {"error": "a WebSocket upgrade has no body"}))
        self.assertEqual(self.registry.sessions, set())


# -- time for heads and bodies --------------------------------------------------------


class RequestTimeTests(RawClients, ServerTestCase):
    """A head, then a body, each within the handshake timeout; else 408."""

    config = {"handshake_timeout": 1.0}

    @defer.inlineCallbacks
    def test_trickled_head_gets_408(self):
        client = yield self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        while not client.closed and client.sent < 4096:
            client.send(b"X: y\r\n")
            yield pause(0.2)
        _, body = yield self.refused_with(client, 408)
        self.assertEqual(body, {"error": "the request did not arrive in time"})
        self.assertEqual(refused_count(self.service, "handshake_timeout"), 1)

    @defer.inlineCallbacks
    def test_silent_connection_is_closed_without_a_response(self):
        client = yield self.raw()
        yield self.until_closed(client)
        self.assertEqual(client.received, b"")
        self.assertEqual(refused_count(self.service, "handshake_timeout"), 1)

    @defer.inlineCallbacks
    def test_idle_kept_alive_connection_is_closed(self):
        client = yield self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        yield wait_for(lambda: b"\r\n\r\n" in client.received, "the response")
        self.assertEqual(client.response()[0], 200)
        yield self.until_closed(client)
        self.assertEqual(client.received.count(b"HTTP/1.1"), 1)
        client = yield self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /ready HTTP/1.1\r\n")
        yield self.until_closed(client)
        self.assertEqual(client.received.count(b"HTTP/1.1 200"), 1)
        self.assertIn(b"HTTP/1.1 408", client.received)

    @defer.inlineCallbacks
    def test_trickled_body_gets_408(self):
        client = yield self.raw(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        while not client.closed and client.sent < 4096:
            client.send(b"b")
            yield pause(0.2)
        yield self.refused_with(client, 408)
        self.assertEqual(refused_count(self.service, "body_timeout"), 1)


# -- connection caps from accept --------------------------------------------------------


class TotalCapTests(RawClients, ServerTestCase):
    config = {"max_connections": 3}

    @defer.inlineCallbacks
    def test_sockets_that_said_nothing_count(self):
        idle = yield self.raws(3)
        with self.assertRaises(ConnectionRefused) as refused:
            yield self.connect()
        self.assertIn("503", str(refused.exception))
        self.assertEqual(refused_count(self.service, "max_connections"), 1)
        yield self._cut(idle[0])
        yield wait_for(lambda: self.service.gate.open == 2, "the closed socket to be released")
        client = yield self.connect()
        yield self.roundtrip(client)

    @defer.inlineCallbacks
    def test_refused_at_once_with_503_and_retry_after(self):
        for _ in range(3):
            yield self.raw()
        client = yield self.raw()
        headers, body = yield self.refused_with(client, 503)
        self.assertEqual(headers[b"retry-after"], b"10")
        self.assertEqual(body, {"error": "server is at its connection limit"})

    @defer.inlineCallbacks
    def test_every_connection_is_released_exactly_once(self):
        gate = self.service.gate
        client = yield self.connect()                          # a WebSocket
        yield self.roundtrip(client)
        yield client.drop()
        silent = yield self.raw()                              # nothing said, closed by us
        yield self._cut(silent)
        for request in (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",  # kept alive
                        UPGRADE + b"Content-Length: 1\r\n\r\nx",  # 400
                        b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 20000):  # 431
            answered = yield self.raw(request)
            yield wait_for(lambda: b"\r\n\r\n" in answered.received, "an answer")
            yield self._cut(answered)
        upgraded = yield self.raw(UPGRADE + b"\r\n")  # a WebSocket (upgraded by the site
        yield wait_for(lambda: b"\r\n\r\n" in upgraded.received, "the 101")  # on the public path)
        yield self._cut(upgraded)
        held = yield self.raws(3)
        over = yield self.raw()                                # refused at accept
        yield self.until_closed(over)
        for raw in held:
            yield self._cut(raw)
        yield wait_for(lambda: gate.open == 0, "every connection to be released")
        yield pause(0.1)
        self.assertEqual((gate.open, gate.count("127.0.0.1")), (0, 0))
        # The caps still hold exactly three.
        held = yield self.raws(3)
        over = yield self.raw()
        yield self.refused_with(over, 503)

    @defer.inlineCallbacks
    def test_sockets_gauge_counts_what_the_cap_counts(self):
        yield self.raw()
        websocket = yield self.connect()
        yield self.roundtrip(websocket)
        scrape = yield self.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        yield self.until_closed(scrape)
        samples = parse_metrics(scrape.received.partition(b"\r\n\r\n")[2])
        self.assertEqual(sample(samples, "signaling_sockets"), 3)  # the scrape's own included
        self.assertEqual(sample(samples, "signaling_connections"), 1)  # WebSockets only


class TotalCapTestsOnPublicPath(TotalCapTests):
    fast_path = False


class PerAddressCapTests(RawClients, ServerTestCase):
    config = {"max_connections_per_ip": 2}

    @defer.inlineCallbacks
    def test_per_address_from_accept(self):
        for _ in range(2):
            yield self.raw()
        refused = yield self.raw(UPGRADE + b"\r\n")
        yield self.refused_with(refused, 503)
        self.assertEqual(refused_count(self.service, "per_ip"), 1)
        other = yield self.raw(UPGRADE + b"\r\n", source="127.0.0.2")
        yield wait_for(lambda: b"\r\n\r\n" in other.received, "the handshake response")
        self.assertTrue(other.received.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))


class PerAddressCapTestsOnPublicPath(PerAddressCapTests):
    fast_path = False


class TrustedProxyCapTests(RawClients, ServerTestCase):
    config = {"max_connections_per_ip": 1, "max_connections": 8,
              "trusted_proxies": ("127.0.0.1",)}

    @defer.inlineCallbacks
    def test_proxy_counts_per_forwarded_address_from_the_handshake(self):
        # The proxy's own connections are not capped per address at accept...
        for _ in range(3):
            yield self.raw()
        a = yield self.connect(headers={"X-Forwarded-For": "203.0.113.1"})
        yield self.roundtrip(a)
        # ...its clients are, at the handshake, and the refusal says when to retry.
        again = yield self.raw(UPGRADE + b"X-Forwarded-For: 203.0.113.1\r\n\r\n")
        yield self.until_closed(again)
        code, headers, _ = again.response()
        self.assertEqual((code, headers[b"retry-after"]), (503, b"10"))
        self.assertNotIn(b"server", headers)
        self.assertEqual(refused_count(self.service, "per_ip"), 1)
        b = yield self.connect(headers={"X-Forwarded-For": "203.0.113.2"})
        yield self.roundtrip(b)
        # An address that is not a trusted proxy is capped from accept.
        yield self.raw(source="127.0.0.2")
        direct = yield self.raw(source="127.0.0.2")
        yield self.refused_with(direct, 503)
        self.assertEqual(refused_count(self.service, "per_ip"), 2)
        # The total cap counts the proxy's connections from accept: 3 + 2 + 1 + 2 = 8.
        for _ in range(2):
            yield self.raw()
        over = yield self.raw()
        yield self.refused_with(over, 503)
        self.assertEqual(refused_count(self.service, "max_connections"), 1)


class TrustedProxyCapTestsOnPublicPath(TrustedProxyCapTests):
    fast_path = False


class OtherListenerTests(RawClients, ServerTestCase):
    config = {"max_connections": 2, "listen": ("tcp:0:interface=127.0.0.1",),
              "metrics_listen": ("tcp:0:interface=127.0.0.1",)}

    @defer.inlineCallbacks
    def test_listen_and_metrics_listen_count_too(self):
        main, listen, metrics = (port.getHost().port for port in self.service.ports())
        yield self.raw(port=listen)
        held = yield self.raw(port=metrics)
        refused = yield self.raw(port=main)
        yield self.refused_with(refused, 503)
        scrape = yield self.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", port=metrics)
        yield self.refused_with(scrape, 503)
        yield self._cut(held)
        yield wait_for(lambda: self.service.gate.open == 1, "the metrics socket to be released")
        scrape = yield self.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                port=metrics)
        yield self.until_closed(scrape)
        self.assertEqual(scrape.response()[0], 200)


class OtherListenerTestsOnPublicPath(OtherListenerTests):
    fast_path = False


class TlsCapTests(RawClients, SystemTempMixin, ServerTestCase):
    """Over a cap a TLS connection is closed before any handshake work."""

    def setUp(self):
        self.clock = task.Clock()
        self.clients = []
        pki = PKI.create()
        files = pki.write(self.mktemp())
        self.trust = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pki.root_pem))
        self.start_server(tls_cert=str(files.fullchain), tls_key=str(files.key),
                          max_connections=1)
        self.url = f"wss://127.0.0.1:{self.port}/"

    @defer.inlineCallbacks
    def test_tls_connection_over_the_cap_is_closed(self):
        held = yield self.raw()
        refused = yield self.raw(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello
        yield self.until_closed(refused)
        self.assertEqual(refused.received, b"")  # no ServerHello, no HTTP
        with self.assertRaises(ConnectionRefused):
            yield connect(self.url, context_factory=self.trust)
        self.assertEqual(refused_count(self.service, "max_connections"), 2)
        yield self._cut(held)
        yield wait_for(lambda: self.service.gate.open == 0, "the held socket to be released")
        client = yield self.connect(url=self.url, context_factory=self.trust)
        yield self.roundtrip(client)


class TlsCapTestsOnPublicPath(TlsCapTests):
    fast_path = False


# -- no banner ------------------------------------------------------------------------

#: Requests that get every kind of response the server writes.
BANNER_PROBES = [
    b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
    b"OPTIONS / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /health HTTP/1.0\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
    UPGRADE + b"\r\n",
    UPGRADE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"") + b"\r\n",
    UPGRADE.replace(b"Host: 127.0.0.1\r\n", b"") + b"\r\n",
    UPGRADE.replace(b"GET", b"POST") + b"\r\n",
    UPGRADE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 7") + b"\r\n",
    UPGRADE + b"Content-Length: 1\r\n\r\nx",
    b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n",  # 408
]


class NoBannerTests(RawClients, ServerTestCase):
    config = {"handshake_timeout": 2.0, "allowed_origins": ("https://app.example",)}

    @defer.inlineCallbacks
    def test_no_response_names_a_library(self):
        probes = BANNER_PROBES + [UPGRADE + b"Origin: https://evil.example\r\n\r\n"]
        clients = []
        for probe in probes:
            clients.append((yield self.raw(probe)))
        for probe, client in zip(probes, clients):
            yield wait_for(lambda: b"\r\n\r\n" in client.received or client.closed,
                           f"an answer to {probe[:40]!r}")
            if client.received.startswith(b"HTTP/1.1 101 "):
                yield self._cut(client)
            else:
                yield self.until_closed(client)
            self.assertRegex(client.received, rb"^HTTP/1\.[01] \d\d\d", probe[:40])
            head = client.received.partition(b"\r\n\r\n")[0].lower()
            self.assertNotIn(b"\r\nserver:", head, probe[:40])
            for name in (b"autobahn", b"twisted"):
                self.assertNotIn(name, client.received.lower(), probe[:40])
        statuses = {client.response()[0] for client in clients}
        self.assertLessEqual({101, 200, 204, 400, 403, 404, 405, 408, 413, 431}, statuses)


class NoBannerTestsOnPublicPath(NoBannerTests):
    fast_path = False


class RequestHeadTestsOnPublicPath(RequestHeadTests):
    fast_path = False


class RequestBodyTestsOnPublicPath(RequestBodyTests):
    fast_path = False


class RequestTimeTestsOnPublicPath(RequestTimeTests):
    fast_path = False


# -- options ---------------------------------------------------------------------------


class RequestLimitOptionTests(unittest.SynchronousTestCase):
    def parse(self, *argv, environ=None):
        options = Options(environ=environ or {})
        options.parseOptions(["--db", ":memory:", *argv])
        return options.config

    def test_defaults_options_and_environment(self):
        config = self.parse()
        self.assertEqual((config.max_request_head, config.max_request_body), (16384, 1024))
        config = self.parse("--max-request-head", "8192", "--max-request-body", "0")
        self.assertEqual((config.max_request_head, config.max_request_body), (8192, 0))
        config = self.parse(environ={"SIGNALING_MAX_REQUEST_BODY": "4096"})
        self.assertEqual(config.max_request_body, 4096)

    def test_bounds(self):
        for argv, option in ((("--max-request-head", "1000"), "--max-request-head"),
                             (("--max-request-body", "-1"), "--max-request-body"),
                             (("--max-request-body", str(2 << 20)), "--max-request-body")):
            with self.assertRaises(usage.UsageError) as raised:
                self.parse(*argv)
            self.assertIn(option, str(raised.exception))


# -- descriptor exhaustion, for real ---------------------------------------------------


def _few_descriptors() -> None:
    """In the server's child process: at most 300 open files."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))


class DescriptorExhaustionTests(RawClients, ProcessTestCase):
    """
    The attack that used to leave no descriptor for a real client: 287
    POSTs whose bodies trickle in, against ``nofile=300`` and both caps at 20.
    """

    @defer.inlineCallbacks
    def test_trickling_bodies_leave_room_for_a_real_client(self):
        server, self.port = yield self.start(
            MODULE, "--port", "0", "--db", ":memory:", "--max-connections", "20",
            "--max-connections-per-ip", "20", "--handshake-timeout", "3",
            preexec_fn=_few_descriptors)
        head = b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        attackers = yield self.raws(287, head)

        def trickle():
            for attacker in attackers:
                # (Writing to a refused socket before reading its 503 would
                # lose the 503 to the reset that answers the write.)
                if not attacker.closed and not attacker.received:
                    attacker.send(b"x")

        dripping = task.LoopingCall(trickle)
        dripping.start(0.5, now=False)
        self.addCleanup(lambda: dripping.running and dripping.stop())
        # All but 20 are refused at once; the 20 are cut when their body is late.
        yield wait_for(lambda: sum(a.closed for a in attackers) >= 267,
                       "the connections over the caps to be refused", timeout=20)
        refused = [a for a in attackers if a.received.startswith(b"HTTP/1.1 503 ")]
        self.assertGreaterEqual(len(refused), 267)
        # A real client gets through: at once, or once the body deadline cut
        # the 20 that were let in.
        deadline = reactor.seconds() + 20
        while True:
            try:
                client = yield self.client(f"ws://127.0.0.1:{self.port}/")
                break
            except ConnectionRefused:
                if reactor.seconds() > deadline:
                    raise
                yield pause(0.2)
        client.send({"type": "register", "peerId": "real"})
        yield client.expect("registered")
        late = [a for a in attackers if a.received.startswith(b"HTTP/1.1 408 ")]
        self.assertGreater(len(late), 0)
        self.assertIsNone(server.returncode)
        self.assertNotIn("Too many open files", server.log)
