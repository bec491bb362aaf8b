"""
:mod:`signaling.internals`, the door to Autobahn's private state: its
version and attribute checks, and its fast paths against Autobahn's own
frame handling.

Each inbound case feeds the same wire bytes to two connections, one with the
fast path and one with it switched off, and compares what the hub was handed
and every byte written back (replies and close frames). Outbound frames are
compared byte for byte with Autobahn's ``sendMessage``. The whole protocol
over real sockets on both paths is compared in ``test_public_path.py``.
"""

from __future__ import annotations

import json
import os
import random
import struct

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from autobahn.websocket.protocol import WebSocketProtocol

from signaling import internals
from signaling.config import Config
from signaling.hub import Hub
from signaling.internals import (
    FastSignalingFactory,
    FastSignalingProtocol,
    text_frame,
    unmask,
)
from signaling.admission import RequestLimits
from signaling.limits import ConnectionGate
from signaling.metrics import Metrics
from signaling.origins import OriginPolicy
from signaling.proxies import ProxyPolicy
from signaling.store import MemoryStore

HANDSHAKE = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 127.0.0.1:9001\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)

LENGTHS = (0, 1, 125, 126, 127, 65535, 65536)


class Transport(StringTransport):
    """A string transport that, like TCP, tolerates a spare unregisterProducer."""

    def unregisterProducer(self) -> None:
        self.producer = None


