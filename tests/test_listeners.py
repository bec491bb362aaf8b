"""
Listening sockets shared with workers: the order of the listeners, each
worker's metrics port, binding in the parent, and serving (plain and TLS,
over real handshakes) on sockets inherited the way a worker inherits them.
"""

import json
import os
import socket

from twisted.internet import defer, reactor, threads
from twisted.internet.error import CannotListenError
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial import unittest

from alpn import tls_exchange
from certs import PKI
from helpers import ConnectionRefused, connect, http_get, server_config, settle_autobahn_timers
from processes import SystemTempMixin
from signaling.listeners import (
    InheritedSockets,
    ListenerSpec,
    bind_listener,
    check_worker_listeners,
    listener_specs,
    metrics_for_worker,
    worker_config,
)
from signaling.service import make_service

REDIS = "unix:///run/redis/redis.sock"


def escape(path):
    """``path`` quoted for a Twisted endpoint description."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


class SpecTests(unittest.SynchronousTestCase):
    def test_order_port_listen_metrics(self):
        config = server_config(listen=("tcp:9002", "tcp6:9003"), metrics_listen=("tcp:9102",))
        self.assertEqual(listener_specs(config), [
            ListenerSpec(None), ListenerSpec("tcp:9002"), ListenerSpec("tcp6:9003"),
            ListenerSpec("tcp:9102", metrics=True),
        ])
        self.assertEqual(listener_specs(server_config(port=None, listen=("tcp:1",))),
                         [ListenerSpec("tcp:1")])

    def test_metrics_port_per_worker(self):
        cases = [
            ("tcp:9102:interface=127.0.0.1", 1, "tcp:9103:interface=127.0.0.1"),
            ("tcp:9102", 0, "tcp:9102"),
            ("tcp:port=9102:interface=127.0.0.1", 3, "tcp:port=9105:interface=127.0.0.1"),
            ("tcp:interface=127.0.0.1:9102", 2, "tcp:interface=127.0.0.1:9104"),
            ("tcp:0:interface=127.0.0.1", 5, "tcp:0:interface=127.0.0.1"),
            ("tcp6:9102:interface=\\:\\:1", 1, "tcp6:9103:interface=\\:\\:1"),
            ("ssl:9443:privateKey=C\\:\\\\k.pem:certKey=c.pem", 1,
             "ssl:9444:privateKey=C\\:\\\\k.pem:certKey=c.pem"),
        ]
        for description, worker, expected in cases:
            self.assertEqual(metrics_for_worker(description, worker), expected)

    def test_metrics_without_a_port_to_move(self):
        for description in ("unix:/run/m.sock", "systemd:domain=INET:index=0",
                            "tcp:interface=127.0.0.1", "tcp:$PORT", "tls:/etc/certs:9102"):
            self.assertRaises(ValueError, metrics_for_worker, description, 1)
        self.assertRaises(ValueError, metrics_for_worker, "tcp:65535", 1)

    def test_worker_config_moves_only_metrics(self):
        config = server_config(workers=3, redis_url=REDIS, listen=("tcp:9002",),
                               metrics_listen=("tcp:9102", "tcp:0"))
        second = worker_config(config, 1)
        self.assertEqual(second.metrics_listen, ("tcp:9103", "tcp:0"))
        self.assertEqual(second.listen, config.listen)
        self.assertEqual(second.port, config.port)

    def test_check_worker_listeners(self):
        check_worker_listeners(server_config(listen=("unix:/x",)))  # one process: anything
        check_worker_listeners(server_config(
            workers=2, redis_url=REDIS, listen=("tcp:1", "ssl:2", "systemd:domain=INET:index=0")))
        for values in ({"listen": ("unix:/x",)}, {"listen": ("UNIX:/x",)},
                       {"listen": ("systemd:domain=UNIX:index=0",)},
                       {"metrics_listen": ("unix:/m",)}):
            config = server_config(workers=2, redis_url=REDIS, **values)
            self.assertRaises(ValueError, check_worker_listeners, config)


class BindTests(SystemTempMixin, unittest.SynchronousTestCase):
    def bind(self, spec, **config):
        sock = bind_listener(spec, server_config(**config))
        self.addCleanup(sock.close)
        return sock

    def test_port_listener(self):
        sock = self.bind(ListenerSpec(None), backlog=7)
        self.assertEqual(sock.family, socket.AF_INET)
        self.assertEqual(sock.getsockname()[0], "127.0.0.1")
        with socket.create_connection(sock.getsockname(), timeout=5):
            pass  # the kernel completes the handshake: it listens

    def test_descriptions(self):
        pki = PKI.create()
        files = pki.write(self.mktemp())
        ssl = (f"ssl:0:interface=127.0.0.1:privateKey={escape(files.key)}"
               f":certKey={escape(files.cert)}")
        cases = [("tcp:0:interface=127.0.0.1", socket.AF_INET, "127.0.0.1"),
                 ("tcp6:0:interface=\\:\\:1", socket.AF_INET6, "::1"),
                 (ssl, socket.AF_INET, "127.0.0.1")]
        for description, family, host in cases:
            sock = self.bind(ListenerSpec(description))
            self.assertEqual((sock.family, sock.getsockname()[0]), (family, host))

    def test_port_in_use(self):
        taken = self.bind(ListenerSpec(None))
        number = taken.getsockname()[1]
        with self.assertRaises(CannotListenError) as raised:
            bind_listener(ListenerSpec(None), server_config(port=number))
        self.assertIn("Address already in use", str(raised.exception))
        with self.assertRaises(CannotListenError):
            bind_listener(ListenerSpec(f"tcp:{number}:interface=127.0.0.1"), server_config())

    def test_unix_refused(self):
        path = os.path.join(self.mkdtemp(), "s.sock")
        self.assertRaises(ValueError, bind_listener, ListenerSpec(f"unix:{path}"), server_config())


class InheritedServingTests(SystemTempMixin, unittest.TestCase):
    """A server built on sockets bound elsewhere, as a worker builds it."""

    def setUp(self):
        self.pki = PKI.create()
        self.files = self.pki.write(self.mktemp())
        self.trust = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(self.pki.root_pem))

    def parent_sockets(self, config):
        """Bind every listener of ``config`` as the parent does; the sockets."""
        sockets = [bind_listener(spec, config) for spec in listener_specs(config)]
        for sock in sockets:
            self.addCleanup(sock.close)
        return sockets

    def worker(self, config, sockets):
        """A started server on copies of ``sockets`` (the worker's inherited descriptors)."""
        inherited = InheritedSockets([os.dup(sock.fileno()) for sock in sockets])
        service = make_service(config, reactor, inherited=inherited)
        service.startService()
        self.addCleanup(self.stop, service)
        return service

    @defer.inlineCallbacks
    def stop(self, service):
        if service.running:
            yield service.stopService()
        yield settle_autobahn_timers()

    @defer.inlineCallbacks
    def register(self, url, peer_id, context_factory=None):
        client = yield connect(url, context_factory=context_factory)
        self.addCleanup(client.drop)
        client.send({"type": "register", "peerId": peer_id})
        yield client.expect("registered")
        return client

    @defer.inlineCallbacks
    def test_tls_port_plain_listen_and_metrics(self):
        config = server_config(
            tls_cert=str(self.files.fullchain), tls_key=str(self.files.key),
            listen=("tcp:0:interface=127.0.0.1",), metrics_listen=("tcp:0:interface=127.0.0.1",),
        )
        secure, plain, metrics = self.parent_sockets(config)
        service = self.worker(config, [secure, plain, metrics])
        self.assertEqual([p.getHost().port for p in service.ports()],
                         [s.getsockname()[1] for s in (secure, plain, metrics)])
        wss = f"wss://127.0.0.1:{secure.getsockname()[1]}/"
        alice = yield self.register(wss, "alice", self.trust)
        self.assertEqual(alice.transport.getPeerCertificate().get_serial_number(),
                         self.files.leaf.serial)
        yield self.assertFailure(connect(f"ws://127.0.0.1:{secure.getsockname()[1]}/"),
                                 ConnectionRefused)
        bob = yield self.register(f"ws://127.0.0.1:{plain.getsockname()[1]}/", "bob")
        bob.send({"type": "offer", "to": "alice", "sdp": "v=0"})
        offer = yield alice.expect("offer", skip=("peer-status",))
        self.assertEqual(offer["from"], "bob")
        response, body = yield http_get(f"http://127.0.0.1:{metrics.getsockname()[1]}/metrics")
        self.assertIn(b"signaling_connections 2.0", body)

    @defer.inlineCallbacks
    def test_ssl_description(self):
        description = (f"ssl:0:interface=127.0.0.1:privateKey={escape(self.files.key)}"
                       f":certKey={escape(self.files.cert)}:extraCertChain={escape(self.files.chain)}")
        config = server_config(port=None, listen=(description,))
        [sock] = self.parent_sockets(config)
        self.worker(config, [sock])
        port = sock.getsockname()[1]
        client = yield self.register(f"wss://127.0.0.1:{port}/", "a", self.trust)
        self.assertEqual(client.transport.getPeerCertificate().get_serial_number(),
                         self.files.leaf.serial)
        # A browser's ALPN offer is answered, also on an adopted ssl: socket.
        selected, response = yield threads.deferToThread(
            tls_exchange, port, str(self.files.root), ["h2", "http/1.1"],
            b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", b"\x00",
        )
        self.assertEqual(selected, "http/1.1")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)

    @defer.inlineCallbacks
    def test_socket_outlives_a_worker(self):
        """A worker that stops leaves the parent's socket listening for the next one."""
        config = server_config()
        [sock] = self.parent_sockets(config)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/health"
        first = self.worker(config, [sock])
        response, body = yield http_get(url)
        self.assertEqual(response.code, 200)
        yield first.stopService()
        self.worker(config, [sock])
        response, body = yield http_get(url)
        self.assertEqual((response.code, json.loads(body)["pid"]), (200, os.getpid()))
