"""The offline store through the protocol (PROTOCOL section 5)."""

import json

from twisted.internet import defer

from helpers import ServerTestCase, SqliteFileMixin, wait_for


class OfflineTests(ServerTestCase):
    config = {"offline_max": 3, "offline_ttl": 60.0}

    @defer.inlineCallbacks
    def test_queued_then_delivered_in_order_after_registered(self):
        self.clock.advance(1000)
        sender = yield self.register("sender")
        sender.send({"type": "offer", "to": "later", "messageId": "m1", "offer": {"sdp": "1"}})
        self.assertEqual(
            (yield sender.expect("peer-offline")),
            {"type": "peer-offline", "peerId": "later", "messageId": "m1", "queued": True},
        )
        self.clock.advance(1)
        sender.send({"type": "message", "to": "later", "id": "m2", "payload": "two"})
        self.assertEqual((yield sender.expect("peer-offline"))["messageId"], "m2")
        sender.send({"type": "ice-candidate", "to": "later", "candidate": {"c": 3}})
        generated = (yield sender.expect("peer-offline"))["messageId"]
        self.assertTrue(generated)
        self.assertEqual(self.store.count, 3)

        self.clock.advance(2)
        later = yield self.connect()
        later.send({"type": "register", "peerId": "later"})
        yield later.expect("registered")
        first = yield later.expect("offline-message")
        self.assertEqual(first, {
            "type": "offline-message", "messageId": "m1",
            "originalMessage": {"type": "offer", "to": "later", "messageId": "m1",
                                "offer": {"sdp": "1"}, "from": "sender", "sender": "sender"},
            "storedAt": 1000000, "deliveredAt": 1003000,
        })
        second = yield later.expect("offline-message")
        self.assertEqual(second["originalMessage"]["payload"], "two")
        self.assertEqual(second["originalMessage"]["timestamp"], 1001000)
        third = yield later.expect("offline-message")
        self.assertEqual(third["messageId"], generated)
        # Presence comes after the stored messages.
        yield sender.expect("peer-status")
        self.assertEqual(self.store.count, 0)

    @defer.inlineCallbacks
    def test_delivered_once_without_ack(self):
        sender = yield self.register("sender")
        sender.send({"type": "offer", "to": "later", "offer": {}})
        yield sender.expect("peer-offline")
        later = yield self.register("later")
        yield later.expect("offline-message")
        yield later.drop()
        again = yield self.register("later")
        yield self.roundtrip(again)
        again.assert_quiet()

    @defer.inlineCallbacks
    def test_full_queue_refuses_and_keeps_old_messages(self):
        sender = yield self.register("sender")
        for i in range(3):
            sender.send({"type": "offer", "to": "later", "messageId": f"m{i}", "offer": {}})
            yield sender.expect("peer-offline")
        sender.send({"type": "offer", "to": "later", "messageId": "m3", "offer": {}})
        error = yield sender.expect_error("QUEUE_FULL")
        self.assertEqual((error["messageId"], error["requestType"], error["peerId"]),
                         ("m3", "offer", "later"))
        later = yield self.register("later")
        ids = []
        for _ in range(3):
            ids.append((yield later.expect("offline-message"))["messageId"])
        self.assertEqual(ids, ["m0", "m1", "m2"])

    @defer.inlineCallbacks
    def test_expired_messages_are_never_delivered(self):
        sender = yield self.register("sender")
        sender.send({"type": "offer", "to": "later", "messageId": "old", "offer": {}})
        yield sender.expect("peer-offline")
        self.clock.advance(30)
        sender.send({"type": "offer", "to": "later", "messageId": "young", "offer": {}})
        yield sender.expect("peer-offline")
        self.clock.advance(31)  # "old" is now 61 s old, past the 60 s limit
        later = yield self.register("later")
        delivered = yield later.expect("offline-message")
        self.assertEqual(delivered["messageId"], "young")
        yield self.roundtrip(later)
        later.assert_quiet()

    @defer.inlineCallbacks
    def test_expiry_sweep_frees_the_store(self):
        sender = yield self.register("sender")
        sender.send({"type": "offer", "to": "later", "offer": {}})
        yield sender.expect("peer-offline")
        self.assertEqual(self.store.count, 1)
        self.clock.advance(61)  # the 60 s sweep runs (in cluster mode: in Redis, so wait)
        yield wait_for(lambda: self.store.count == 0, "the expiry sweep")
        self.assertEqual(self.store.total_bytes, 0)

    @defer.inlineCallbacks
    def test_ack_mode_redelivers_until_acknowledged(self):
        sender = yield self.register("sender")
        for i in range(2):
            sender.send({"type": "offer", "to": "later", "messageId": f"m{i}", "offer": {}})
            yield sender.expect("peer-offline")
        later = yield self.register("later", ack=True)
        yield later.expect("offline-message")
        yield later.expect("offline-message")
        later.send({"type": "ack", "messageIds": ["m0"]})
        yield self.roundtrip(later)
        yield later.drop()
        again = yield self.register("later", ack=True)
        redelivered = yield again.expect("offline-message")
        self.assertEqual(redelivered["messageId"], "m1")
        again.send({"type": "ack", "messageIds": ["m1"]})
        yield self.roundtrip(again)
        self.assertEqual(self.store.count, 0)
        again.send({"type": "ack", "messageIds": "m1"})
        yield again.expect_error("INVALID_FIELD")

    @defer.inlineCallbacks
    def test_ack_needs_registration(self):
        client = yield self.connect()
        client.send({"type": "ack", "messageIds": ["x"]})
        yield client.expect_error("REGISTRATION_REQUIRED")


