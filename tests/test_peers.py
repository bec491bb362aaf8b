"""Peer clients (PROTOCOL sections 2 and 4) over real WebSocket connections."""

from twisted.internet import defer

from helpers import ServerTestCase


class RegisterTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_register_replies_and_announces(self):
        self.clock.advance(1704672000)
        desktop = yield self.register("pc-1", deviceType="desktop")
        phone = yield self.connect()
        phone.send({"type": "register", "peerId": "phone-1", "deviceType": "mobile",
                    "deviceInfo": {"name": "iPhone 13", "platform": "ios", "version": "0.16.0"}})
        reply = yield phone.expect("registered")
        self.assertEqual(reply, {"type": "registered", "peerId": "phone-1", "serverTime": 1704672000000})
        status = yield desktop.expect("peer-status")
        self.assertEqual(status, {
            "type": "peer-status", "peerId": "phone-1", "status": "online", "deviceType": "mobile",
            "deviceInfo": {"name": "iPhone 13", "platform": "ios", "version": "0.16.0"},
            "timestamp": 1704672000000,
        })
        yield self.roundtrip(phone)
        phone.assert_quiet()

    @defer.inlineCallbacks
    def test_presence_leaves_out_device_fields_not_registered(self):
        """As the peer seed did: no nulls that break ``peer.deviceInfo.name``."""
        self.clock.advance(3)
        watcher = yield self.register("watcher")
        bare = yield self.register("bare")
        online = yield watcher.expect("peer-status")
        self.assertEqual(online, {"type": "peer-status", "peerId": "bare", "status": "online",
                                  "timestamp": 3000})
        yield self.register("typed", deviceType="mobile")
        online = yield watcher.expect("peer-status")
        self.assertEqual((online["deviceType"], "deviceInfo" in online), ("mobile", False))
        yield bare.drop()
        offline = yield watcher.expect("peer-status")
        self.assertEqual(offline, {"type": "peer-status", "peerId": "bare", "status": "offline",
                                   "timestamp": 3000})

    @defer.inlineCallbacks
    def test_register_again_same_id_is_idempotent(self):
        other = yield self.register("other")
        client = yield self.register("p1")
        yield other.expect("peer-status")
        client.send({"type": "register", "peerId": "p1"})
        yield client.expect("registered")
        yield self.roundtrip(other)
        other.assert_quiet()

    @defer.inlineCallbacks
    def test_register_other_id_is_identity_mismatch(self):
        client = yield self.register("p1")
        client.send({"type": "register", "peerId": "p2"})
        error = yield client.expect_error("IDENTITY_MISMATCH")
        self.assertEqual(error["requestType"], "register")
        self.assertEqual(list(self.registry.peers), ["p1"])

    @defer.inlineCallbacks
    def test_register_validates_fields(self):
        client = yield self.connect()
        for message, field in (
            ({"type": "register"}, "peerId"),
            ({"type": "register", "peerId": 42}, "peerId"),
            ({"type": "register", "peerId": "x" * 129}, "peerId"),
            ({"type": "register", "peerId": "a\x00b"}, "peerId"),
            ({"type": "register", "peerId": "p", "deviceType": 7}, "deviceType"),
            ({"type": "register", "peerId": "p", "deviceInfo": "phone"}, "deviceInfo"),
        ):
            client.send(message)
            error = yield client.expect_error("INVALID_FIELD")
            self.assertIn(field, error["error"])
        self.assertEqual(self.registry.peers, {})

    @defer.inlineCallbacks
    def test_disconnect_announces_offline(self):
        watcher = yield self.register("watcher")
        leaver = yield self.register("leaver", deviceType="mobile")
        yield watcher.expect("peer-status")
        yield leaver.drop()
        status = yield watcher.expect("peer-status")
        self.assertEqual(
            {k: status[k] for k in ("peerId", "status", "deviceType")},
            {"peerId": "leaver", "status": "offline", "deviceType": "mobile"},
        )
        self.assertIsInstance(status["timestamp"], int)

    @defer.inlineCallbacks
    def test_room_only_connection_gets_no_presence(self):
        member = yield self.join("r1", "member")
        yield self.register("p1")
        yield self.roundtrip(member)
        member.assert_quiet()


class DirectedTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_offer_answer_ice_forwarded_with_from(self):
        a = yield self.register("a")
        b = yield self.register("b")
        yield a.expect("peer-status")
        for message in (
            {"type": "offer", "to": "b", "offer": {"type": "offer", "sdp": "v=0"}},
            {"type": "answer", "to": "b", "answer": {"type": "answer", "sdp": "v=0"}},
            {"type": "ice-candidate", "to": "b",
             "candidate": {"candidate": "c", "sdpMid": "0", "sdpMLineIndex": 0}},
            {"type": "file-request", "to": "b", "name": "x.txt"},
        ):
            a.send(message)
            self.assertEqual((yield b.next()), dict(message, **{"from": "a", "sender": "a"}))

    @defer.inlineCallbacks
    def test_spoofed_from_is_overwritten(self):
        a = yield self.register("a")
        b = yield self.register("b")
        a.send({"type": "offer", "to": "b", "from": "mallory", "offer": {}})
        got = yield b.expect("offer")
        self.assertEqual(got["from"], "a")

    @defer.inlineCallbacks
    def test_message_type_gets_timestamp(self):
        self.clock.advance(5)
        a = yield self.register("a")
        b = yield self.register("b")
        a.send({"type": "message", "to": "b", "payload": {"text": "hi"}})
        got = yield b.expect("message")
        self.assertEqual(got, {"type": "message", "to": "b", "from": "a", "sender": "a",
                               "payload": {"text": "hi"}, "timestamp": 5000})

    @defer.inlineCallbacks
    def test_sender_must_register(self):
        yield self.register("b")
        anonymous = yield self.connect()
        anonymous.send({"type": "offer", "to": "b", "offer": {}})
        yield anonymous.expect_error("REGISTRATION_REQUIRED")
        member = yield self.join("r1", "member")
        member.send({"type": "offer", "to": "b", "offer": {}})
        yield member.expect_error("REGISTRATION_REQUIRED")

    @defer.inlineCallbacks
    def test_invalid_to(self):
        a = yield self.register("a")
        a.send({"type": "offer", "to": ["b"], "offer": {}})
        error = yield a.expect_error("INVALID_FIELD")
        self.assertIn("'to'", error["error"])

    @defer.inlineCallbacks
    def test_get_peers_excludes_requester_in_registration_order(self):
        self.clock.advance(100)
        a = yield self.register("a", deviceType="desktop", deviceInfo={"name": "pc"})
        self.clock.advance(1)
        yield self.register("b", deviceType="mobile")
        yield self.register("c")
        a.send({"type": "get-peers"})
        reply = yield a.expect("peers-list", skip=("peer-status",))
        self.assertEqual(reply["count"], 2)
        self.assertEqual(reply["peers"], [
            {"peerId": "b", "deviceType": "mobile", "deviceInfo": {}, "connectedAt": 101000},
            {"peerId": "c", "deviceType": "unknown", "deviceInfo": {}, "connectedAt": 101000},
        ])
        self.assertNotIn("nextCursor", reply)

    @defer.inlineCallbacks
    def test_get_peers_paged(self):
        asker = yield self.connect()
        for i in range(5):
            yield self.register(f"p{i}")
        seen = []
        cursor = None
        while True:
            request = {"type": "get-peers", "limit": 2}
            if cursor:
                request["cursor"] = cursor
            asker.send(request)
            reply = yield asker.expect("peers-list")
            self.assertEqual(reply["total"], 5)
            seen += [p["peerId"] for p in reply["peers"]]
            cursor = reply.get("nextCursor")
            if cursor is None:
                break
        self.assertEqual(seen, ["p0", "p1", "p2", "p3", "p4"])
        asker.send({"type": "get-peers", "limit": 501})
        yield asker.expect_error("INVALID_FIELD")
        asker.send({"type": "get-peers", "cursor": "abc"})
        yield asker.expect_error("INVALID_FIELD")

    @defer.inlineCallbacks
    def test_ping_needs_no_identity(self):
        self.clock.advance(2)
        client = yield self.connect()
        client.send({"type": "ping"})
        self.assertEqual((yield client.expect("pong")), {"type": "pong", "timestamp": 2000})


class TakeoverTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_takeover_closes_old_with_4001_silently(self):
        watcher = yield self.register("watcher")
        old = yield self.register("p1")
        yield watcher.expect("peer-status")
        member = yield self.join("r1", "member")
        yield self.join("r1", "p1", client=old)
        yield member.expect("user-joined")

        new = yield self.register("p1")
        code, reason = yield old.wait_closed()
        self.assertEqual((code, reason), (4001, "replaced"))
        status = yield watcher.expect("peer-status")
        self.assertEqual((status["peerId"], status["status"]), ("p1", "online"))
        yield self.roundtrip(watcher)
        watcher.assert_quiet()
        yield self.roundtrip(member)
        member.assert_quiet()

        # The newcomer holds the id: directed messages and room messages reach it.
        watcher.send({"type": "offer", "to": "p1", "offer": {}})
        self.assertEqual((yield new.expect("offer"))["from"], "watcher")
        member.send({"type": "chat", "roomId": "r1", "message": "still here?"})
        self.assertEqual((yield new.expect("chat"))["sender"], "member")
        self.assertFalse(self.registry.peers["p1"].replaced)
        self.assertEqual(len(self.registry.sessions), 3)

    @defer.inlineCallbacks
    def test_takeover_keeps_the_device_fields_the_newcomer_omits(self):
        watcher = yield self.register("watcher")
        yield self.register("p1", deviceType="mobile", deviceInfo={"platform": "ios"})
        yield watcher.expect("peer-status")

        # Reconnecting without device fields: the old registration's are kept.
        yield self.register("p1")
        status = yield watcher.expect("peer-status")
        self.assertEqual((status["status"], status["deviceType"], status["deviceInfo"]),
                         ("online", "mobile", {"platform": "ios"}))
        # A field the newcomer sends wins; the one it omits is still inherited.
        yield self.register("p1", deviceInfo={"platform": "android"})
        status = yield watcher.expect("peer-status")
        self.assertEqual((status["deviceType"], status["deviceInfo"]),
                         ("mobile", {"platform": "android"}))
        yield self.register("p1", deviceType="tablet")
        status = yield watcher.expect("peer-status")
        self.assertEqual((status["deviceType"], status["deviceInfo"]),
                         ("tablet", {"platform": "android"}))
        watcher.send({"type": "get-peers"})
        [peer] = (yield watcher.expect("peers-list"))["peers"]
        self.assertEqual((peer["peerId"], peer["deviceType"], peer["deviceInfo"]),
                         ("p1", "tablet", {"platform": "android"}))

    @defer.inlineCallbacks
    def test_late_close_of_replaced_socket_keeps_newcomer(self):
        watcher = yield self.register("watcher")
        old = yield self.register("p1")
        yield watcher.expect("peer-status")
        # The old client ignores the close frame and its TCP connection dies later.
        old.sendCloseFrame = lambda *a, **kw: None
        new = yield self.register("p1")
        yield watcher.expect("peer-status")
        yield old.drop()
        yield self.roundtrip(watcher)
        watcher.assert_quiet()
        self.assertFalse(self.registry.peers["p1"].replaced)
        watcher.send({"type": "offer", "to": "p1", "offer": {}})
        yield new.expect("offer")
        # When the newcomer leaves, the peer goes offline once.
        yield new.drop()
        status = yield watcher.expect("peer-status")
        self.assertEqual(status["status"], "offline")
        self.assertNotIn("p1", self.registry.peers)

    @defer.inlineCallbacks
    def test_room_member_takeover(self):
        alice = yield self.join("r1", "alice")
        old_bob = yield self.join("r1", "bob")
        yield alice.expect("user-joined")
        new_bob = yield self.connect()
        new_bob.send({"type": "join-room", "roomId": "r1", "sender": "bob"})
        reply = yield new_bob.expect("join-success")
        self.assertEqual(reply["members"], ["alice"])
        code, _ = yield old_bob.wait_closed()
        self.assertEqual(code, 4001)
        yield self.roundtrip(alice)
        alice.assert_quiet()
        self.assertEqual(list(self.registry.rooms["r1"]), ["alice", "bob"])
