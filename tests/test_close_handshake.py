"""
A client the server closes gets time to answer the close frame: at least a
second before the TCP connection is cut. Autobahn's timers round deadlines
down to a whole second, so with a one-second timeout a connection closed
just before a whole second was cut (with a reset) a few milliseconds later,
and a client whose close reply met the reset could lose what came with the
close (the WebSocket state machine saw clients lose ``server-shutdown``).
"""

from __future__ import annotations

import base64
import json
import os

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from helpers import ServerTestCase, pause, wait_for


class SilentClient(protocol.Protocol):
    """
    A WebSocket client that reads everything and never answers a close frame
    (a client on a slow network, as far as the server can tell).
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost_at: float | None = None

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16))
        self.transport.write(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def send_text(self, message: dict) -> None:
        payload = json.dumps(message).encode()
        assert len(payload) < 126
        # Masked with the all-zero key: the payload goes as it is.
        self.transport.write(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost_at = reactor.seconds()


class CloseHandshakeTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_a_closed_client_has_a_second_to_answer(self):
        old = SilentClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), old)
        yield wait_for(lambda: b"\r\n\r\n" in old.received, "the handshake")
        old.send_text({"type": "register", "peerId": "ann"})
        yield wait_for(lambda: b"registered" in old.received, "registered")
        # Just before a whole second, where a rounded-down deadline is closest.
        yield pause((0.8 - reactor.seconds() % 1.0) % 1.0)
        closed_at = reactor.seconds()
        yield self.register("ann")
        yield wait_for(lambda: old.lost_at is not None, "the old connection to be cut")
        self.assertIn(b"\x88", old.received, "no close frame came")
        self.assertIn(b"replaced", old.received)
        self.assertGreaterEqual(old.lost_at - closed_at, 0.9)
