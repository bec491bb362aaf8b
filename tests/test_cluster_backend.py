"""
RedisBackend against a real redis-server, with several backends in one
process playing several nodes: every Lua script, the events it publishes,
node death, Redis restarts and outages.
"""

from __future__ import annotations

import json
import time

from twisted.internet import defer

from cluster_helpers import TIMEOUT, Recorder, RedisTestCase, command_calls, sleep, wait_until
from signaling.cluster import BackendUnavailable, NotHolder, OfflineLimits, envelope
from signaling.cluster.listener import INodeListener
from signaling.messages import encode
from signaling.store import QueueFull


def user_left(identity, room):
    return {"type": "user-left", "userId": identity, "roomId": room}


def decoded(events):
    """room_event/presence records with their data decoded from JSON."""
    return [tuple(json.loads(v) if isinstance(v, bytes) else v for v in event) for event in events]


class ClusterTestCase(RedisTestCase):
    """Adds :meth:`nodes`."""

    @defer.inlineCallbacks
    def nodes(self, names, **options):
        """One available node per name."""
        started = []
        for name in names:
            started.append((yield self.node(node_id=name, **options)))
        return started


class ClaimTests(ClusterTestCase):
    """CLAIM: new, same, takeover with a kick, fencing, authentication, stale holders."""

    def test_recorder_is_a_listener(self):
        self.assertTrue(INodeListener.providedBy(Recorder()))

    @defer.inlineCallbacks
    def test_new_then_same(self):
        a = yield self.node(node_id="A")
        claim = yield a.claim("alice", "1", False, 1000)
        self.assertEqual((claim.status, claim.bound), ("new", True))
        claim = yield a.claim("alice", "1", False, 1000)
        self.assertEqual(claim.status, "same")

    @defer.inlineCallbacks
    def test_takeover_across_nodes_kicks_and_inherits(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield a.claim("alice", "1", False, 1000)
        seq = yield a.register("alice", "1", "phone", {"os": "x"})
        yield a.join("r1", "alice", "1", 10)
        yield a.join("r2", "alice", "1", 10)
        claim = yield b.claim("alice", "7", False, 2000)
        self.assertEqual(claim.status, "takeover")
        self.assertEqual((claim.old_node, claim.old_conn), ("A", "1"))
        self.assertEqual(
            (claim.registered, claim.seq, claim.device_type, claim.device_info),
            (True, seq, "phone", {"os": "x"}),
        )
        self.assertEqual(sorted(claim.rooms), ["r1", "r2"])
        yield wait_until(lambda: a.listener.of("kick"), what="the kick")
        self.assertEqual(a.listener.of("kick"), [("alice", "1")])
        # The old connection's close is fenced: it removes nothing.
        release = yield a.release("alice", "1", b"offline")
        self.assertFalse(release.released)
        with self.assertRaises(NotHolder):
            yield a.register("alice", "1")
        with self.assertRaises(NotHolder):
            yield a.leave("r1", "alice", "1")
        with self.assertRaises(NotHolder):
            yield a.join("r3", "alice", "1", 10)
        page = yield b.peers()
        self.assertEqual([(p.peer_id, p.seq, p.connected_at) for p in page.peers], [("alice", seq, 2000)])
        self.assertEqual((yield b.claim("bob", "9", False, 0)).status, "new")
        join = yield b.join("r1", "bob", "9", 10)
        self.assertEqual(join.members, ["alice"])
        # Nobody was told alice went away.
        yield sleep(0.05)
        self.assertEqual(b.listener.of("presence") + b.listener.of("room_event"), [])

    @defer.inlineCallbacks
    def test_takeover_on_the_same_node_sends_no_kick(self):
        a = yield self.node(node_id="A")
        yield a.claim("alice", "1", False, 0)
        claim = yield a.claim("alice", "2", False, 0)
        self.assertEqual((claim.status, claim.old_conn), ("takeover", "1"))
        yield sleep(0.05)
        self.assertEqual(a.listener.of("kick"), [])

    @defer.inlineCallbacks
    def test_authenticated_holder_is_kept(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield a.claim("alice", "1", True, 0)
        claim = yield b.claim("alice", "2", False, 0)
        self.assertEqual((claim.status, claim.bound), ("forbidden", False))
        self.assertEqual((yield a.claim("alice", "1", True, 0)).status, "same")
        claim = yield b.claim("alice", "2", True, 0)
        self.assertEqual(claim.status, "takeover")

    @defer.inlineCallbacks
    def test_holder_on_a_dead_node_is_replaced_silently(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield a.claim("alice", "1", True, 0)
        yield a.join("r", "alice", "1", 10)
        self.redis.command("DEL", "signaling:node:A:alive")
        claim = yield b.claim("alice", "2", False, 0)
        self.assertEqual((claim.status, claim.rooms), ("stale", ["r"]))
        yield sleep(0.05)
        self.assertEqual(a.listener.of("kick"), [])
        # The reaper will not release it for the dead node any more.
        self.assertEqual(self.redis.command("SMEMBERS", "signaling:node:A:ids"), [])

    @defer.inlineCallbacks
    def test_reclaim_never_takes_from_a_live_holder(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield b.claim("alice", "2", False, 0)
        claim = yield a.claim("alice", "1", False, 0, reclaim=True)
        self.assertEqual((claim.status, claim.old_node, claim.bound), ("lost", "B", False))
        yield sleep(0.05)
        self.assertEqual(b.listener.of("kick"), [])
        claim = yield a.claim("carol", "3", False, 0, reclaim=True)
        self.assertEqual(claim.status, "new")

    @defer.inlineCallbacks
    def test_any_unicode_id_round_trips(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        name = "é:\u2028/\\\"日本\U0001F600 x"
        yield a.claim(name, "c:1", False, 0)
        claim = yield b.claim(name, "c:2", False, 0)
        self.assertEqual((claim.status, claim.old_conn), ("takeover", "c:1"))
        yield wait_until(lambda: a.listener.of("kick"), what="the kick")
        self.assertEqual(a.listener.of("kick"), [(name, "c:1")])


class PresenceAndRoomTests(ClusterTestCase):
    """REGISTER, RELEASE, JOIN, LEAVE and the events they publish."""

    @defer.inlineCallbacks
    def test_register_announces_to_other_nodes_only(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield a.claim("alice", "1", False, 0)
        online = encode({"type": "peer-status", "peerId": "alice", "status": "online"})
        first = yield a.register("alice", "1", None, None, online)
        yield wait_until(lambda: b.listener.of("presence"), what="presence")
        self.assertEqual(b.listener.of("presence"), [(online, "A", "alice")])
        # Registering again keeps the seq; announcing nothing publishes nothing.
        self.assertEqual((yield a.register("alice", "1", "tablet")), first)
        yield a.claim("bob", "2", False, 0)
        self.assertEqual((yield a.register("bob", "2")), first + 1)
        yield sleep(0.05)
        self.assertEqual(len(b.listener.of("presence")), 1)
        self.assertEqual(a.listener.of("presence"), [])

    @defer.inlineCallbacks
    def test_release_leaves_rooms_and_announces(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield b.watch_room("r1")
        yield b.watch_room("r2")
        for node, who, conn in ((a, "alice", "1"), (b, "bob", "2")):
            yield node.claim(who, conn, False, 0)
        yield a.register("alice", "1", "phone")
        yield a.join("r1", "alice", "1", 10)
        yield a.join("r2", "alice", "1", 10)
        yield a.join("solo", "alice", "1", 10)
        yield b.join("r1", "bob", "2", 10)
        yield b.join("r2", "bob", "2", 10)
        b.listener.clear()
        offline = encode({"type": "peer-status", "peerId": "alice", "status": "offline"})
        release = yield a.release("alice", "1", offline)
        self.assertEqual((release.released, release.registered), (True, True))
        self.assertEqual(sorted(release.rooms), ["r1", "r2", "solo"])
        yield wait_until(lambda: len(b.listener.calls) == 3, what="three events")
        self.assertEqual(b.listener.of("presence"), [(offline, "A", "alice")])
        self.assertEqual(
            sorted(decoded(b.listener.of("room_event"))),
            [("r1", user_left("alice", "r1"), "A", "alice"), ("r2", user_left("alice", "r2"), "A", "alice")],
        )
        # Everything about alice is gone; the empty room too.
        self.assertEqual(self.redis.command("EXISTS", "signaling:id:alice", "signaling:rooms:alice",
                                            "signaling:room:solo"), 0)
        self.assertEqual((yield b.peers()).peers, [])
        self.assertEqual((yield a.claim("alice", "5", False, 0)).status, "new")

    @defer.inlineCallbacks
    def test_room_member_only_is_not_announced(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield a.claim("alice", "1", False, 0)
        release = yield a.release("alice", "1", b"would-be-offline")
        self.assertEqual((release.released, release.registered), (True, False))
        yield sleep(0.05)
        self.assertEqual(b.listener.of("presence"), [])

    @defer.inlineCallbacks
    def test_join_order_announcements_and_full(self):
        nodes = yield self.nodes("ABC")
        for node in nodes:
            yield node.watch_room("r")
        joined = []
        for n, who in enumerate(["u0", "u1", "u2", "u3", "u4"]):
            node = nodes[n % 3]
            yield node.claim(who, str(n), False, 0)
            announce = encode({"type": "user-joined", "userId": who, "roomId": "r"})
            join = yield node.join("r", who, str(n), 5, announce)
            self.assertEqual(join, ("joined", joined))
            joined = joined + [who]
        yield nodes[0].claim("late", "9", False, 0)
        self.assertEqual((yield nodes[0].join("r", "late", "9", 5, b"x")), ("full", []))
        # Joining again: the same members, nothing published.
        self.assertEqual((yield nodes[1].join("r", "u1", "1", 5, b"again")),
                         ("already", ["u0", "u2", "u3", "u4"]))
        yield wait_until(lambda: len(nodes[0].listener.of("room_event")) == 3, what="joins")
        yield sleep(0.05)
        # Node A (u0, u3) heard the joins of u1, u2 and u4 (not its own), in order.
        self.assertEqual(
            [event[1] for event in decoded(nodes[0].listener.of("room_event"))],
            [{"type": "user-joined", "userId": u, "roomId": "r"} for u in ("u1", "u2", "u4")],
        )
        self.assertEqual([event[2] for event in nodes[0].listener.of("room_event")], ["B", "C", "B"])

    @defer.inlineCallbacks
    def test_members_on_dead_nodes_are_not_listed(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield a.claim("alice", "1", False, 0)
        yield a.join("r", "alice", "1", 10)
        self.redis.command("DEL", "signaling:node:A:alive")
        yield b.claim("bob", "2", False, 0)
        self.assertEqual((yield b.join("r", "bob", "2", 10)), ("joined", []))

    @defer.inlineCallbacks
    def test_leave(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield b.watch_room("r")
        yield a.claim("alice", "1", False, 0)
        yield b.claim("bob", "2", False, 0)
        yield a.join("r", "alice", "1", 10)
        yield b.join("r", "bob", "2", 10)
        left = encode(user_left("alice", "r"))
        self.assertTrue((yield a.leave("r", "alice", "1", left)))
        self.assertFalse((yield a.leave("r", "alice", "1", left)))
        yield wait_until(lambda: b.listener.of("room_event"), what="user-left")
        yield sleep(0.05)
        self.assertEqual(b.listener.of("room_event"), [("r", left, "A", "alice")])
        self.assertEqual(self.redis.command("SMEMBERS", "signaling:rooms:alice"), [])

    @defer.inlineCallbacks
    def test_room_relay_and_unwatch(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield a.watch_room("r")
        yield b.watch_room("r")
        data = encode({"type": "offer", "sender": "alice", "roomId": "r", "sdp": "\x00é"})
        self.assertEqual((yield a.publish_room("r", data, "alice")), 2)
        yield wait_until(lambda: b.listener.of("room_event"), what="the relay")
        self.assertEqual(b.listener.of("room_event"), [("r", data, "A", "alice")])
        b.unwatch_room("r")
        yield wait_until(
            lambda: self.redis.command("PUBSUB", "NUMSUB", "signaling:room:r")[1] == 1,
            what="unsubscribed",
        )
        yield a.publish_room("r", b"more", "alice")
        yield sleep(0.05)
        self.assertEqual(len(b.listener.of("room_event")), 1)
        self.assertEqual(a.listener.of("room_event"), [])

    @defer.inlineCallbacks
    def test_malformed_channel_messages_are_dropped(self):
        a = yield self.node(node_id="A")
        junks = (b"", b"Z", b"Dx:alice", b"D99:alice", b"D5:alice", b"D5:alice4:data3:bob",
                 b"D5:alice4:data3:bob9:x", b"P1:A", b"K")
        for junk in junks:
            self.redis.command("PUBLISH", "signaling:node:A", junk)
        good = envelope.deliver((b"alice", b"data"), (b"bob", b""))
        self.assertEqual(good, b"D5:alice4:data3:bob0:")
        self.redis.command("PUBLISH", "signaling:node:A", good)
        yield wait_until(lambda: a.listener.of("deliver"), what="the good message")
        yield sleep(0.05)
        self.assertEqual(a.listener.of("deliver"), [("alice", b"data"), ("bob", b"")])
        self.assertTrue(a.available)


class PeersTests(ClusterTestCase):
    """PEERS: one registration order across nodes, paging, dead nodes skipped."""

    @defer.inlineCallbacks
    def test_paging_in_registration_order_across_nodes(self):
        nodes = yield self.nodes("ABC")
        names = [f"p{n:02d}" for n in range(20)]
        for n, name in enumerate(names):
            node = nodes[(n * 7) % 3]
            yield node.claim(name, f"c{n}", False, 1000 + n)
            yield node.register(name, f"c{n}", f"type{n}", {"n": n})
        seen = []
        cursor = 0
        pages = 0
        while True:
            page = yield nodes[1].peers(cursor, 6, exclude="p03")
            pages += 1
            self.assertEqual(page.total, 19)
            seen.extend(page.peers)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        self.assertEqual(pages, 4)
        self.assertEqual([p.peer_id for p in seen], [n for n in names if n != "p03"])
        self.assertEqual(seen[0], ("p00", seen[0].seq, "type0", {"n": 0}, 1000))
        everything = yield nodes[2].peers(0, 500)
        self.assertEqual((len(everything.peers), everything.total, everything.next_cursor), (20, 20, None))

    @defer.inlineCallbacks
    def test_peers_of_dead_nodes_are_skipped_and_pruned(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        for n in range(6):
            node = a if n % 2 else b
            yield node.claim(f"p{n}", str(n), False, 0)
            yield node.register(f"p{n}", str(n))
        self.redis.command("DEL", "signaling:node:A:alive")
        page = yield b.peers(0, 2)
        self.assertEqual([p.peer_id for p in page.peers], ["p0", "p2"])
        page = yield b.peers(page.next_cursor, 2)
        self.assertEqual(([p.peer_id for p in page.peers], page.next_cursor), (["p4"], None))
        self.assertEqual(page.total, 3)

    @defer.inlineCallbacks
    def test_room_members_are_not_peers(self):
        a = yield self.node(node_id="A")
        yield a.claim("member", "1", False, 0)
        yield a.join("r", "member", "1", 10)
        self.assertEqual((yield a.peers()), ([], 0, None))


class RouteTests(RedisTestCase):
    """ROUTE: live delivery, offline storage, limits, rooms, order."""

    @defer.inlineCallbacks
    def test_live_delivery_carries_the_exact_bytes(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield b.claim("bob", "2", False, 0)
        data = encode({"type": "message", "from": "alice", "payload": "\x00\u2028é" + "x" * 70000})
        self.assertEqual((yield a.route("bob", data, "m1", 1.0, "alice")), True)
        yield wait_until(lambda: b.listener.of("deliver"), what="the delivery")
        self.assertEqual(b.listener.of("deliver"), [("bob", data)])
        self.assertEqual(a.store.count, 0)

    @defer.inlineCallbacks
    def test_unknown_recipient_is_stored(self):
        a = yield self.node(node_id="A")
        data = encode({"type": "offer", "from": "alice", "to": "bob"})
        self.assertEqual((yield a.route("bob", data, "m1", 1700000000.25, "alice")), False)
        self.assertEqual((a.store.count, a.store.total_bytes), (1, len(data)))
        [entry] = yield a.store.pending("bob", 1700000001.0)
        self.assertEqual((entry.message_id, entry.body, entry.stored_at), ("m1", data, 1700000000.25))

    @defer.inlineCallbacks
    def test_recipient_whose_node_does_not_listen_is_stored(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield b.claim("bob", "2", False, 0)
        yield b.subscriptions.stop()
        yield wait_until(
            lambda: self.redis.command("PUBSUB", "NUMSUB", "signaling:node:B")[1] == 0,
            what="B's subscriber to be gone",
        )
        self.assertEqual((yield a.route("bob", b"{}", "m1", 1.0, "alice")), False)
        # Several in one turn: one publish for them all, nobody hears it, all are stored.
        results = yield defer.gatherResults(
            [a.route("bob", b"%d" % n, f"m{n}", 1.0, "alice") for n in range(3)]
        )
        self.assertEqual(results, [False] * 3)
        stored = yield a.store.pending("bob", 2.0)
        self.assertEqual([e.body for e in stored], [b"{}", b"0", b"1", b"2"])

    @defer.inlineCallbacks
    def test_full_queue_is_refused_and_nothing_stored(self):
        a = yield self.node(node_id="A", limits=OfflineLimits(max_per_peer=2))
        for n in range(2):
            yield a.route("bob", b'{"n":%d}' % n, f"m{n}", 1.0, "alice")
        with self.assertRaises(QueueFull) as e:
            yield a.route("bob", b'{"n":2}', "m2", 1.0, "alice")
        self.assertIn("'bob' is full (2 messages)", str(e.exception))
        self.assertEqual([x.message_id for x in (yield a.store.pending("bob", 2.0))], ["m0", "m1"])
        self.assertEqual(a.store.count, 2)

    @defer.inlineCallbacks
    def test_room_route_only_to_members(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield b.claim("bob", "2", False, 0)
        yield b.join("r", "bob", "2", 10)
        yield b.claim("carol", "3", False, 0)
        self.assertEqual((yield a.route("bob", b"x", "m", 1.0, "alice", room="r")), True)
        self.assertEqual((yield a.route("carol", b"x", "m", 1.0, "alice", room="r")), False)
        self.assertEqual((yield a.route("nobody", b"x", "m", 1.0, "alice", room="r")), False)
        self.redis.command("DEL", "signaling:node:B:alive")
        self.assertEqual((yield a.route("bob", b"x", "m", 1.0, "alice", room="r")), False)
        self.assertEqual(a.store.count, 0)

    @defer.inlineCallbacks
    def test_one_round_trip_per_relayed_message(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield b.claim("bob", "2", False, 0)
        self.redis.command("CONFIG", "RESETSTAT")
        for n in range(50):
            yield a.route("bob", b"live", "m", 1.0, "alice")
            yield a.route("carol", b"stored", f"m{n}", 1.0, "alice")
        calls = command_calls(self.redis)
        # 100 messages, 100 EVALSHAs; the PUBLISH and RPUSH run inside them.
        self.assertIn(calls["evalsha"] - 100, (0, 1, 2))  # + at most a timer's heartbeat or reap
        self.assertEqual((calls["publish"], calls["rpush"]), (50, 50))

    @defer.inlineCallbacks
    def test_routes_of_one_turn_share_one_call(self):
        a = yield self.node(node_id="A", limits=OfflineLimits(max_per_peer=2))
        b = yield self.node(node_id="B")
        c = yield self.node(node_id="C")
        yield b.claim("bob", "2", False, 0)
        yield c.claim("carol", "3", False, 0)
        yield c.join("r", "carol", "3", 10)
        self.redis.command("CONFIG", "RESETSTAT")
        routes = [
            a.route("bob", b"b1", "m1", 1.0, "alice"),
            a.route("dave", b"d1", "m2", 1.0, "alice"),
            a.route("carol", b"c1", "m3", 1.0, "alice", room="r"),
            a.route("bob", b"b2", "m4", 1.0, "alice"),
            a.route("bob", b"b3", "m5", 1.0, "alice", room="r"),
            a.route("dave", b"d2", "m6", 1.0, "alice"),
            a.route("dave", b"d3", "m7", 1.0, "alice"),
            a.route("carol", b"c2", "m8", 1.0, "alice"),
        ]
        results = yield defer.DeferredList(routes, consumeErrors=True)
        outcomes = [value if ok else value.trap(QueueFull) for ok, value in results]
        self.assertEqual(
            outcomes,
            [True, False, True, True, False, False, QueueFull, True],
        )
        calls = command_calls(self.redis)
        # One script call; one publish per receiving node, each with its messages in order.
        self.assertEqual((calls["evalsha"], calls["publish"]), (1, 2))
        yield wait_until(lambda: len(b.listener.of("deliver")) == 2, what="bob's two")
        yield wait_until(lambda: len(c.listener.of("deliver")) == 2, what="carol's two")
        self.assertEqual(b.listener.of("deliver"), [("bob", b"b1"), ("bob", b"b2")])
        self.assertEqual(c.listener.of("deliver"), [("carol", b"c1"), ("carol", b"c2")])
        stored = yield a.store.pending("dave", 2.0)
        self.assertEqual([(e.message_id, e.body) for e in stored], [("m2", b"d1"), ("m6", b"d2")])

    @defer.inlineCallbacks
    def test_many_routes_arrive_in_order(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield b.claim("bob", "2", False, 0)
        count = 2000
        replies = yield defer.gatherResults(
            [a.route("bob", b"%d" % n, "m", 1.0, "alice") for n in range(count)]
        )
        self.assertEqual(set(replies), {True})
        yield wait_until(lambda: len(b.listener.of("deliver")) == count, what="every delivery")
        self.assertEqual([d for _, d in b.listener.of("deliver")], [b"%d" % n for n in range(count)])


class NodeLifeTests(RedisTestCase):
    """Heartbeats, reaping dead nodes, retiring, Redis restarts and outages."""

    @defer.inlineCallbacks
    def populate_dead_node(self, a, dead):
        """``dead`` holds a registered peer in a room with a member on ``a``."""
        yield a.watch_room("r")
        yield dead.claim("bob", "2", False, 0)
        yield dead.register("bob", "2", "phone")
        yield dead.join("r", "bob", "2", 10)
        yield a.claim("alice", "1", False, 0)
        yield a.join("r", "alice", "1", 10)

    @defer.inlineCallbacks
    def test_dead_node_is_reaped_with_events(self):
        a = yield self.node(node_id="A")
        dead = yield self.node(node_id="D", node_timeout=0.6)
        yield self.populate_dead_node(a, dead)
        yield dead.stop(retire=False)
        self.assertEqual((yield a.reap()), (0, []))  # not dead yet
        yield wait_until(
            lambda: self.redis.command("EXISTS", "signaling:node:D:alive") == 0, what="expiry"
        )
        reaped = yield a.reap()
        self.assertEqual(reaped, (1, ["D"]))
        yield wait_until(lambda: len(a.listener.calls) >= 3, what="events")
        [(data, origin, exclude)] = a.listener.of("presence")
        self.assertEqual((origin, exclude), ("D", "bob"))
        status = json.loads(data)
        self.assertEqual(
            status,
            {"type": "peer-status", "peerId": "bob", "status": "offline", "deviceType": "phone",
             "timestamp": status["timestamp"]},
        )
        self.assertLess(abs(status["timestamp"] / 1000 - time.time()), 60)
        self.assertEqual(decoded(a.listener.of("room_event")), [("r", user_left("bob", "r"), "D", "bob")])
        # The id is free, messages to it are stored, the node is forgotten.
        self.assertEqual((yield a.route("bob", b"{}", "m", 1.0, "alice")), False)
        self.assertEqual((yield a.claim("bob", "9", False, 0)).status, "new")
        self.assertEqual(self.redis.command("SMEMBERS", "signaling:nodes"), [b"A"])
        self.assertEqual((yield a.reap()), (0, []))

    @defer.inlineCallbacks
    def test_reaper_runs_by_itself(self):
        a = yield self.node(node_id="A", node_timeout=0.6, presence=False)
        dead = yield self.node(node_id="D", node_timeout=0.6)
        yield self.populate_dead_node(a, dead)
        yield dead.stop(retire=False)
        yield wait_until(lambda: a.listener.of("room_event"), timeout=5, what="the reaper")
        self.assertEqual(decoded(a.listener.of("room_event")), [("r", user_left("bob", "r"), "D", "bob")])
        self.assertEqual(a.listener.of("presence"), [])
        self.assertEqual(self.redis.command("EXISTS", "signaling:id:bob"), 0)

    @defer.inlineCallbacks
    def test_reaped_presence_without_device_type(self):
        a = yield self.node(node_id="A", device_type=False)
        dead = yield self.node(node_id="D", node_timeout=0.3)
        yield self.populate_dead_node(a, dead)
        yield dead.stop(retire=False)
        yield wait_until(
            lambda: self.redis.command("EXISTS", "signaling:node:D:alive") == 0, what="expiry"
        )
        yield a.reap()
        yield wait_until(lambda: a.listener.of("presence"), what="presence")
        self.assertNotIn("deviceType", json.loads(a.listener.of("presence")[0][0]))

    @defer.inlineCallbacks
    def test_reaping_a_large_node_in_batches(self):
        from signaling.cluster import backend

        self.patch(backend, "REAP_BATCH", 7)
        a = yield self.node(node_id="A")
        dead = yield self.node(node_id="D")
        for n in range(30):
            yield dead.claim(f"p{n}", str(n), False, 0)
            yield dead.register(f"p{n}", str(n))
        yield dead.stop(retire=False)
        self.redis.command("DEL", "signaling:node:D:alive")
        self.assertEqual((yield a.reap()), (30, ["D"]))
        yield wait_until(lambda: len(a.listener.of("presence")) == 30, what="30 offline")
        self.assertEqual(self.redis.command("ZCARD", "signaling:peers"), 0)

    @defer.inlineCallbacks
    def test_retire_releases_everything_at_once(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield self.populate_dead_node(a, b)
        yield b.stop(retire=True)
        yield wait_until(lambda: len(a.listener.calls) >= 3, what="events")
        self.assertEqual([c[0] for c in a.listener.calls[1:]], ["room_event", "presence"])
        self.assertEqual(self.redis.command("SMEMBERS", "signaling:nodes"), [b"A"])
        self.assertEqual(self.redis.command("EXISTS", "signaling:id:bob"), 0)

    @defer.inlineCallbacks
    def test_lapsed_heartbeat_asks_to_register_again(self):
        a = yield self.node(node_id="A", node_timeout=0.6)
        self.assertEqual(a.listener.calls, [("backend_restored",)])
        self.redis.command("DEL", "signaling:node:A:alive")
        yield wait_until(lambda: len(a.listener.calls) == 2, what="restored again")
        self.assertEqual(a.listener.calls, [("backend_restored",)] * 2)
        self.assertEqual(self.redis.command("EXISTS", "signaling:node:A:alive"), 1)

    @defer.inlineCallbacks
    def test_redis_restart(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield a.watch_room("r")
        yield b.claim("bob", "2", False, 0)
        self.redis.restart()
        for node in (a, b):
            yield wait_until(
                lambda: node.listener.calls[-2:] == [("backend_lost",), ("backend_restored",)],
                what="lost then restored",
            )
            self.assertTrue(node.available)
        # Redis lost everything: claim again, and everything works again.
        self.assertEqual((yield b.claim("bob", "2", False, 0, reclaim=True)).status, "new")
        self.assertEqual((yield a.route("bob", b"hi", "m", 1.0, "alice")), True)
        yield wait_until(lambda: b.listener.of("deliver"), what="delivery")
        yield b.publish_room("r", b"relay", "bob")
        yield wait_until(lambda: a.listener.of("room_event"), what="room subscription restored")
        self.assertEqual(sorted(self.redis.command("SMEMBERS", "signaling:nodes")), [b"A", b"B"])

    @defer.inlineCallbacks
    def test_redis_down_fails_fast_and_never_hangs(self):
        a = yield self.node(node_id="A")
        self.redis.stop()
        yield wait_until(lambda: not a.available, what="unavailable")
        self.assertEqual(a.listener.calls[-1], ("backend_lost",))
        started = time.monotonic()
        calls = [
            a.claim("x", "1", False, 0), a.register("x", "1"), a.release("x", "1"),
            a.join("r", "x", "1", 5), a.leave("r", "x", "1"), a.peers(),
            a.route("y", b"{}", "m", 1.0, "x"), a.reap(), a.heartbeat(), a.watch_room("r"),
            a.publish_room("r", b"", "x"), a.store.pending("y", 1.0), a.cluster_stats(),
        ]
        results = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertLess(time.monotonic() - started, TIMEOUT)
        for ok, failure in results:
            self.assertFalse(ok)
            failure.trap(BackendUnavailable)
        self.redis.start()
        yield wait_until(lambda: a.available, what="available again")

    @defer.inlineCallbacks
    def test_frozen_redis_fails_within_the_timeout(self):
        a = yield self.node(node_id="A")
        self.redis.pause()
        started = time.monotonic()
        with self.assertRaises(BackendUnavailable):
            yield a.route("y", b"{}", "m", 1.0, "x")
        self.assertLess(time.monotonic() - started, TIMEOUT * 1.5 + 1.0)
        yield wait_until(lambda: ("backend_lost",) in a.listener.calls, what="lost")
        self.redis.resume()
        yield wait_until(lambda: a.available, what="available again")

    @defer.inlineCallbacks
    def test_cluster_stats(self):
        a = yield self.node(node_id="A")
        b = yield self.node(node_id="B")
        yield a.claim("alice", "1", False, 0)
        yield a.register("alice", "1")
        yield b.route("bob", b"12345", "m", 1.0, "alice")
        self.assertEqual(
            (yield a.cluster_stats()),
            {"nodes": 2, "peers": 1, "offlineStored": 1, "offlineBytes": 5},
        )
        self.assertEqual((a.store.count, a.store.total_bytes), (1, 5))