class Recording(FastSignalingProtocol):
    """Records what reaches the message handler, as (bytes, isBinary)."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[bytes, bool]] = []

    def onMessage(self, payload, isBinary):
        raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        self.received.append((raw, isBinary))
        super().onMessage(payload, isBinary)


class AutobahnOnly(Recording):
    """The same connection with every frame left to Autobahn."""

    def onOpen(self) -> None:
        super().onOpen()
        self._fast_limit = 0


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A client frame; masked with a random key unless ``mask`` is given."""
    if mask is None:
        mask = os.urandom(4)
    n = len(payload)
    head = bytes((0x80 * fin | opcode,))
    if n <= 125:
        head += bytes((0x80 | n,))
    elif n <= 0xFFFF:
        head += bytes((0x80 | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((0x80 | 127,)) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def unmasked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame without a mask (a protocol violation)."""
    return bytes((0x80 | opcode, len(payload))) + payload


def text(message: object, **kw) -> bytes:
    return frame(1, json.dumps(message).encode(), **kw)


def binary(message: object, **kw) -> bytes:
    return frame(2, json.dumps(message).encode(), **kw)


def connect(protocol_class=Recording, max_message_size: int = 65536):
    """A connection past the opening handshake, on a fresh hub with a fixed clock."""
    clock = task.Clock()
    clock.advance(1000)
    config = Config(db=":memory:", rate_limit=0)
    metrics = Metrics(process=False)
    hub = Hub(config, clock, MemoryStore(), metrics)
    gate = ConnectionGate(OriginPolicy(), ProxyPolicy(), 0, 0)
    factory = FastSignalingFactory(
        hub, gate, metrics, max_message_size, max_message_size + 16384, 1 << 20,
        RequestLimits(16384, 1024, 10.0), clock
    )
    factory.protocol = protocol_class
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    proto.dataReceived(HANDSHAKE)
    assert proto.state == WebSocketProtocol.STATE_OPEN, transport.value()
    transport.clear()
    return proto, transport


def run(chunks, max_message_size: int = 65536, protocol_class=Recording):
    """Feed ``chunks``; return (messages handed on, bytes written, final state)."""
    proto, transport = connect(protocol_class, max_message_size)
    for chunk in chunks:
        proto.dataReceived(chunk)
    result = (proto.received, transport.value(), proto.state)
    proto.connectionLost(Failure(ConnectionDone()))
    return result


def close_code(written: bytes) -> int | None:
    """The status code of the first close frame in server output, if any."""
    pos = 0
    while pos + 2 <= len(written):
        opcode = written[pos] & 0x0F
        length = written[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            length = struct.unpack("!H", written[start:start + 2])[0]
            start += 2
        elif length == 127:
            length = struct.unpack("!Q", written[start:start + 8])[0]
            start += 8
        if opcode == 8:
            return struct.unpack("!H", written[start:start + 2])[0]
        pos = start + length
    return None


class FastPathSameAsAutobahn(unittest.TestCase):
    """Inbound: the fast path is unobservable."""

    def assert_same(self, chunks, max_message_size: int = 65536):
        fast = run(chunks, max_message_size, Recording)
        slow = run(chunks, max_message_size, AutobahnOnly)
        self.assertEqual(fast[0], slow[0], "messages handed to the hub differ")
        self.assertEqual(fast[1], slow[1], "bytes written back differ")
        self.assertEqual(fast[2], slow[2], "connection state differs")
        return fast

    def stream(self) -> bytes:
        return b"".join([
            text({"type": "ping"}),
            binary({"type": "ping", "messageId": "b"}),
            text({"type": "register", "peerId": "alice"}),
            frame(1, b"not json"),
            frame(2, b"\xff\xfe not utf-8"),
            frame(1, b""),
            text({"type": "offer", "to": "nobody-here", "messageId": "m1", "sdp": "x" * 200}),
            text({"type": "ping", "pad": "y" * 300}, mask=b"\x00\x00\x00\x00"),
        ])

    def test_several_frames_in_one_chunk(self) -> None:
        received, written, state = self.assert_same([self.stream()])
        self.assertEqual(len(received), 8)
        self.assertEqual(state, WebSocketProtocol.STATE_OPEN)
        self.assertIn(b'"type":"pong"', written)

    def test_split_at_every_byte_boundary(self) -> None:
        data = self.stream()
        whole = run([data])
        for i in range(1, len(data)):
            self.assertEqual(run([data[:i], data[i:]]), whole, f"split at {i}")

    def test_one_byte_at_a_time(self) -> None:
        data = self.stream()
        self.assert_same([data[i:i + 1] for i in range(len(data))])

    def test_payload_lengths(self) -> None:
        for n in LENGTHS[:-1]:
            body = json.dumps({"type": "ping", "pad": ""}).encode()
            body = body[:-2] + b"z" * max(0, n - len(body)) + b'"}' if n >= len(body) else b"x" * n
            received, _, _ = self.assert_same([frame(1, body), frame(2, body)])
            self.assertEqual(received, [(body, False), (body, True)], n)

    def test_random_masks(self) -> None:
        rng = random.Random(7)
        chunks = [
            text({"type": "ping", "n": i}, mask=rng.randbytes(4)) for i in range(50)
        ]
        received, _, _ = self.assert_same([b"".join(chunks)])
        self.assertEqual(len(received), 50)

    def test_fragmented_message(self) -> None:
        body = json.dumps({"type": "ping", "messageId": "frag"}).encode()
        chunks = [
            text({"type": "ping"})
            + frame(1, body[:5], fin=False)
            + frame(0, body[5:12], fin=False)
            + frame(9, b"hi")  # a ping between fragments
            + frame(0, body[12:], fin=True)
            + text({"type": "ping", "messageId": "after"})
        ]
        received, written, _ = self.assert_same(chunks)
        self.assertEqual([r[0] for r in received][1], body)
        self.assertEqual(len(received), 3)
        self.assertIn(b"\x8a\x02hi", written)

    def test_control_frames_interleaved(self) -> None:
        chunks = [
            text({"type": "ping", "messageId": "1"})
            + frame(9, b"p1")
            + text({"type": "ping", "messageId": "2"})
            + frame(10, b"unsolicited")
            + binary({"type": "ping", "messageId": "3"})
            + frame(8, struct.pack("!H", 1000) + b"bye")
            + text({"type": "ping", "messageId": "4"})
        ]
        received, written, state = self.assert_same(chunks)
        self.assertIn(b"\x8a\x02p1", written)
        self.assertEqual(close_code(written), 1000)
        self.assertNotEqual(state, WebSocketProtocol.STATE_OPEN)

    def test_oversize_closes_1009(self) -> None:
        for size in (201, 300, 70000):
            chunks = [text({"type": "ping"}) + frame(1, b"x" * size) + text({"type": "ping"})]
            received, written, _ = self.assert_same(chunks, max_message_size=200)
            self.assertEqual(len(received), 1)
            self.assertEqual(close_code(written), 1009)

    def test_largest_allowed_message(self) -> None:
        body = b'{"type":"ping","p":"' + b"q" * 178 + b'"}'
        self.assertEqual(len(body), 200)
        received, written, _ = self.assert_same([frame(1, body)], max_message_size=200)
        self.assertEqual(received, [(body, False)])
        self.assertIsNone(close_code(written))

    def test_invalid_utf8_text_closes_1007(self) -> None:
        chunks = [text({"type": "ping"}) + frame(1, b'{"type":"\xed\xa0\x80"}') + text({"type": "ping"})]
        received, written, _ = self.assert_same(chunks)
        self.assertEqual(len(received), 1)
        self.assertEqual(close_code(written), 1007)

    def test_invalid_utf8_binary_is_an_error_message(self) -> None:
        received, written, state = self.assert_same([frame(2, b"\xc3\x28")])
        self.assertIn(b"INVALID_MESSAGE", written)
        self.assertEqual(state, WebSocketProtocol.STATE_OPEN)

    def test_unmasked_frame_is_a_protocol_error(self) -> None:
        chunks = [text({"type": "ping"}) + unmasked_frame(1, b'{"type":"ping"}')]
        _, written, _ = self.assert_same(chunks)
        self.assertEqual(close_code(written), 1002)

    def test_reserved_bits_and_opcodes(self) -> None:
        for first in (0xC1, 0x83, 0x8B):
            bad = bytes((first,)) + frame(1, b'{"type":"ping"}')[1:]
            _, written, _ = self.assert_same([text({"type": "ping"}) + bad])
            self.assertEqual(close_code(written), 1002)

    def test_non_minimal_length(self) -> None:
        payload = b'{"type":"ping"}'
        mask = b"\x01\x02\x03\x04"
        bad = b"\x81\xfe" + struct.pack("!H", len(payload)) + mask + unmask(payload, mask)
        _, written, _ = self.assert_same([bad])
        self.assertEqual(close_code(written), 1002)


class OutboundFrames(unittest.TestCase):
    """Outbound: the same bytes as Autobahn's sendMessage."""

    def test_text_frame_matches_send_message(self) -> None:
        for n in LENGTHS:
            payload = bytes(random.Random(n).randrange(32, 127) for _ in range(n))
            proto, transport = connect(AutobahnOnly)
            proto.sendMessage(payload)
            self.assertEqual(text_frame(payload), transport.value(), n)
            proto.connectionLost(Failure(ConnectionDone()))

    def test_send_matches_send_message(self) -> None:
        for n in LENGTHS:
            payload = b"s" * n
            fast, fast_transport = connect(Recording)
            slow, slow_transport = connect(AutobahnOnly)
            self.assertGreater(fast._fast_limit, 0)
            fast.send(payload)
            slow.send(payload)
            self.assertEqual(fast_transport.value(), slow_transport.value(), n)
            for proto in (fast, slow):
                proto.connectionLost(Failure(ConnectionDone()))

    def test_fan_out_reuses_frame_for_the_same_payload_only(self) -> None:
        a, ta = connect()
        b, tb = connect()
        first = b'{"type":"peer-status","n":1}'
        second = b'{"type":"peer-status","n":2}'
        a.send(first)
        b.send(first)
        a.send(second)
        b.send(bytes(second))
        self.assertEqual(ta.value(), text_frame(first) + text_frame(second))
        self.assertEqual(tb.value(), ta.value())
        for proto in (a, b):
            proto.connectionLost(Failure(ConnectionDone()))

    def test_closed_connection_writes_nothing(self) -> None:
        proto, transport = connect()
        proto.close(1000, "done")
        transport.clear()
        proto.send(b'{"type":"ping"}')
        self.assertEqual(transport.value(), b"")
        proto.connectionLost(Failure(ConnectionDone()))

    def test_handshake_leftovers_dropped(self) -> None:
        proto, _ = connect()
        for name in ("http_request_data", "http_headers", "http_response_data"):
            self.assertNotIn(name, vars(proto))
        proto.connectionLost(Failure(ConnectionDone()))

    def test_unmask(self) -> None:
        rng = random.Random(3)
        for n in (0, 1, 3, 4, 5, 127, 1000):
            data = rng.randbytes(n)
            mask = rng.randbytes(4)
            expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            self.assertEqual(unmask(data, mask), expected)
        self.assertEqual(unmask(b"abc", b"\x00\x00\x00\x00"), b"abc")


class EncodeTests(unittest.TestCase):
    """The fast encoder writes the same JSON as the standard one, exactly where it matters."""

    def test_same_bytes_as_json_encoder_without_floats(self) -> None:
        reference = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        from signaling.messages import encode

        for message in (
            {"type": "offer", "sdp": "v=0\r\n\u00e9\u2028\U0001f600\x01\"\\", "n": [1, -7]},
            {"type": "x", "nested": {"a": [{"b": None, "c": True}]}, "big": 10**30},
            {},
        ):
            self.assertEqual(encode(message), reference.encode(message).encode("utf-8"))

    def test_same_object_with_floats(self) -> None:
        from signaling.messages import encode

        message = {"type": "x", "f": [2.5, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308]}
        self.assertEqual(json.loads(encode(message)), message)

    def test_lone_surrogate_is_escaped(self) -> None:
        from signaling.messages import encode

        lone = {"type": "lone", "s": "\ud800"}
        ascii_reference = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
        self.assertEqual(encode(lone), ascii_reference.encode(lone).encode("ascii"))

    def test_non_finite_numbers_never_get_in(self) -> None:
        from signaling.messages import ProtocolError, decode

        for text in ('{"type":"x","v":NaN}', '{"type":"x","v":Infinity}', '{"type":"x","v":1e400}'):
            with self.assertRaises(ProtocolError):
                decode(text)

    def test_unserializable_refused(self) -> None:
        from signaling.messages import encode

        with self.assertRaises(TypeError):
            encode({"type": "x", "v": object()})


class ConnectionSetupTests(unittest.TestCase):
    """Autobahn's eager debug formatting is deferred and still gives the same text."""

    def test_debug_helpers_lazy_with_same_text(self) -> None:
        import pprint

        import autobahn.twisted.websocket as autobahn_twisted
        import autobahn.websocket.protocol as autobahn_protocol
        from autobahn.util import hltype, hlval

        self.assertTrue(internals.available())  # swaps the helpers
        proto, _ = connect()
        value = {"k": [1, 2]}
        self.assertEqual(str(autobahn_protocol.pformat(value)), pprint.pformat(value))
        self.assertEqual(str(autobahn_protocol.hltype(connect)), hltype(connect))
        self.assertEqual(str(autobahn_twisted.hlval("peer")), hlval("peer"))
        self.assertEqual("{x}".format(x=autobahn_twisted.hltype(connect)), hltype(connect))
        proto.connectionLost(Failure(ConnectionDone()))



class CheckTests(unittest.TestCase):
    """The checks that decide between the fast path and the public API."""

    def setUp(self) -> None:
        self.addCleanup(setattr, internals, "TESTED_VERSIONS", internals.TESTED_VERSIONS)
        self.addCleanup(internals._checked.clear)

    def test_installed_versions_pass(self) -> None:
        self.assertEqual(internals.problems(), [])

    def test_untested_version_is_a_problem(self) -> None:
        internals.TESTED_VERSIONS = {"autobahn": ("1.0",), "twisted": ("1.0",)}
        found = internals.problems()
        self.assertEqual(len(found), 2)
        self.assertIn("is not a tested version (1.0)", found[0])

    def test_missing_attribute_is_a_problem(self) -> None:
        self.patch(internals, "_OPEN_CONNECTION_ATTRIBUTES", ("state", "no_such_thing"))
        self.assertEqual(
            internals.problems(), ["an open connection has no attribute 'no_such_thing'"]
        )

    def test_problems_give_one_warning_and_the_public_path(self) -> None:
        from twisted.logger import Logger, LogPublisher

        internals._checked.clear()
        internals.TESTED_VERSIONS = {"autobahn": ("1.0",), "twisted": ("26.10",)}
        events: list[dict] = []
        log = Logger(observer=LogPublisher(events.append))
        self.assertFalse(internals.available(log))
        self.assertFalse(internals.available(log))
        self.assertEqual(len(events), 1)
        self.assertIn("public API", events[0]["log_format"])
        self.assertIn("autobahn", events[0]["problems"])
