"""
What a hostile client used to break (issue: hardening), over real sockets:
large offline backlogs, messages that grow past the size limit on the way
out, replies too large to send, spoofed senders and server-only types, a
takeover escaping a token's rooms, bad cursors, and error logs that grew
faster than the client sent.
"""

from __future__ import annotations

import json
import socket

import jwt
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from helpers import Client, ServerTestCase, capture_log, pause, wait_for

SECRET = "h" * 32


class SlowReader(Client):
    """A client that reads in short bursts with pauses in between."""

    def onOpen(self) -> None:
        super().onOpen()
        # A small receive window, as a phone on a slow link has: what the
        # server has handed to the kernel but the client has not read stays
        # small, so a break midway leaves most of a large backlog unsent.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self._reading = task.LoopingCall(self._toggle)
        self._paused = False
        self._reading.start(0.02, now=False)

    def _toggle(self) -> None:
        if self.transport is None or self.closed.called:
            if self._reading.running:
                self._reading.stop()
            return
        if self._paused:
            self.transport.resumeProducing()
        else:
            self.transport.pauseProducing()
        self._paused = not self._paused

    def onClose(self, wasClean, code, reason) -> None:
        if self._reading.running:
            self._reading.stop()
        super().onClose(wasClean, code, reason)


class BacklogTests(ServerTestCase):
    """A large backlog reaches a slowly reading client, all of it, once, in order."""

    config = {"offline_max": 5000, "rate_limit": 0, "max_send_buffer": 256 * 1024}

    @defer.inlineCallbacks
    def fill(self, count: int, size: int) -> defer.Deferred:
        sender = yield self.register("sender")
        for i in range(count):
            sender.send({"type": "message", "to": "zoe", "messageId": f"m{i}",
                         "payload": "x" * size})
        for _ in range(count):
            yield sender.expect("peer-offline")
        self.assertEqual(self.store.count, count)

    @defer.inlineCallbacks
    def drain_backlog(self, count: int, ack: bool = False) -> defer.Deferred:
        zoe = yield self.connect(client_class=SlowReader)
        zoe.send({"type": "register", "peerId": "zoe", **({"ack": True} if ack else {})})
        yield zoe.expect("registered")
        ids = []
        for _ in range(count):
            message = yield zoe.expect("offline-message", timeout=30)
            ids.append(message["messageId"])
        self.assertEqual(ids, [f"m{i}" for i in range(count)])
        self.assertIsNone(zoe.close_code)
        return zoe

    @defer.inlineCallbacks
    def test_100_messages_of_40_kb(self):
        yield self.fill(100, 40_000)
        yield self.drain_backlog(100)
        yield wait_for(lambda: self.store.count == 0, "the backlog to be removed")

    @defer.inlineCallbacks
    def test_5000_messages_of_1_kb(self):
        yield self.fill(5000, 1000)
        yield self.drain_backlog(5000)
        yield wait_for(lambda: self.store.count == 0, "the backlog to be removed")

    @defer.inlineCallbacks
    def test_ack_mode_gets_everything_and_keeps_it_until_acknowledged(self):
        yield self.fill(100, 40_000)
        zoe = yield self.drain_backlog(100, ack=True)
        self.assertEqual(self.store.count, 100)
        zoe.send({"type": "ack", "messageIds": [f"m{i}" for i in range(100)]})
        yield self.roundtrip(zoe)
        self.assertEqual(self.store.count, 0)

    @defer.inlineCallbacks
    def test_a_connection_lost_midway_keeps_the_rest(self):
        """
        What had not left the server's buffer when the connection broke stays
        stored, and is delivered, in order, at the next registration. (What
        was already in the kernel's socket buffers is gone with the
        connection, as for any message: ack mode is the at-least-once way.)
        """
        yield self.fill(100, 40_000)
        zoe = yield self.connect(client_class=SlowReader)
        zoe.send({"type": "register", "peerId": "zoe"})
        yield zoe.expect("registered")
        for _ in range(10):
            yield zoe.expect("offline-message", timeout=30)
        yield zoe.drop()
        yield wait_for(lambda: len(self.registry.sessions) == 1, "zoe to be gone")
        kept = self.store.count
        self.assertTrue(0 < kept < 90, kept)
        again = yield self.connect()
        again.send({"type": "register", "peerId": "zoe"})
        yield again.expect("registered")
        ids = []
        for _ in range(kept):
            ids.append((yield again.expect("offline-message", timeout=30))["messageId"])
        self.assertEqual(ids, [f"m{i}" for i in range(100 - kept, 100)])


