"""
``wss://`` and ``https://`` end to end: a client that trusts only a test root
CA talks to the server, whose certificate is issued by an intermediate.
Certificate renewal on SIGHUP is tested on a real ``twistd`` process.
"""

import json
import signal

from twisted.internet import defer, reactor, task, threads
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import Agent
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from alpn import ALPN_OFFERS, CURL, curl_get, tls_exchange
from certs import PKI, pem_certificate
from helpers import ConnectionRefused, ServerTestCase, connect, http_get
from processes import TWISTD, ProcessTestCase, SystemTempMixin
from system import unavailable

#: A WebSocket upgrade request as a browser sends it (minus cookies).
UPGRADE = (
    b"GET /app HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Origin: https://localhost\r\n\r\n"
)
HEALTH = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def escape(path):
    """``path`` quoted for a Twisted endpoint description."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


def peer_serial(client):
    """Serial number of the certificate the server presented to ``client``."""
    return client.transport.getPeerCertificate().get_serial_number()


@implementer(IPolicyForHTTPS)
class TrustRootPolicy:
    """HTTPS policy for Agent: verify every server as ``localhost`` against one root."""

    def __init__(self, options):
        self._options = options

    def creatorForNetloc(self, hostname, port):
        return self._options


class WssTests(SystemTempMixin, ServerTestCase):
    """The in-process server with TLS on its --port listener or on --listen endpoints."""

    def setUp(self):
        self.clock = task.Clock()
        self.clients = []
        self.pki = PKI.create()
        self.files = self.pki.write(self.mktemp())
        self.trust = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(self.pki.root_pem)
        )

    def start_tls(self, **overrides):
        """Start the server; returns the wss:// URL of its first listener."""
        self.start_server(**overrides)
        return f"wss://127.0.0.1:{self.port}/"

    def wss_register(self, url, peer_id):
        """A client that trusts only the test root, registered as ``peer_id``."""
        return self.register(peer_id, url=url, context_factory=self.trust)

    @defer.inlineCallbacks
    def assert_talk(self, first_url, second_url):
        """
        Two clients register (``first_url`` may be this test's plain ws://
        URL) and exchange a directed message.
        """
        if first_url.startswith("wss:"):
            alice = yield self.wss_register(first_url, "alice")
        else:
            alice = yield self.register("alice")
        bob = yield self.wss_register(second_url, "bob")
        alice.send({"type": "offer", "to": "bob", "sdp": "v=0 secure"})
        offer = yield bob.expect("offer")
        self.assertEqual((offer["from"], offer["sdp"]), ("alice", "v=0 secure"))
        bob.send({"type": "answer", "to": "alice", "sdp": "v=0 back"})
        answer = yield alice.expect("answer", skip=("peer-status",))
        self.assertEqual(answer["from"], "bob")
        return alice, bob

    @defer.inlineCallbacks
    def test_separate_chain(self):
        url = self.start_tls(tls_cert=str(self.files.cert), tls_key=str(self.files.key),
                             tls_chain=str(self.files.chain))
        alice, bob = yield self.assert_talk(url, url)
        self.assertEqual(peer_serial(bob), self.files.leaf.serial)

    @defer.inlineCallbacks
    def test_full_chain_certificate(self):
        url = self.start_tls(tls_cert=str(self.files.fullchain), tls_key=str(self.files.key))
        alice, bob = yield self.assert_talk(url, url)
        self.assertEqual(peer_serial(alice), self.files.leaf.serial)

    @defer.inlineCallbacks
    def test_leaf_without_chain_is_not_trusted(self):
        """The control: without the intermediate the root-only client must refuse."""
        url = self.start_tls(tls_cert=str(self.files.cert), tls_key=str(self.files.key))
        yield self.assertFailure(connect(url, context_factory=self.trust), ConnectionRefused)

    @defer.inlineCallbacks
    def test_plain_client_on_tls_port_fails(self):
        self.start_tls(tls_cert=str(self.files.fullchain), tls_key=str(self.files.key))
        yield self.assertFailure(connect(f"ws://127.0.0.1:{self.port}/"), ConnectionRefused)
        self.assertEqual(self.registry.sessions, set())

    @defer.inlineCallbacks
    def test_https_health_on_the_same_port(self):
        url = self.start_tls(tls_cert=str(self.files.fullchain), tls_key=str(self.files.key))
        yield self.wss_register(url, "alice")
        agent = Agent(reactor, contextFactory=TrustRootPolicy(self.trust))
        response, body = yield http_get(f"https://127.0.0.1:{self.port}/health", agent=agent)
        body = json.loads(body)
        self.assertEqual(response.code, 200)
        self.assertEqual(body["status"], "healthy")
        self.assertEqual(body["connections"]["current"], 1)

    @defer.inlineCallbacks
    def test_plain_and_tls_listen_endpoints_side_by_side(self):
        ssl = (f"ssl:0:interface=127.0.0.1:privateKey={escape(self.files.key)}"
               f":certKey={escape(self.files.cert)}:extraCertChain={escape(self.files.chain)}")
        self.start_server(port=None, listen=("tcp:0:interface=127.0.0.1", ssl))
        plain, secure = [p.getHost().port for p in self.service.ports()]
        self.assertEqual(self.port, plain)
        alice, bob = yield self.assert_talk(self.url, f"wss://127.0.0.1:{secure}/")
        self.assertEqual(peer_serial(bob), self.files.leaf.serial)
        yield self.assertFailure(connect(f"ws://127.0.0.1:{secure}/"), ConnectionRefused)

    @defer.inlineCallbacks
    def test_tls_port_with_plain_listen(self):
        self.start_server(tls_cert=str(self.files.fullchain), tls_key=str(self.files.key),
                          listen=("tcp:0:interface=127.0.0.1",))
        secure, plain = [p.getHost().port for p in self.service.ports()]
        self.url = f"ws://127.0.0.1:{plain}/"
        alice, bob = yield self.assert_talk(self.url, f"wss://127.0.0.1:{secure}/")
        self.assertEqual(peer_serial(bob), self.files.leaf.serial)