class StoreByteLimitTests(ServerTestCase):
    # One sender may use the whole store here, to reach the global caps.
    config = {"offline_max_bytes": 400, "offline_max_peers": 2,
              "offline_max_bytes_per_sender": 10**6}

    @defer.inlineCallbacks
    def test_global_caps_refuse(self):
        sender = yield self.register("sender")
        sender.send({"type": "offer", "to": "a", "offer": {"sdp": "x" * 200}})
        yield sender.expect("peer-offline")
        sender.send({"type": "offer", "to": "a", "offer": {"sdp": "x" * 200}})
        self.assertEqual((yield sender.expect_error("QUEUE_FULL"))["error"], "offline store is full")
        sender.send({"type": "offer", "to": "b", "offer": {}})
        yield sender.expect("peer-offline")
        sender.send({"type": "offer", "to": "c", "offer": {}})
        yield sender.expect_error("QUEUE_FULL")
        self.assertEqual(self.store.count, 2)


class SqliteOfflineTests(SqliteFileMixin, OfflineTests):
    """The same behaviour with the durable store on a real SQLite file."""

    @defer.inlineCallbacks
    def test_survives_restart(self):
        sender = yield self.register("sender")
        for i in range(3):
            sender.send({"type": "offer", "to": "later", "messageId": f"m{i}", "offer": {}})
            yield sender.expect("peer-offline")
        yield self.restart_server()
        later = yield self.register("later")
        ids = []
        for _ in range(3):
            ids.append((yield later.expect("offline-message"))["messageId"])
        self.assertEqual(ids, ["m0", "m1", "m2"])


class UnicodeTextTests(SqliteFileMixin, ServerTestCase):
    """Issue 11, item 1, over real sockets with a real SQLite file and a restart."""

    @defer.inlineCallbacks
    def test_a_lone_surrogate_is_refused_and_nothing_is_stored(self):
        sender = yield self.register("mallory")
        sender.send('{"type":"message","to":"victim","messageId":"\\ud800"}')
        error = yield sender.expect_error("INVALID_FIELD")
        self.assertEqual(
            error["error"], "'messageId' must be valid Unicode text (it holds a lone surrogate)"
        )
        self.assertNotIn("messageId", error)  # the refused id is not echoed back
        sender.send('{"type":"message","to":"victim","payload":{"text":"a\\udc00"}}')
        error = yield sender.expect_error("INVALID_FIELD")
        self.assertIn("'payload.text'", error["error"])
        self.assertEqual(self.store.count, 0)
        yield self.restart_server()
        self.assertEqual((self.store.count, self.store.quarantined), (0, 0))

    @defer.inlineCallbacks
    def test_every_character_is_stored_and_delivered_exactly(self):
        texts = ["a\x00b", "\x00", "\U0001f600", "\u2028\u2029", "\ufeff", "\U0010ffff",
                 "\x7f\x1f", '"\\', "e\u0301", "\uffff"]
        sender = yield self.register("s\u00e9nder")
        sent = []
        for n, text in enumerate(texts):
            message = {"type": "message", "to": "later", "messageId": f"{n}:{text}",
                       "payload": {text: text, "n": n}, "timestamp": n}
            # As escapes and as raw UTF-8, the two ways a client may write it.
            sender.send(json.dumps(message, ensure_ascii=n % 2 == 0))
            queued = yield sender.expect("peer-offline")
            self.assertEqual(queued["messageId"], message["messageId"])
            sent.append(message)
        yield self.restart_server()
        later = yield self.register("later")
        for message in sent:
            delivered = yield later.expect("offline-message")
            self.assertEqual(delivered["messageId"], message["messageId"])
            self.assertEqual(delivered["originalMessage"],
                             dict(message, **{"from": "s\u00e9nder", "sender": "s\u00e9nder"}))