class TrickleReader(protocol.Protocol):
    """
    A raw WebSocket client that reads at most ``chunk`` bytes every 50 ms
    straight from its socket (a phone on a slow link), counting the
    ``offline-message`` frames it got.
    """

    chunk = 8192

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.transport.stopReading()
        sock = self.transport.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.transport.write(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self._reading = task.LoopingCall(self._trickle)
        self._reading.start(0.05)

    def register(self, peer_id: str) -> None:
        payload = json.dumps({"type": "register", "peerId": peer_id}).encode()
        self.transport.write(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    def _trickle(self) -> None:
        try:
            data = self.transport.getHandle().recv(self.chunk)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.lost = True
            self._reading.stop()
            self.transport.abortConnection()
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True
        if self._reading.running:
            self._reading.stop()

    @property
    def offline_messages(self) -> int:
        return self.received.count(b'"type":"offline-message"')


class BacklogHeartbeatTests(ServerTestCase):
    """
    A peer reading a long backlog slowly is alive, though the server's ping
    waits behind the backlog and cannot be answered in time.
    """

    config = BacklogTests.config
    fill = BacklogTests.fill

    @defer.inlineCallbacks
    def read_backlog_slowly(self, server_send_buffer=None):
        """
        A backlog of 400 KB read at 160 KB/s, with a heartbeat sweep every half
        second; the reader must get all of it without being dropped.
        """
        yield self.fill(10, 40_000)
        zoe = TrickleReader()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), zoe)
        yield wait_for(lambda: b"\r\n\r\n" in zoe.received, "the handshake")
        if server_send_buffer is not None:
            [session] = [s for s in self.registry.sessions if not s.registered]
            session.conn.transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, server_send_buffer
            )
        zoe.register("zoe")
        for _ in range(60):
            self.clock.advance(self.service.config.heartbeat_interval)
            yield pause(0.5)
            if zoe.offline_messages == 10 or zoe.lost:
                break
        self.assertFalse(zoe.lost, "the reader was dropped")
        self.assertEqual(zoe.offline_messages, 10)
        zoe.transport.abortConnection()

    def test_the_backlog_waits_in_the_servers_buffer(self):
        # A small kernel send buffer: what the reader has not taken waits in
        # the server's own buffer, which drains now and then.
        return self.read_backlog_slowly(server_send_buffer=16384)

    def test_the_backlog_waits_in_the_kernel(self):
        # The whole backlog fits in the kernel's send buffer (it grows to
        # megabytes): the server's own buffer never fills, and only the
        # kernel's send queue shows that the reader is taking it.
        return self.read_backlog_slowly()


class PingFloodTests(ServerTestCase):
    """WebSocket ping frames are messages to the rate limit, and get no pong a client does not read."""

    config = {"rate_limit": 0, "max_send_buffer": 256 * 1024}

    @defer.inlineCallbacks
    def test_pongs_do_not_pile_up_for_a_client_that_does_not_read(self):
        client = yield self.register("flooder")
        server_side = self.registry.identities["flooder"].conn.transport
        client.transport.pauseProducing()  # reads nothing from now on
        buffered = []

        def measure():
            buffered.append(len(server_side.dataBuffer) - server_side.offset
                            + server_side._tempDataLen)

        sampler = task.LoopingCall(measure)
        sampler.start(0.01)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        for _ in range(40):
            for _ in range(5000):
                client.sendPing(b"p" * 125)
            yield pause(0.02)
        yield pause(0.5)
        sampler.stop()
        # Twisted's buffer pauses the connection's producer past 64 KiB; 20 MB
        # of pongs were asked for.
        self.assertLess(max(buffered), 1024 * 1024)



class PingRateTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_ping_frames_count_against_the_rate_limit(self):
        limits = capture_log(self, lambda e: e.get("event") == "limit")
        client = yield self.register("flooder")  # default limits: 100 a second, bursts of 200
        for _ in range(5000):
            client.sendPing(b"p")
        error = yield client.expect_error("RATE_LIMITED")
        self.assertIn("retryAfterMs", error)
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 1008)
        # Closed once, logged once: the pings after the close are not read.
        self.assertEqual([e["limit"] for e in limits], ["rate"])