class AlpnTests(SystemTempMixin, ServerTestCase):
    """
    The server's TLS listeners (--tls-cert and --listen ssl:) with clients
    offering ALPN as browsers and curl do: ``http/1.1`` is negotiated, no
    ALPN works as before, ``h2`` alone is refused with
    ``no_application_protocol`` (not ``internal_error``).
    """

    def setUp(self):
        self.clock = task.Clock()
        self.clients = []
        self.pki = PKI.create()
        self.files = self.pki.write(self.mktemp())

    def tls_ports(self):
        """Start a server with both kinds of TLS listener; their ports."""
        ssl = (f"ssl:0:interface=127.0.0.1:privateKey={escape(self.files.key)}"
               f":certKey={escape(self.files.cert)}:extraCertChain={escape(self.files.chain)}")
        self.start_server(tls_cert=str(self.files.fullchain), tls_key=str(self.files.key),
                          listen=(ssl,))
        return {"--tls-cert": self.service.ports()[0].getHost().port,
                "--listen ssl:": self.service.ports()[1].getHost().port}

    def exchange(self, port, alpn, request, until):
        return threads.deferToThread(
            tls_exchange, port, str(self.files.root), alpn, request, until
        )

    @defer.inlineCallbacks
    def test_websocket_and_https_with_every_offer(self):
        expected = {"browser": "http/1.1", "http/1.1 only": "http/1.1", "no ALPN": None}
        for listener, port in self.tls_ports().items():
            for offer, alpn in ALPN_OFFERS.items():
                where = f"{listener}, {offer}"
                selected, head = yield self.exchange(port, alpn, UPGRADE, b"\r\n\r\n")
                self.assertEqual(selected, expected[offer], where)
                self.assertTrue(head.startswith(b"HTTP/1.1 101 "), (where, head))
                selected, response = yield self.exchange(port, alpn, HEALTH, b"\x00")
                self.assertTrue(response.startswith(b"HTTP/1.1 200 "), (where, response))
                self.assertIn(b'"status": "healthy"', response, where)

    @defer.inlineCallbacks
    def test_h2_only_refused_with_no_application_protocol(self):
        for listener, port in self.tls_ports().items():
            with self.assertRaises(Exception, msg=listener) as caught:
                yield self.exchange(port, ["h2"], HEALTH, b"\x00")
            self.assertIn("alert no application protocol", str(caught.exception), listener)
            self.assertNotIn("internal error", str(caught.exception), listener)
            selected, _ = yield self.exchange(port, ["h2", "http/1.1"], HEALTH, b"\x00")
            self.assertEqual(selected, "http/1.1", listener)

    @defer.inlineCallbacks
    def test_curl(self):
        if CURL is None:
            unavailable("curl is not installed: apt-get install -y curl")
        root = str(self.files.root)
        for listener, port in self.tls_ports().items():
            url = f"https://localhost:{port}/health"
            for options in ((), ("--http2",), ("--http1.1",), ("--no-alpn",)):
                result = yield threads.deferToThread(
                    curl_get, url, root, "--write-out", "\n%{http_version}", *options
                )
                where = (listener, options, result.stderr)
                self.assertEqual(result.returncode, 0, where)
                body, version = result.stdout.rsplit("\n", 1)
                self.assertEqual((json.loads(body)["status"], version), ("healthy", "1.1"), where)


class RenewalTests(ProcessTestCase):
    """SIGHUP makes a running ``twistd`` present a renewed certificate."""

    @defer.inlineCallbacks
    def test_sighup_renews_and_broken_files_keep_the_old_certificate(self):
        pki = PKI.create()
        first = pki.write(self.mktemp())
        trust = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pki.root_pem))
        server, port = yield self.start(
            TWISTD, "--port", "0", "--db", ":memory:",
            "--tls-cert", str(first.fullchain), "--tls-key", str(first.key),
        )
        url = f"wss://127.0.0.1:{port}/"
        old = yield self.register(url, "old", context_factory=trust)
        self.assertEqual(peer_serial(old), first.leaf.serial)

        second = pki.write(first.directory, common_name="renewed")
        self.assertNotEqual(second.leaf.serial, first.leaf.serial)
        server.send_signal(signal.SIGHUP)
        yield server.wait_for_log("TLS certificate reloaded")
        new = yield self.register(url, "new", context_factory=trust)
        self.assertEqual(peer_serial(new), second.leaf.serial)
        yield self.until_pong(old)
        new.send({"type": "message", "to": "old", "payload": "hello"})
        message = yield old.expect("message", skip=("peer-status",))
        self.assertEqual((message["from"], message["payload"]), ("new", "hello"))

        # A renewal gone wrong: a certificate whose key was not written.
        third = pki.issue_leaf(common_name="broken")
        first.fullchain.write_bytes(pem_certificate(third.certificate) + pki.intermediate_pem)
        server.send_signal(signal.SIGHUP)
        yield server.wait_for_log("TLS reload failed")
        later = yield self.register(url, "later", context_factory=trust)
        self.assertEqual(peer_serial(later), second.leaf.serial)
        yield self.until_pong(old)
        yield self.until_pong(new)
        self.assertIsNone(server.returncode)

        server.send_signal(signal.SIGTERM)
        status = yield server.wait_exit()
        self.assert_clean_exit(server, status)
