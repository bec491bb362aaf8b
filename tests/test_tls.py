"""
Native TLS: real handshakes on 127.0.0.1 against a line-echo server that is
served through the context factories of :mod:`signaling.tls`.

Clients trust only the test root CA, so a handshake succeeds only when the
server sends the intermediate certificate.
"""

from __future__ import annotations

import os
import socket
import ssl
import warnings

from OpenSSL import SSL
from twisted.internet import defer, protocol, threads
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    wrapClientTLS,
    wrapServerTLS,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import LogLevel
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest
from zope.interface import implementer

from signaling.tls import (
    ReloadableTLS,
    TLSConfigError,
    check_listen_description,
    listen_endpoint,
    load_certificate_options,
    tls_from_options,
    tls_server_endpoint,
)
from alpn import ALPN_OFFERS, tls_exchange
from certs import PKI, pem_private_key
from helpers import capture_log


def _reactor():
    from twisted.internet import reactor

    return reactor


class _Echo(LineReceiver):
    """Server side: echo every line; tell the factory when the connection ends."""

    def connectionMade(self):
        self.lost = defer.Deferred()
        self.factory.connections.append(self)

    def lineReceived(self, line):
        self.sendLine(line)

    def connectionLost(self, reason):
        self.lost.callback(None)


class _EchoFactory(protocol.ServerFactory):
    protocol = _Echo

    def __init__(self):
        self.connections: list[_Echo] = []


@implementer(IHandshakeListener)
class _Client(LineReceiver):
    """Client side: exposes the handshake outcome and the replies it gets."""

    def __init__(self):
        self.handshake = defer.Deferred()
        self.lost = defer.Deferred()
        self._replies: list[defer.Deferred] = []

    def handshakeCompleted(self):
        self.handshake.callback(self)

    def lineReceived(self, line):
        self._replies.pop(0).callback(line)

    def exchange(self, line: bytes) -> defer.Deferred:
        """Send ``line``; fire with the line the server sends back."""
        reply = defer.Deferred()
        self._replies.append(reply)
        self.sendLine(line)
        return reply

    def peer_serial(self) -> int:
        """Serial number of the certificate the server presented."""
        return self.transport.getPeerCertificate().get_serial_number()

    def connectionLost(self, reason):
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.lost.callback(None)


class TLSTestCase(unittest.TestCase):
    """Shared set-up: a fresh PKI in a temp directory, servers and clients cleaned up."""

    def setUp(self):
        self.pki = PKI.create()
        self.files = self.pki.write(self.mktemp())
        self.trust_root = Certificate.loadPEM(self.pki.root_pem)

    @defer.inlineCallbacks
    def serve(self, context_factory, description=None):
        """Listen on 127.0.0.1 (an ephemeral port); return the port number."""
        factory = _EchoFactory()
        if description is None:
            endpoint = tls_server_endpoint(
                _reactor(), 0, context_factory, interface="127.0.0.1"
            )
        else:
            endpoint = listen_endpoint(_reactor(), description)
        port = yield endpoint.listen(factory)
        self.addCleanup(self._close_server, port, factory)
        return port.getHost().port

    @defer.inlineCallbacks
    def _close_server(self, port, factory):
        yield port.stopListening()
        for connection in factory.connections:
            connection.transport.loseConnection()
        yield defer.gatherResults([c.lost for c in factory.connections])

    @defer.inlineCallbacks
    def connect(self, port):
        """Connect a client that trusts only the root CA; fire after the handshake."""
        endpoint = wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=self.trust_root),
            TCP4ClientEndpoint(_reactor(), "127.0.0.1", port),
        )
        client = yield endpoint.connect(protocol.Factory.forProtocol(_Client))
        self.addCleanup(self._close_client, client)
        yield client.handshake
        return client

    def _close_client(self, client):
        client.transport.loseConnection()
        return client.lost

    @defer.inlineCallbacks
    def assert_verified_exchange(self, port, serial):
        """A client gets data back and saw the certificate with ``serial``."""
        client = yield self.connect(port)
        reply = yield client.exchange(b"hello")
        self.assertEqual(reply, b"hello")
        self.assertEqual(client.peer_serial(), serial)
        return client

    @defer.inlineCallbacks
    def assert_verify_fails(self, port):
        """The client refuses the server's chain."""
        with self.assertRaises(SSL.Error) as caught:
            yield self.connect(port)
        self.assertIn("certificate verify failed", str(caught.exception))


