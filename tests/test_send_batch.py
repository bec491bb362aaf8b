"""
Frames sent while one read is handled leave in one write per connection
(``internals._SendBatch``). Over real sockets nothing may change for
clients: every message arrives, in order, and frames that precede a close
arrive before it.
"""

from __future__ import annotations

import json

from twisted.internet import defer

from helpers import ServerTestCase, capture_log
from test_public_path import client_frame


def frames(*messages: dict) -> bytes:
    """The masked frames of ``messages``, to be written in one piece."""
    return b"".join(client_frame(json.dumps(message).encode()) for message in messages)


class OrderTests(ServerTestCase):
    config = {"rate_limit": 0}

    @defer.inlineCallbacks
    def test_one_read_for_two_peers_arrives_whole_and_in_order(self):
        alice = yield self.register("alice")
        bob = yield self.register("bob")
        carol = yield self.register("carol")
        yield bob.expect("peer-status")
        sent = [{"type": "offer", "to": ("bob", "carol")[n % 2], "n": n} for n in range(300)]
        sent.insert(150, {"type": "ping"})
        alice.transport.write(frames(*sent))
        for peer, first in ((bob, 0), (carol, 1)):
            numbers = []
            for _ in range(150):
                offer = yield peer.expect("offer", skip=("peer-status",))
                numbers.append(offer["n"])
            self.assertEqual(numbers, list(range(first, 300, 2)))
        yield alice.expect("pong", skip=("peer-status",))


class CloseTests(ServerTestCase):
    config = {"rate_limit": 1, "rate_burst": 2}  # register, then one ping

    @defer.inlineCallbacks
    def test_replies_leave_before_the_close_that_follows_them(self):
        client = yield self.register("alice")
        client.transport.write(frames(*[{"type": "ping"}] * 60))
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 1008)
        received = [json.loads(frame)["type"] for frame in client.frames[1:]]  # after "registered"
        self.assertEqual(received[0], "pong")
        self.assertGreater(len(received), 1)
        self.assertEqual(set(received[1:]), {"error"})

    @defer.inlineCallbacks
    def test_what_follows_the_close_is_not_read(self):
        """Once the server closes for the rate limit, later messages are neither answered nor logged."""
        limits = capture_log(self, lambda e: e.get("event") == "limit")
        client = yield self.register("alice")
        big = {"type": "ping", "pad": "p" * 30000}  # past the fast path's read, into Autobahn's
        for _ in range(3):
            client.transport.write(frames(*[big] * 20))
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 1008)
        self.assertEqual([e["limit"] for e in limits], ["rate"])