class LargeMessageTests(ServerTestCase):
    """Messages near the size limit are delivered, or refused to their sender."""

    config = {"rate_limit": 0}

    @defer.inlineCallbacks
    def test_cjk_text_is_relayed_directly_to_a_room_and_offline(self):
        text = "漢" * 15000  # 45 KB of UTF-8; 90 KB as \\u escapes

        def utf8(message):
            return json.dumps(message, ensure_ascii=False).encode("utf-8")

        a = yield self.register("a")
        b = yield self.register("b")
        yield a.expect("peer-status")
        a.send(utf8({"type": "message", "to": "b", "payload": text}))
        self.assertEqual((yield b.expect("message", skip=("peer-status",)))["payload"], text)
        yield self.join("r", "a", a)
        yield self.join("r", "b", b)
        a.send(utf8({"type": "chat", "roomId": "r", "message": text}))
        self.assertEqual((yield b.expect("chat", skip=("user-joined",)))["message"], text)
        a.send(utf8({"type": "message", "to": "later", "messageId": "big", "payload": text}))
        yield a.expect("peer-offline", skip=("user-joined",))
        later = yield self.register("later")
        message = yield later.expect("offline-message")
        self.assertEqual(message["originalMessage"]["payload"], text)

    @defer.inlineCallbacks
    def test_a_message_that_grows_too_large_is_refused_to_its_sender(self):
        a = yield self.register("a")
        b = yield self.register("b")
        yield a.expect("peer-status")
        # 60 KB as sent; the server writes every relayed message anew, and
        # this one would grow to 220 KB: refused to its sender, nothing relayed.
        numbers = "[" + ",".join(["1e15"] * 12000) + "]"
        a.send('{"type":"offer","to":"b","messageId":"n1","x":' + numbers + "}")
        error = yield a.expect_error("INVALID_MESSAGE")
        self.assertEqual(error["messageId"], "n1")
        self.assertIn("too large", error["error"])
        # A fifth of it fits once grown, and arrives with the same values.
        a.send('{"type":"offer","to":"b","x":' + numbers[:12000] + "]}")
        offer = yield b.expect("offer")
        self.assertEqual(offer["x"], [1e15] * 2400)
        yield self.roundtrip(b)
        b.assert_quiet()

    @defer.inlineCallbacks
    def test_peer_list_pages_itself_to_fit(self):
        info = {"blob": "i" * 4000}
        for i in range(20):
            yield self.register(f"p{i:02d}", deviceInfo=info)
        me = yield self.register("me")
        seen = []
        me.send({"type": "get-peers"})
        page = yield me.expect("peers-list")
        while True:
            seen += [peer["peerId"] for peer in page["peers"]]
            self.assertEqual(page["total"], 20)
            if "nextCursor" not in page:
                break
            me.send({"type": "get-peers", "cursor": page["nextCursor"]})
            page = yield me.expect("peers-list")
        self.assertEqual(seen, [f"p{i:02d}" for i in range(20)])

class LargeRoomTests(ServerTestCase):
    """A room too large to list in one join-success refuses the join, whole."""

    config = {"max_message_size": 4096, "rate_limit": 0}

    @defer.inlineCallbacks
    def test_a_room_too_large_to_list_refuses_the_join(self):
        """The join whose join-success would not fit is refused, and changes nothing."""
        budget = self.service.config.max_outgoing_size
        joined = 0
        while True:
            client = yield self.connect()
            user = "m" * 124 + f"{joined:04d}"
            client.send({"type": "join-room", "roomId": "big", "sender": user})
            reply = yield client.next()
            if reply["type"] == "error":
                break
            self.assertLessEqual(len(json.dumps(reply, separators=(",", ":"))), budget)
            joined += 1
            self.assertLess(joined, 200, "the room never filled up")
        self.assertEqual(reply["code"], "ROOM_FULL")
        self.assertIn("too many members", reply["error"])
        self.assertNotIn(user, self.registry.rooms.get("big", {}))