class ChainTests(TLSTestCase):
    """The intermediate reaches the client whichever way it is configured."""

    @defer.inlineCallbacks
    def test_fullchain_file(self):
        options = load_certificate_options(str(self.files.fullchain), str(self.files.key))
        port = yield self.serve(options)
        yield self.assert_verified_exchange(port, self.files.leaf.serial)

    @defer.inlineCallbacks
    def test_separate_chain_file(self):
        options = load_certificate_options(
            str(self.files.cert), str(self.files.key), str(self.files.chain)
        )
        port = yield self.serve(options)
        yield self.assert_verified_exchange(port, self.files.leaf.serial)

    @defer.inlineCallbacks
    def test_fullchain_and_chain_file_together(self):
        """The intermediate named twice is sent once and still verifies."""
        options = load_certificate_options(
            str(self.files.fullchain), str(self.files.key), str(self.files.chain)
        )
        self.assertEqual(len(options.extraCertChain), 1)
        port = yield self.serve(options)
        yield self.assert_verified_exchange(port, self.files.leaf.serial)

    @defer.inlineCallbacks
    def test_leaf_only_fails_verification(self):
        """Control: without the intermediate a root-only client refuses the server."""
        options = load_certificate_options(str(self.files.cert), str(self.files.key))
        port = yield self.serve(options)
        yield self.assert_verify_fails(port)

    @defer.inlineCallbacks
    def test_reloadable_serves_chain(self):
        tls = ReloadableTLS(str(self.files.fullchain), str(self.files.key))
        port = yield self.serve(tls)
        yield self.assert_verified_exchange(port, self.files.leaf.serial)

    @defer.inlineCallbacks
    def test_reloadable_wraps_any_endpoint(self):
        """wrapServerTLS (for tcp6:, unix:, systemd: listeners) takes it as well."""
        tls = ReloadableTLS(str(self.files.cert), str(self.files.key), str(self.files.chain))
        factory = _EchoFactory()
        endpoint = wrapServerTLS(tls, TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1"))
        port = yield endpoint.listen(factory)
        self.addCleanup(self._close_server, port, factory)
        yield self.assert_verified_exchange(port.getHost().port, self.files.leaf.serial)

    @defer.inlineCallbacks
    def test_ssl_description_with_extra_cert_chain(self):
        """The documented ``--listen ssl:...:extraCertChain=`` form verifies."""
        description = (
            f"ssl:0:interface=127.0.0.1:privateKey={self.files.key}"
            f":certKey={self.files.cert}:extraCertChain={self.files.chain}"
        )
        check_listen_description(description)
        port = yield self.serve(None, description)
        yield self.assert_verified_exchange(port, self.files.leaf.serial)

    @defer.inlineCallbacks
    def test_ssl_description_with_fullchain_sends_chain(self):
        """
        Twisted's own ``ssl:`` parser sends only the first certificate of
        ``certKey``; listen_endpoint loads it like --tls-cert, chain included.
        """
        description = (
            f"ssl:0:interface=127.0.0.1:privateKey={self.files.key}"
            f":certKey={self.files.fullchain}"
        )
        check_listen_description(description)
        port = yield self.serve(None, description)
        yield self.assert_verified_exchange(port, self.files.leaf.serial)

    def test_ssl_description_options_twisted_has_but_the_policy_fixes(self):
        for option in ("sslmethod=TLSv1_METHOD", "dhParameters=dh.pem", "nonsense=1"):
            description = f"ssl:0:privateKey={self.files.key}:{option}"
            error = self.assertRaises(TLSConfigError, check_listen_description, description)
            self.assertIn(repr(option.split("=")[0]), str(error))

    def test_ssl_description_port_forms(self):
        keywords = f"privateKey={self.files.key}:certKey={self.files.cert}"
        for description in (f"ssl:8443:{keywords}", f"ssl:port=8443:{keywords}:backlog=7"):
            check_listen_description(description)
            listen_endpoint(_reactor(), description)
        self.assertRaises(TLSConfigError, check_listen_description, f"ssl:{keywords}")
        self.assertRaises(TLSConfigError, check_listen_description, f"ssl:x:{keywords}")

    def test_check_listen_description_ignores_other_types(self):
        check_listen_description("tcp:9001")
        check_listen_description("unix:/run/signaling.sock")

    def test_check_listen_description_reports_missing_files(self):
        error = self.assertRaises(
            TLSConfigError, check_listen_description, "ssl:443:privateKey=/nonexistent/key.pem"
        )
        self.assertIn("/nonexistent/key.pem", str(error))


def _python_tls_client(port, cafile, minimum, maximum, ciphers):
    """Blocking client (run in a thread): handshake, echo one line, return the TLS version."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    context.set_ciphers(ciphers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 on purpose
        context.minimum_version = minimum
        context.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"ping\r\n")
            assert conn.recv(100) == b"ping\r\n"
            return conn.version()


class PolicyTests(TLSTestCase):
    """TLS 1.2 minimum and AEAD-only cipher suites, seen from real clients."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.port = yield self.serve(
            ReloadableTLS(str(self.files.fullchain), str(self.files.key))
        )

    def client(self, maximum, ciphers="DEFAULT@SECLEVEL=0", minimum=ssl.TLSVersion.TLSv1_1):
        return threads.deferToThread(
            _python_tls_client, self.port, str(self.files.root), minimum, maximum, ciphers
        )

    @defer.inlineCallbacks
    def test_tls11_client_refused(self):
        with self.assertRaises(ssl.SSLError) as caught:
            yield self.client(maximum=ssl.TLSVersion.TLSv1_1)
        # The server's protocol_version alert, not a client that cannot speak TLS 1.1
        # (that would be NO_PROTOCOLS_AVAILABLE) nor a certificate problem.
        self.assertEqual(caught.exception.reason, "TLSV1_ALERT_PROTOCOL_VERSION")

    @defer.inlineCallbacks
    def test_same_client_allowed_tls12_connects(self):
        """Control for the refusal above: the very same client settings work at TLS 1.2."""
        version = yield self.client(maximum=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(version, "TLSv1.2")

    @defer.inlineCallbacks
    def test_tls13_connects(self):
        version = yield self.client(
            maximum=ssl.TLSVersion.TLSv1_3, minimum=ssl.TLSVersion.TLSv1_3
        )
        self.assertEqual(version, "TLSv1.3")

    @defer.inlineCallbacks
    def test_cbc_cipher_refused(self):
        with self.assertRaises(ssl.SSLError) as caught:
            yield self.client(
                maximum=ssl.TLSVersion.TLSv1_2,
                minimum=ssl.TLSVersion.TLSv1_2,
                ciphers="ECDHE-ECDSA-AES128-SHA",
            )
        self.assertEqual(caught.exception.reason, "SSLV3_ALERT_HANDSHAKE_FAILURE")

    @defer.inlineCallbacks
    def test_gcm_cipher_accepted(self):
        """Control for the refusal above: an ECDHE AES-GCM suite is accepted."""
        version = yield self.client(
            maximum=ssl.TLSVersion.TLSv1_2,
            minimum=ssl.TLSVersion.TLSv1_2,
            ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
        )
        self.assertEqual(version, "TLSv1.2")

    def test_context_options(self):
        """No compression (CRIME); TLS 1.0 and 1.1 switched off in the context itself."""
        options = load_certificate_options(str(self.files.fullchain), str(self.files.key))
        # set_options(0) adds nothing and returns the options in force.
        in_force = options.getContext().set_options(0)
        for flag in (SSL.OP_NO_COMPRESSION, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
            self.assertTrue(in_force & flag, flag)


class AlpnTests(TLSTestCase):
    """
    Every way this module makes a TLS listener negotiates ``http/1.1`` for
    clients that offer it (browsers offer ``h2`` too), works without ALPN,
    and refuses an ``h2``-only client with ``no_application_protocol``, never
    ``internal_error`` (what Twisted's own ALPN callback leads to).
    """

    def listeners(self):
        """(name, Deferred port) for each kind of listener."""
        files = self.files
        reloaded = ReloadableTLS(str(files.fullchain), str(files.key))
        self.assertTrue(reloaded.reload())
        wrapped = wrapServerTLS(
            ReloadableTLS(str(files.fullchain), str(files.key)),
            TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1"),
        )
        return [
            ("load_certificate_options", self.serve(
                load_certificate_options(str(files.fullchain), str(files.key)))),
            ("ReloadableTLS after a reload", self.serve(reloaded)),
            ("ssl: description", self.serve(None, (
                f"ssl:0:interface=127.0.0.1:privateKey={files.key}"
                f":certKey={files.cert}:extraCertChain={files.chain}"))),
            ("TLS wrapped around another endpoint", self._listen(wrapped)),
        ]

    @defer.inlineCallbacks
    def _listen(self, endpoint):
        factory = _EchoFactory()
        port = yield endpoint.listen(factory)
        self.addCleanup(self._close_server, port, factory)
        return port.getHost().port

    def exchange(self, port, alpn):
        return threads.deferToThread(
            tls_exchange, port, str(self.files.root), alpn, b"ping\r\n"
        )

    @defer.inlineCallbacks
    def test_every_listener_with_every_offer(self):
        expected = {"browser": "http/1.1", "http/1.1 only": "http/1.1", "no ALPN": None}
        for name, listening in self.listeners():
            port = yield listening
            for offer, alpn in ALPN_OFFERS.items():
                selected, echoed = yield self.exchange(port, alpn)
                self.assertEqual((selected, echoed), (expected[offer], b"ping\r\n"),
                                 f"{name}, {offer}")

    @defer.inlineCallbacks
    def test_h2_only_is_refused_cleanly(self):
        errors = capture_log(self, lambda event: event.get("log_level") == LogLevel.critical)
        for name, listening in self.listeners():
            port = yield listening
            with self.assertRaises(ssl.SSLError, msg=name) as caught:
                yield self.exchange(port, ["h2"])
            # Python's ssl has no reason code for this alert, only its text.
            self.assertIn("alert no application protocol", str(caught.exception), name)
            # The listener still serves the next client.
            selected, _ = yield self.exchange(port, ["h2", "http/1.1"])
            self.assertEqual(selected, "http/1.1", name)
        self.assertEqual(errors, [])


class ConfigErrorTests(unittest.TestCase):
    """Every unusable configuration is refused with a message naming the problem."""

    def setUp(self):
        self.pki = PKI.create()
        self.files = self.pki.write(self.mktemp())
        self.cert, self.key, self.chain = (
            str(self.files.fullchain),
            str(self.files.key),
            str(self.files.chain),
        )

    def write(self, name, content: bytes) -> str:
        path = os.path.join(self.files.directory, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def assert_error(self, expected, cert, key, chain=None):
        """Both the one-shot loader and ReloadableTLS refuse, with ``expected`` in the text."""
        for load in (load_certificate_options, ReloadableTLS):
            error = self.assertRaises(TLSConfigError, load, cert, key, chain)
            self.assertIn(expected, str(error))
            self.assertIsInstance(error, ValueError)

    def test_valid_configuration_loads(self):
        """Control: the files the other cases start from are fine."""
        load_certificate_options(self.cert, self.key, self.chain)

    def test_certificate_missing(self):
        self.assert_error("'/nonexistent/cert.pem' does not exist", "/nonexistent/cert.pem", self.key)

    def test_key_missing(self):
        self.assert_error("'/nonexistent/key.pem' does not exist", self.cert, "/nonexistent/key.pem")

    def test_chain_missing(self):
        self.assert_error("does not exist", self.cert, self.key, "/nonexistent/chain.pem")

    def test_unreadable(self):
        self.assert_error("is a directory", str(self.files.directory), self.key)

    def test_not_pem(self):
        path = self.write("garbage.pem", b"\x30\x82\x01\x0a binary DER-ish bytes")
        self.assert_error("is not a PEM file", path, self.key)

    def test_no_certificate_in_file(self):
        self.assert_error("contains no certificate", self.key, self.key)
        self.assert_error("are --tls-cert and --tls-key swapped?", self.key, self.key)

    def test_no_certificate_in_chain_file(self):
        self.assert_error("TLS chain file", self.cert, self.key, self.key)

    def test_malformed_certificate(self):
        path = self.write(
            "bad.pem", b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
        )
        self.assert_error("malformed", path, self.key)

    def test_not_a_private_key(self):
        self.assert_error("is not a private key", self.cert, self.cert)

    def test_encrypted_key(self):
        from cryptography.hazmat.primitives import serialization

        encrypted = self.files.leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.assert_error("encrypted", self.cert, self.write("enc.pem", encrypted))

    def test_key_does_not_match(self):
        other = self.write("other.pem", pem_private_key(self.pki.issue_leaf().key))
        self.assert_error("does not match the certificate", self.cert, other)

    def test_combined_cert_and_key_file(self):
        """Control: one PEM file holding certificate and key serves as both."""
        combined = self.write(
            "combined.pem", self.files.fullchain.read_bytes() + self.files.key.read_bytes()
        )
        load_certificate_options(combined, combined)

    def test_cert_without_key(self):
        error = self.assertRaises(TLSConfigError, tls_from_options, self.cert, None)
        self.assertIn("--tls-cert was given without --tls-key", str(error))
        self.assertRaises(TLSConfigError, load_certificate_options, self.cert, None)

    def test_key_without_cert(self):
        error = self.assertRaises(TLSConfigError, tls_from_options, None, self.key)
        self.assertIn("--tls-key was given without --tls-cert", str(error))

    def test_chain_without_cert(self):
        error = self.assertRaises(TLSConfigError, tls_from_options, None, None, self.chain)
        self.assertIn("--tls-chain needs", str(error))

    def test_no_tls_options(self):
        self.assertIsNone(tls_from_options(None, None, None))
        self.assertIsInstance(tls_from_options(self.cert, self.key), ReloadableTLS)


class ReloadTests(TLSTestCase):
    """reload(): new handshakes get new files, open connections are untouched."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.errors = capture_log(
            self,
            lambda event: event.get("log_level") == LogLevel.error
            and event.get("log_namespace") == "signaling.tls",
        )
        self.tls = ReloadableTLS(str(self.files.fullchain), str(self.files.key))
        self.port = yield self.serve(self.tls)

    def renew(self):
        """Replace the files in place with a new leaf, as a renewal does."""
        renewed = self.pki.write(self.files.directory, common_name="renewed")
        self.assertNotEqual(renewed.leaf.serial, self.files.leaf.serial)
        return renewed

    @defer.inlineCallbacks
    def test_reload_new_certificate_for_new_clients(self):
        old_client = yield self.assert_verified_exchange(self.port, self.files.leaf.serial)
        renewed = self.renew()
        self.assertTrue(self.tls.reload())
        self.assertEqual(self.tls.certificate.serial_number, renewed.leaf.serial)
        new_client = yield self.assert_verified_exchange(self.port, renewed.leaf.serial)
        subject = new_client.transport.getPeerCertificate().to_cryptography().subject
        self.assertIn("CN=renewed", subject.rfc4514_string())
        reply = yield old_client.exchange(b"still here")
        self.assertEqual(reply, b"still here")
        self.assertEqual(old_client.peer_serial(), self.files.leaf.serial)
        self.assertEqual(self.errors, [])

    @defer.inlineCallbacks
    def test_failed_reload_keeps_old_certificate(self):
        old_client = yield self.assert_verified_exchange(self.port, self.files.leaf.serial)
        self.files.key.write_bytes(pem_private_key(self.pki.issue_leaf().key))
        self.assertFalse(self.tls.reload())
        self.assertEqual(len(self.errors), 1)
        self.assertIn("does not match", self.errors[0]["reason"])
        yield self.assert_verified_exchange(self.port, self.files.leaf.serial)
        reply = yield old_client.exchange(b"still here")
        self.assertEqual(reply, b"still here")

    @defer.inlineCallbacks
    def test_failed_reload_with_missing_file(self):
        os.remove(self.files.fullchain)
        self.assertFalse(self.tls.reload())
        self.assertEqual(len(self.errors), 1)
        self.assertIn("does not exist", self.errors[0]["reason"])
        yield self.assert_verified_exchange(self.port, self.files.leaf.serial)
