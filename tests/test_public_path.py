"""
The protocol on Autobahn's public API (no :mod:`signaling.internals`): the
protocol test cases run again with the fast path off, and one scripted
session over raw sockets must put the same bytes on the wire on both paths.
"""

from __future__ import annotations

import json
import struct

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

import test_errors
import test_offline
import test_peers
import test_rooms
import test_security
from helpers import WAIT, pause, settle_autobahn_timers, start_service


class RoomTestsOnPublicPath(test_rooms.RoomTests):
    fast_path = False


class RoomLimitTestsOnPublicPath(test_rooms.RoomLimitTests):
    fast_path = False


class RegisterTestsOnPublicPath(test_peers.RegisterTests):
    fast_path = False


class DirectedTestsOnPublicPath(test_peers.DirectedTests):
    fast_path = False


class TakeoverTestsOnPublicPath(test_peers.TakeoverTests):
    fast_path = False


class OfflineTestsOnPublicPath(test_offline.OfflineTests):
    fast_path = False


class ErrorTestsOnPublicPath(test_errors.ErrorTests):
    fast_path = False


class RateLimitTestsOnPublicPath(test_security.RateLimitTests):
    fast_path = False


class SlowConsumerTestsOnPublicPath(test_security.SlowConsumerTests):
    fast_path = False


class HS256TestsOnPublicPath(test_security.HS256Tests):
    fast_path = False


HANDSHAKE = (
    b"GET /room HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (all-zero mask, so the payload reads as is)."""
    n = len(payload)
    if n <= 125:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
    return head + b"\x00\x00\x00\x00" + payload


class Wire(protocol.Protocol):
    """A raw TCP client that records every byte the server sends."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class SameBytesOnTheWire(unittest.TestCase):
    """A scripted session gives byte-identical server output on both paths."""

    @defer.inlineCallbacks
    def session(self, fast_path: bool) -> defer.Deferred:
        from twisted.internet import task

        clock = task.Clock()
        clock.advance(1234.5)
        service = start_service(self, fast_path=fast_path, clock=clock)
        self.assertEqual(service.fast_path, fast_path)
        port = service.ports()[0].getHost().port
        creator = protocol.ClientCreator(reactor, Wire)
        alice = yield creator.connectTCP("127.0.0.1", port)
        bob = yield creator.connectTCP("127.0.0.1", port)
        self.addCleanup(alice.transport.abortConnection)
        self.addCleanup(bob.transport.abortConnection)
        big = "x" * 3000
        script = [
            (alice, HANDSHAKE),
            (bob, HANDSHAKE),
            (alice, {"type": "register", "peerId": "alice", "deviceType": "web"}),
            (bob, {"type": "register", "peerId": "bob"}),
            (alice, {"type": "offer", "to": "bob", "sdp": big, "from": "mallory"}),
            (bob, {"type": "answer", "to": "alice", "sdp": "v=0"}),
            (alice, {"type": "message", "to": "carol", "messageId": "m1", "payload": "hi"}),
            (alice, {"type": "join-room", "roomId": "r", "sender": "alice"}),
            (bob, {"type": "join-room", "roomId": "r", "sender": "bob"}),
            (bob, {"type": "chat", "roomId": "r", "message": "hello"}),
            (alice, {"type": "get-peers"}),
            (alice, {"type": "get-peers", "limit": 1}),
            (alice, b"not json"),
            (bob, {"type": "leave-room", "roomId": "nope"}),
            (bob, {"type": "register", "peerId": "eve"}),
            (alice, {"type": "ping"}),
            (alice, b'{"type":"ping","binary":true}'),
            (bob, {"type": "leave-room", "roomId": "r"}),
        ]
        for client, step in script:
            if isinstance(step, bytes) and step.startswith(b"GET"):
                data = step
            elif isinstance(step, bytes):
                data = client_frame(step, opcode=2 if b"binary" in step else 1)
            else:
                data = client_frame(json.dumps(step).encode())
            client.transport.write(data)
            yield self.settled(alice, bob)
        bob.transport.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # close 1000
        yield self.settled(alice, bob)
        return alice.received, bob.received

    @defer.inlineCallbacks
    def settled(self, *clients: Wire) -> defer.Deferred:
        """Wait until no client has received anything for a moment."""
        deadline = reactor.seconds() + WAIT
        seen = None
        while reactor.seconds() < deadline:
            yield pause(0.05)
            now = tuple(len(c.received) for c in clients)
            if now == seen:
                return
            seen = now
        raise AssertionError("the server kept sending")

    @defer.inlineCallbacks
    def test_same_bytes(self) -> None:
        self.addCleanup(settle_autobahn_timers)
        fast = yield self.session(True)
        public = yield self.session(False)
        self.assertEqual(fast[0], public[0], "alice's bytes differ")
        self.assertEqual(fast[1], public[1], "bob's bytes differ")
        self.assertIn(b"101 Switching Protocols", fast[0])
        self.assertIn(b'"sender":"bob"', fast[0])
        self.assertIn(b'"queued":true', fast[0])
        self.assertIn(b"\x88\x02\x03\xe8", fast[1])  # bob's close echoed