class SpoofingTests(ServerTestCase):
    """The bound id is the sender, on every relayed message."""

    @defer.inlineCallbacks
    def test_room_client_reached_with_to_sees_the_real_sender(self):
        room_client = yield self.join("r", "alice")
        mallory = yield self.register("mallory")
        mallory.send({"type": "offer", "to": "alice", "sender": "bob", "from": "bob"})
        offer = yield room_client.expect("offer")
        self.assertEqual((offer["sender"], offer["from"]), ("mallory", "mallory"))

    @defer.inlineCallbacks
    def test_room_message_sets_from(self):
        alice = yield self.join("r", "alice")
        bob = yield self.join("r", "bob")
        bob.send({"type": "chat", "roomId": "r", "from": "carol", "sender": "carol"})
        chat = yield alice.expect("chat", skip=("user-joined",))
        self.assertEqual((chat["sender"], chat["from"]), ("bob", "bob"))

    @defer.inlineCallbacks
    def test_server_only_types_are_refused(self):
        victim = yield self.register("victim")
        mallory = yield self.register("mallory")
        yield victim.expect("peer-status")
        for type_ in ("server-shutdown", "peer-status", "registered", "offline-message",
                      "error", "join-success", "pong", "user-left"):
            mallory.send({"type": type_, "to": "victim", "reconnectAfterMs": 86400000})
            error = yield mallory.expect_error("INVALID_FIELD")
            self.assertIn("'type'", error["error"])
            mallory.send({"type": type_, "roomId": "r"})
            yield mallory.expect_error("INVALID_FIELD")
        yield self.roundtrip(victim)
        victim.assert_quiet()

    @defer.inlineCallbacks
    def test_duplicate_keys_reach_nobody(self):
        """
        JSON readers disagree on repeated keys (most keep the last, some the
        first, strict ones refuse the text): a sender must not be able to
        show a first-key reader another type or sender than the server saw.
        Every relayed message is written anew, each key once.
        """
        victim = yield self.register("victim")
        room_member = yield self.join("r", "member")
        mallory = yield self.register("mallory")
        yield self.join("r", "mallory", client=mallory)
        forged = ('"type":"server-shutdown","from":"boss","sender":"boss","reconnectAfterMs":1,'
                  '"type":"%s","from":"mallory","sender":"mallory"')
        mallory.send('{%s,"to":"victim"}' % (forged % "offer"))
        mallory.send('{%s,"roomId":"r"}' % (forged % "chat"))
        for client, type_ in ((victim, "offer"), (room_member, "chat")):
            yield client.expect(type_, skip=("peer-status", "user-joined"))
            frames = [json.loads(frame, object_pairs_hook=list) for frame in client.frames]
            [pairs] = [pairs for pairs in frames if ("type", type_) in pairs]
            keys = [key for key, _ in pairs]
            self.assertEqual(len(keys), len(set(keys)), pairs)
            self.assertEqual(dict(pairs)["from"], "mallory")
            self.assertEqual(keys.count("type"), 1)


class TakeoverGrantTests(ServerTestCase):
    config = {"auth_secret": SECRET}

    def token(self, **claims):
        return jwt.encode({"sub": "alice", **claims}, SECRET, algorithm="HS256")

    @defer.inlineCallbacks
    def test_the_newcomer_keeps_only_the_rooms_its_token_allows(self):
        old = yield self.connect(f"/?token={self.token()}")
        for room in ("secret", "lobby"):
            old.send({"type": "join-room", "roomId": room, "sender": "alice"})
            yield old.expect("join-success")
        watcher = yield self.connect(f"/?token={jwt.encode({'sub': 'w'}, SECRET, 'HS256')}")
        watcher.send({"type": "join-room", "roomId": "secret", "sender": "w"})
        yield watcher.expect("join-success")
        new = yield self.connect(f"/?token={self.token(rooms=['lobby'])}")
        new.send({"type": "register", "peerId": "alice"})
        yield new.expect("registered")
        self.assertEqual((yield old.wait_closed())[0], 4001)
        left = yield watcher.expect("user-left")
        self.assertEqual((left["userId"], left["roomId"]), ("alice", "secret"))
        new.send({"type": "chat", "roomId": "secret", "message": "hi"})
        yield new.expect_error("NOT_IN_ROOM")
        new.send({"type": "chat", "roomId": "lobby", "message": "hi"})
        self.assertEqual(set(self.registry.rooms), {"secret", "lobby"})
        self.assertNotIn("alice", self.registry.rooms["secret"])


class CursorAndLogTests(ServerTestCase):
    config = {"rate_limit": 0}

    @defer.inlineCallbacks
    def test_bad_cursors_are_invalid_fields(self):
        me = yield self.register("me")
        for cursor in ("²", "9" * 5000, "-1", "1.5", "٣"):
            me.send({"type": "get-peers", "cursor": cursor})
            yield me.expect_error("INVALID_FIELD")
        me.send({"type": "get-peers", "cursor": "0"})
        yield me.expect("peers-list")

    @defer.inlineCallbacks
    def test_error_logging_is_bounded_per_connection(self):
        errors = capture_log(self, lambda e: e.get("event") in ("error", "limit"))
        client = yield self.connect()
        big = "t" * 30000
        for _ in range(300):
            client.send({"type": big, "junk": "j" * 1000})
        for _ in range(300):
            yield client.expect_error("UNKNOWN_MESSAGE_TYPE")
        logged = [e for e in errors if e["event"] == "error"]
        self.assertLessEqual(len(logged), 25)
        self.assertEqual([e["limit"] for e in errors if e["event"] == "limit"], ["error_log"])
        text = json.dumps([{k: v for k, v in e.items() if isinstance(v, (str, dict))}
                           for e in logged], default=str)
        self.assertLess(len(text), 25 * 3000, "logged fields are cut")
