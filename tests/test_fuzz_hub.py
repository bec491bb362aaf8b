"""
Property tests: arbitrary messages thrown at the hub, then at a real server.

Whatever arrives, the hub answers with well-formed messages (errors where the
input is wrong), never raises, and its bookkeeping stays consistent.
"""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest

from helpers import ServerTestCase
from signaling.config import Config
from signaling.hub import Hub
from signaling.registry import LocalRegistry
from signaling.store import MemoryStore, StoreLimits
from test_hub import RecordingConnection

TYPES = ["register", "join-room", "leave-room", "get-peers", "ping", "ack", "offer",
         "answer", "ice-candidate", "chat", "message", "x"]
IDS = st.one_of(st.sampled_from(["a", "b", "c", "r1", ""]), st.text(max_size=140))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELD_VALUES = st.one_of(IDS, JSON)
MESSAGES = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={
        "peerId": FIELD_VALUES, "sender": FIELD_VALUES, "roomId": FIELD_VALUES,
        "to": FIELD_VALUES, "deviceType": FIELD_VALUES, "deviceInfo": JSON,
        "messageIds": FIELD_VALUES, "cursor": FIELD_VALUES, "limit": FIELD_VALUES,
        "ack": JSON, "messageId": FIELD_VALUES, "payload": JSON, "token": FIELD_VALUES,
    },
)
# (connection index, message, or None for "this connection disconnects")
STEPS = st.lists(
    st.tuples(st.integers(0, 3), st.one_of(st.none(), MESSAGES)), min_size=1, max_size=40
)


class HubPropertyTests(unittest.SynchronousTestCase):
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(STEPS)
    def test_arbitrary_sequences_keep_hub_consistent(self, steps):
        clock = task.Clock()
        store = MemoryStore(StoreLimits(max_per_peer=3))
        registry = LocalRegistry(store, 2, 3)
        hub = Hub(Config(db=":memory:", rate_limit=0, max_room_members=3,
                         max_rooms_per_connection=2),
                  clock, store, registry=registry)
        conns = [RecordingConnection() for _ in range(4)]
        sessions = [hub.connect(conn, f"127.0.0.1:{i}") for i, conn in enumerate(conns)]
        for index, message in steps:
            clock.advance(1)
            session = sessions[index]
            if message is None:
                hub.disconnect(session)
                conns[index] = RecordingConnection()
                sessions[index] = hub.connect(conns[index], f"127.0.0.1:{index}")
            elif session.open:
                hub.receive_payload(session, json.dumps(message))
        for conn in conns:
            for sent in conn.sent:
                self.assertIsInstance(sent.get("type"), str)
                if sent["type"] == "error":
                    self.assertIsInstance(sent["code"], str)
                    self.assertIsInstance(sent["error"], str)
        # Bookkeeping: every room member, peer and identity is a live session
        # that agrees with it.
        for identity, session in registry.identities.items():
            self.assertIn(session, registry.sessions)
            self.assertEqual(session.identity, identity)
        for peer_id, session in registry.peers.items():
            self.assertTrue(session.registered)
            self.assertIs(registry.identities[peer_id], session)
        for room_id, members in registry.rooms.items():
            self.assertTrue(members)
            self.assertLessEqual(len(members), 3)
            for user_id, session in members.items():
                self.assertIs(registry.identities[user_id], session)
                self.assertIn(room_id, session.rooms)
        self.assertEqual(hub.stats()["connections"], len([s for s in sessions if s.open]))


class DecoderToHubTests(unittest.SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     JSON.map(lambda v: json.dumps(v).encode())))
    def test_any_frame_gets_an_answer_or_an_error(self, payload):
        hub = Hub(Config(db=":memory:", rate_limit=0), task.Clock(), MemoryStore())
        conn = RecordingConnection()
        session = hub.connect(conn, "127.0.0.1:1")
        hub.receive_payload(session, payload)
        self.assertTrue(session.open)
        self.assertTrue(conn.sent, "a lone connection's request must be answered")
        for sent in conn.sent:
            self.assertIsInstance(sent.get("type"), str)


class ServerKeepsServingTests(ServerTestCase):
    config = {"rate_limit": 0}

    @defer.inlineCallbacks
    def test_garbage_over_a_real_connection(self):
        """A fixed sample of hostile frames, then the connection still works."""
        client = yield self.connect()
        frames = [
            b"\x00\xff", b"{}", b"[]", b"null", b'{"type":null}', b'{"type":"register","peerId":{}}',
            b'{"type":"join-room","roomId":[1],"sender":"a"}', b'{"type":"offer","to":"' + b"x" * 200 + b'"}',
            b'{"type":"get-peers","limit":1e308}', b'{"type":"ack","messageIds":[1,2]}',
            b'{"type":"register","peerId":"a","deviceInfo":{"a":' + b"[" * 60 + b"]" * 60 + b"}}",
            b'{"type":"' + "\u00e9".encode() + b'","to":"a"}', b'{"type":"ping","x":"\\ud800"}',
        ]
        for frame in frames:
            client.sendMessage(frame, isBinary=True)
        answered = 0
        while answered < len(frames):
            message = yield client.next()
            self.assertIsInstance(message.get("type"), str)
            answered += 1
        yield self.roundtrip(client)
        self.assertEqual(len(self.registry.sessions), 1)
