"""
The SQLite store keeps messages in any language: messages are encoded as
UTF-8 (characters as themselves), and an offline message with ``é`` or
CJK text must be stored, survive a reopen and come back byte for byte.
Found by the WebSocket state machine: every such message got
``INTERNAL_ERROR`` (the store decoded the encoded body as ASCII).
"""

from twisted.internet import defer

from test_sqlite_store import NOW, StoreTestCase

TEXTS = ["é", "漢字 and 房间", "😀", "line\u2028separator", "a\ud800b"]


class TextTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_any_text_is_stored_exactly_and_survives_a_reopen(self):
        store = self.open()
        sent = [{"type": "message", "from": "漢字", "payload": text} for text in TEXTS]
        entries = yield defer.gatherResults(
            [store.enqueue("bob", f"m{n}", message, NOW) for n, message in enumerate(sent)]
        )
        self.assertEqual([entry.message for entry in entries], sent)
        bodies = [entry.body for entry in store.pending("bob", NOW)]
        store = yield self.reopen(store)
        reloaded = store.pending("bob", NOW)
        self.assertEqual([entry.body for entry in reloaded], bodies)
        self.assertEqual([entry.message for entry in reloaded], sent)
        self.assertEqual(store.total_bytes, sum(len(body) for body in bodies))
