"""
Ids in Unicode normalization form NFC, end to end on real sockets: ``josé``
spelled with a precomposed ``é`` (U+00E9) and with ``e`` plus a combining
acute accent (U+0301) is one peer, one room member and one token subject, and
the server answers with the precomposed spelling.
"""

from __future__ import annotations

import jwt
from twisted.internet import defer

from helpers import ServerTestCase

#: The two spellings of one id, and of one room.
COMPOSED, DECOMPOSED = "jos\u00e9", "jose\u0301"
CAFE, CAFE_DECOMPOSED = "caf\u00e9", "cafe\u0301"
SECRET = "a-shared-secret-of-at-least-32-bytes!!"


class PeerIdTests(ServerTestCase):
    config = {"offline_ttl": 60.0}

    @defer.inlineCallbacks
    def test_registered_answers_the_nfc_id(self):
        client = yield self.connect()
        client.send({"type": "register", "peerId": DECOMPOSED})
        self.assertEqual((yield client.expect("registered"))["peerId"], COMPOSED)
        self.assertEqual(list(self.registry.identities), [COMPOSED])

    @defer.inlineCallbacks
    def test_the_other_spelling_is_the_same_peer(self):
        """Registering the other spelling takes the id over; it cannot exist twice."""
        first = yield self.register(COMPOSED)
        second = yield self.connect()
        second.send({"type": "register", "peerId": DECOMPOSED})
        yield second.expect("registered")
        code, _ = yield first.wait_closed()
        self.assertEqual(code, 4001)
        self.assertEqual(list(self.registry.identities), [COMPOSED])
        # Naming either spelling again on the same connection is the same id.
        second.send({"type": "register", "peerId": COMPOSED})
        self.assertEqual((yield second.expect("registered"))["peerId"], COMPOSED)

    @defer.inlineCallbacks
    def test_directed_messages_reach_either_spelling(self):
        jose = yield self.register(COMPOSED)
        sender = yield self.register(DECOMPOSED + "-phone")
        yield jose.expect("peer-status")
        sender.send({"type": "offer", "to": DECOMPOSED, "offer": {"sdp": "v=0"}})
        offer = yield jose.expect("offer")
        self.assertEqual((offer["to"], offer["from"]), (COMPOSED, COMPOSED + "-phone"))

    @defer.inlineCallbacks
    def test_stored_messages_wait_for_either_spelling(self):
        sender = yield self.register("sender")
        sender.send({"type": "message", "to": DECOMPOSED, "messageId": "m1", "payload": "hola"})
        queued = yield sender.expect("peer-offline")
        self.assertEqual(queued["peerId"], COMPOSED)
        jose = yield self.register(COMPOSED)
        delivered = yield jose.expect("offline-message")
        self.assertEqual((delivered["messageId"], delivered["originalMessage"]["to"]),
                         ("m1", COMPOSED))


class RoomIdTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_one_room_one_member_whatever_the_spelling(self):
        a = yield self.connect()
        a.send({"type": "join-room", "roomId": CAFE_DECOMPOSED, "sender": DECOMPOSED})
        joined = yield a.expect("join-success")
        self.assertEqual((joined["roomId"], joined["userId"]), (CAFE, COMPOSED))
        b = yield self.connect()
        b.send({"type": "join-room", "roomId": CAFE, "sender": "ana"})
        joined = yield b.expect("join-success")
        self.assertEqual((joined["roomId"], joined["members"]), (CAFE, [COMPOSED]))
        self.assertEqual(
            (yield a.expect("user-joined")), {"type": "user-joined", "userId": "ana", "roomId": CAFE}
        )
        self.assertEqual(list(self.registry.rooms), [CAFE])

        b.send({"type": "chat", "roomId": CAFE_DECOMPOSED, "to": DECOMPOSED, "message": "hi"})
        chat = yield a.expect("chat")
        self.assertEqual((chat["roomId"], chat["to"], chat["sender"]), (CAFE, COMPOSED, "ana"))
        a.send({"type": "leave-room", "roomId": CAFE})
        yield a.expect("leave-success")
        self.assertEqual((yield b.expect("user-left"))["userId"], COMPOSED)


class TokenTests(ServerTestCase):
    config = {"auth_secret": SECRET, "auth_required": True}

    def token(self, sub, **claims):
        return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")

    @defer.inlineCallbacks
    def test_sub_allows_either_spelling(self):
        for sub, peer_id in ((DECOMPOSED, COMPOSED), (COMPOSED, DECOMPOSED)):
            client = yield self.connect(f"/?token={self.token(sub)}")
            client.send({"type": "register", "peerId": peer_id})
            self.assertEqual((yield client.expect("registered"))["peerId"], COMPOSED)

    @defer.inlineCallbacks
    def test_rooms_claim_allows_either_spelling(self):
        token = self.token("ana", rooms=[CAFE_DECOMPOSED, "t\u0065\u0301-*"])
        client = yield self.connect(f"/?token={token}")
        for room in (CAFE, CAFE_DECOMPOSED, "t\u00e9-1", "te\u0301-2"):
            client.send({"type": "join-room", "roomId": room, "sender": "ana"})
            yield client.expect("join-success")
        client.send({"type": "join-room", "roomId": "te-3", "sender": "ana"})
        yield client.expect_error("FORBIDDEN")
