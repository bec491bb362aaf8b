"""Room clients (PROTOCOL section 3) over real WebSocket connections."""

from twisted.internet import defer

from helpers import ServerTestCase


class RoomTests(ServerTestCase):
    @defer.inlineCallbacks
    def three_in_room(self, room_id):
        """alice, bob and carol joined ``room_id`` in that order, every user-joined consumed."""
        alice = yield self.join(room_id, "alice")
        bob = yield self.join(room_id, "bob")
        carol = yield self.join(room_id, "carol")
        yield alice.expect("user-joined")
        yield alice.expect("user-joined")
        yield bob.expect("user-joined")
        return alice, bob, carol

    @defer.inlineCallbacks
    def test_join_lists_members_and_notifies_others(self):
        alice = yield self.connect()
        alice.send({"type": "join-room", "roomId": "r1", "sender": "alice"})
        reply = yield alice.expect("join-success")
        self.assertEqual(reply, {"type": "join-success", "roomId": "r1", "userId": "alice", "members": []})

        bob = yield self.connect()
        bob.send({"type": "join-room", "roomId": "r1", "sender": "bob"})
        reply = yield bob.expect("join-success")
        self.assertEqual(reply["members"], ["alice"])
        joined = yield alice.expect("user-joined")
        self.assertEqual(joined, {"type": "user-joined", "userId": "bob", "roomId": "r1"})

    @defer.inlineCallbacks
    def test_rejoin_is_idempotent_and_silent(self):
        alice = yield self.join("r1", "alice")
        bob = yield self.join("r1", "bob")
        yield alice.expect("user-joined")
        bob.send({"type": "join-room", "roomId": "r1", "sender": "bob"})
        reply = yield bob.expect("join-success")
        self.assertEqual(reply["members"], ["alice"])
        yield self.roundtrip(alice)
        alice.assert_quiet()
        self.assertEqual(list(self.registry.rooms["r1"]), ["alice", "bob"])

    @defer.inlineCallbacks
    def test_signaling_forwarded_verbatim_with_sender_overwritten(self):
        alice, bob, carol = yield self.three_in_room("r1")
        # The real seed client's shape, with a spoofed sender.
        offer = {
            "type": "offer", "sender": "mallory", "roomId": "r1", "timestamp": 1704672000000,
            "messageId": "m-1", "offer": {"type": "offer", "sdp": "v=0\r\n"},
            "data": {"nested": [1, 2, {"x": None}]},
        }
        alice.send(offer)
        expected = dict(offer, sender="alice", **{"from": "alice"})
        self.assertEqual((yield bob.next()), expected)
        self.assertEqual((yield carol.next()), expected)
        yield self.roundtrip(alice)
        alice.assert_quiet()

    @defer.inlineCallbacks
    def test_every_type_is_relayed_in_a_room(self):
        alice = yield self.join("r1", "alice")
        bob = yield self.join("r1", "bob")
        yield alice.expect("user-joined")
        for message in (
            {"type": "answer", "roomId": "r1", "answer": {"sdp": "a"}},
            {"type": "ice-candidate", "roomId": "r1", "candidate": {"candidate": "c", "sdpMid": "0"}},
            {"type": "chat", "roomId": "r1", "message": "你好"},
            {"type": "custom-thing", "roomId": "r1", "anything": True},
        ):
            bob.send(message)
            self.assertEqual((yield alice.next()), dict(message, sender="bob", **{"from": "bob"}))

    @defer.inlineCallbacks
    def test_directed_within_room(self):
        alice, bob, carol = yield self.three_in_room("r1")
        alice.send({"type": "offer", "roomId": "r1", "to": "carol", "offer": {"sdp": "x"}})
        got = yield carol.expect("offer")
        self.assertEqual(got["sender"], "alice")
        yield self.roundtrip(bob)
        bob.assert_quiet()
        alice.send({"type": "offer", "roomId": "r1", "to": "zed", "offer": {}})
        yield alice.expect_error("PEER_NOT_IN_ROOM")

    @defer.inlineCallbacks
    def test_not_in_room(self):
        alice = yield self.join("r1", "alice")
        alice.send({"type": "chat", "roomId": "elsewhere", "message": "hi"})
        error = yield alice.expect_error("NOT_IN_ROOM")
        self.assertEqual(error["requestType"], "chat")
        alice.send({"type": "leave-room", "roomId": "elsewhere"})
        yield alice.expect_error("NOT_IN_ROOM")
        stranger = yield self.connect()
        stranger.send({"type": "chat", "roomId": "r1", "message": "hi"})
        yield stranger.expect_error("NOT_IN_ROOM")

    @defer.inlineCallbacks
    def test_leave_notifies_and_empty_room_is_deleted(self):
        alice = yield self.join("r1", "alice")
        bob = yield self.join("r1", "bob")
        yield alice.expect("user-joined")
        bob.send({"type": "leave-room", "roomId": "r1", "sender": "bob"})
        self.assertEqual((yield bob.expect("leave-success")), {"type": "leave-success", "roomId": "r1"})
        self.assertEqual(
            (yield alice.expect("user-left")), {"type": "user-left", "userId": "bob", "roomId": "r1"}
        )
        alice.send({"type": "leave-room", "roomId": "r1"})
        yield alice.expect("leave-success")
        self.assertNotIn("r1", self.registry.rooms)

    @defer.inlineCallbacks
    def test_member_of_two_rooms(self):
        alice = yield self.join("r1", "alice")
        yield self.join("r2", "alice", client=alice)
        bob = yield self.join("r1", "bob")
        carol = yield self.join("r2", "carol")
        yield alice.expect("user-joined")
        yield alice.expect("user-joined")
        alice.send({"type": "chat", "roomId": "r2", "message": "to r2"})
        self.assertEqual((yield carol.expect("chat"))["message"], "to r2")
        yield self.roundtrip(bob)
        bob.assert_quiet()
        bob.send({"type": "chat", "roomId": "r1", "message": "to r1"})
        got = yield alice.expect("chat")
        self.assertEqual((got["message"], got["roomId"]), ("to r1", "r1"))

    @defer.inlineCallbacks
    def test_disconnect_leaves_every_room(self):
        alice = yield self.join("r1", "alice")
        yield self.join("r2", "alice", client=alice)
        bob = yield self.join("r1", "bob")
        carol = yield self.join("r2", "carol")
        yield alice.drop()
        self.assertEqual((yield bob.expect("user-left")), {"type": "user-left", "userId": "alice", "roomId": "r1"})
        self.assertEqual((yield carol.expect("user-left")), {"type": "user-left", "userId": "alice", "roomId": "r2"})
        self.assertEqual(sorted(self.registry.rooms), ["r1", "r2"])
        self.assertNotIn("alice", self.registry.identities)

    @defer.inlineCallbacks
    def test_join_binds_identity(self):
        alice = yield self.join("r1", "alice")
        alice.send({"type": "join-room", "roomId": "r2", "sender": "someone-else"})
        yield alice.expect_error("IDENTITY_MISMATCH")
        # Without a sender the bound identity is used.
        alice.send({"type": "join-room", "roomId": "r2"})
        reply = yield alice.expect("join-success")
        self.assertEqual(reply["userId"], "alice")

    @defer.inlineCallbacks
    def test_join_needs_valid_ids(self):
        client = yield self.connect()
        client.send({"type": "join-room", "roomId": "r1"})
        error = yield client.expect_error("INVALID_FIELD")
        self.assertIn("sender", error["error"])
        client.send({"type": "join-room", "roomId": "", "sender": "a"})
        error = yield client.expect_error("INVALID_FIELD")
        self.assertIn("roomId", error["error"])
        client.send({"type": "join-room", "roomId": "r" * 129, "sender": "a"})
        yield client.expect_error("INVALID_FIELD")
        client.send({"type": "join-room", "roomId": "r1", "sender": "a\nb"})
        yield client.expect_error("INVALID_FIELD")

    @defer.inlineCallbacks
    def test_room_member_reachable_by_to_and_registered_peer_can_join(self):
        member = yield self.join("r1", "room-user")
        peer = yield self.register("peer-1")
        peer.send({"type": "offer", "to": "room-user", "offer": {"sdp": "s"}})
        got = yield member.expect("offer")
        self.assertEqual(got["from"], "peer-1")
        peer.send({"type": "join-room", "roomId": "r1", "sender": "peer-1"})
        reply = yield peer.expect("join-success")
        self.assertEqual(reply["members"], ["room-user"])


class RoomLimitTests(ServerTestCase):
    config = {"max_rooms_per_connection": 2, "max_room_members": 2}

    @defer.inlineCallbacks
    def test_too_many_rooms(self):
        alice = yield self.join("r1", "alice")
        yield self.join("r2", "alice", client=alice)
        alice.send({"type": "join-room", "roomId": "r3", "sender": "alice"})
        yield alice.expect_error("TOO_MANY_ROOMS")
        # Re-joining a room one is in is still fine.
        alice.send({"type": "join-room", "roomId": "r1", "sender": "alice"})
        yield alice.expect("join-success")

    @defer.inlineCallbacks
    def test_room_full(self):
        yield self.join("r1", "alice")
        yield self.join("r1", "bob")
        carol = yield self.connect()
        carol.send({"type": "join-room", "roomId": "r1", "sender": "carol"})
        yield carol.expect_error("ROOM_FULL")
        self.assertEqual(list(self.registry.rooms["r1"]), ["alice", "bob"])
