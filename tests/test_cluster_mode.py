"""
Cluster mode end to end, in this process: several nodes (servers on their
own ports) share a real redis-server; real WebSocket clients talk across
them. What the generic protocol tests of test_cluster_protocol.py do not
show: where clients land, order across nodes, global peer lists, takeover
with tokens across nodes, /stats and /ready, and Redis going away and
coming back (stopped, restarted with and without persistence, frozen).
"""

from __future__ import annotations

import json

import jwt
from twisted.internet import defer, reactor
from twisted.protocols import portforward

import redis_server
from cluster_nodes import NODE_TIMEOUT, PREFIX, ClusterServerTestCase
from helpers import WAIT, http_get, pause, wait_for

SECRET = "a-shared-secret-of-at-least-32-bytes!!"


class Placement(ClusterServerTestCase):
    @defer.inlineCallbacks
    def test_clients_land_on_every_node_and_redis_knows_where(self):
        clients = []
        for i in range(3):
            clients.append((yield self.register(f"p{i}")))
        nodes = {s.cluster.node_id for s in self.services}
        holders = {
            self.redis.command("HGET", f"{PREFIX}id:p{i}", "node").decode() for i in range(3)
        }
        self.assertEqual(holders, nodes)
        for service in self.services:
            self.assertEqual(len(service.registry.sessions), 1)

    @defer.inlineCallbacks
    def test_one_sender_to_one_recipient_keeps_its_order(self):
        a = yield self.register("a", url=self.urls[0])
        b = yield self.register("b", url=self.urls[1])
        for i in range(150):  # within the rate limit burst
            a.send({"type": "chat-line", "to": "b", "n": i})
        got = []
        while len(got) < 150:
            message = yield b.next()
            if message["type"] == "chat-line":
                got.append(message["n"])
        self.assertEqual(got, list(range(150)))

    @defer.inlineCallbacks
    def test_room_relay_and_directed_room_message_across_nodes(self):
        alice = yield self.join("r", "alice", client=(yield self.connect(url=self.urls[0])))
        bob = yield self.join("r", "bob", client=(yield self.connect(url=self.urls[1])))
        carol = yield self.join("r", "carol", client=(yield self.connect(url=self.urls[2])))
        yield alice.expect("user-joined")
        yield alice.expect("user-joined")
        yield bob.expect("user-joined")
        alice.send({"type": "chat", "roomId": "r", "message": "all"})
        self.assertEqual((yield bob.expect("chat"))["message"], "all")
        self.assertEqual((yield carol.expect("chat"))["message"], "all")
        alice.send({"type": "offer", "roomId": "r", "to": "carol", "offer": {}})
        self.assertEqual((yield carol.expect("offer"))["sender"], "alice")
        # A member that left is no longer reachable in the room.
        carol.send({"type": "leave-room", "roomId": "r"})
        yield carol.expect("leave-success")
        yield alice.expect("user-left")
        yield bob.expect("user-left")
        alice.send({"type": "offer", "roomId": "r", "to": "carol", "offer": {}})
        yield alice.expect_error("PEER_NOT_IN_ROOM")
        yield self.roundtrip(bob)
        bob.assert_quiet()

    @defer.inlineCallbacks
    def test_get_peers_in_registration_order_across_nodes(self):
        asker = yield self.connect(url=self.urls[0])
        names = [f"n{i}" for i in range(7)]
        for i, name in enumerate(names):
            yield self.register(name, url=self.urls[i % 3], deviceType=f"t{i}")
        asker.send({"type": "get-peers"})
        reply = yield asker.expect("peers-list")
        self.assertEqual([p["peerId"] for p in reply["peers"]], names)
        self.assertEqual([p["deviceType"] for p in reply["peers"]], [f"t{i}" for i in range(7)])
        seen, cursor = [], None
        while True:
            request = {"type": "get-peers", "limit": 3}
            if cursor:
                request["cursor"] = cursor
            asker.send(request)
            page = yield asker.expect("peers-list")
            self.assertEqual(page["total"], 7)
            seen += [p["peerId"] for p in page["peers"]]
            cursor = page.get("nextCursor")
            if cursor is None:
                break
        self.assertEqual(seen, names)

    @defer.inlineCallbacks
    def test_a_session_closing_while_its_peer_reconnects_elsewhere(self):
        """The departure and the comeback are seen in that order on every node."""
        watcher = yield self.register("watcher", url=self.urls[2])
        old = yield self.register("p", url=self.urls[0])
        yield watcher.expect("peer-status")
        yield old.drop()
        # Gone from Redis (a comeback before that would be a takeover, announcing nothing).
        yield wait_for(lambda: self.redis.command("EXISTS", f"{PREFIX}id:p") == 0, "the release")
        yield self.register("p", url=self.urls[1])
        statuses = []
        while len(statuses) < 2:
            statuses.append((yield watcher.expect("peer-status"))["status"])
        self.assertEqual(statuses, ["offline", "online"])
        watcher.send({"type": "get-peers"})
        self.assertEqual([p["peerId"] for p in (yield watcher.expect("peers-list"))["peers"]], ["p"])

    @defer.inlineCallbacks
    def test_stats_has_the_cluster_totals_and_ready_is_200(self):
        yield self.register("a", url=self.urls[0])
        yield self.register("b", url=self.urls[1])
        b2 = yield self.register("c", url=self.urls[1])
        b2.send({"type": "offer", "to": "nobody", "offer": {}})
        yield b2.expect("peer-offline")
        _, body = yield http_get(self.http + "/stats")
        stats = json.loads(body)
        self.assertEqual((stats["connections"], stats["peers"]), (1, 1))  # this node's own
        cluster = stats.pop("cluster")
        self.assertEqual(cluster, {
            "nodeId": self.service.cluster.node_id, "available": True,
            "nodes": 3, "peers": 3, "offlineStored": 1, "offlineBytes": cluster["offlineBytes"],
        })
        self.assertGreater(cluster["offlineBytes"], 0)
        self.assertEqual(set(stats), {
            "connections", "connectionsTotal", "peers", "rooms", "forwarded", "offlineQueued",
            "offlineStored", "offlineBytes", "offlineQuarantined", "uptime", "pid",
        })
        response, body = yield http_get(self.http + "/ready")
        self.assertEqual((response.code, json.loads(body)), (200, {"status": "ready"}))


class OfflineCapsAcrossNodes(ClusterServerTestCase):
    # The per-sender quota is a tenth of the store's bytes: 600 here.
    config = {"offline_max_bytes": 6000, "offline_max": 3}

    @defer.inlineCallbacks
    def test_limits_hold_for_the_whole_cluster(self):
        greedy = yield self.register("greedy", url=self.urls[0])
        for i in range(2):
            greedy.send({"type": "offer", "to": f"t{i}", "offer": {"sdp": "x" * 200}})
            yield greedy.expect("peer-offline")
        greedy.send({"type": "offer", "to": "t2", "messageId": "over", "offer": {"sdp": "x" * 200}})
        error = yield greedy.expect_error("QUEUE_FULL")
        self.assertIn("quota", error["error"])
        self.assertEqual(error["messageId"], "over")
        # Other senders, on other nodes, still have theirs; one recipient's
        # queue is full for everybody.
        for i, url in enumerate(self.urls[1:]):
            other = yield self.register(f"other{i}", url=url)
            other.send({"type": "offer", "to": "t0", "offer": {}})
            yield other.expect("peer-offline")
        late = yield self.register("late", url=self.urls[2])
        late.send({"type": "offer", "to": "t0", "offer": {}})
        error = yield late.expect_error("QUEUE_FULL")
        self.assertIn("'t0' is full", error["error"])
        self.assertEqual(self.store.count, 4)


class TokensAcrossNodes(ClusterServerTestCase):
    config = {"auth_secret": SECRET}

    def token(self, sub):
        now = int(self.clock.seconds())
        return jwt.encode({"sub": sub, "iat": now, "exp": now + 300}, SECRET, algorithm="HS256")

    @defer.inlineCallbacks
    def test_authenticated_holder_is_kept_against_a_plain_newcomer_elsewhere(self):
        holder = yield self.register("alice", url=self.urls[0], token=self.token("alice"))
        intruder = yield self.connect(url=self.urls[1])
        intruder.send({"type": "register", "peerId": "alice"})
        yield intruder.expect_error("FORBIDDEN")
        yield self.roundtrip(holder)
        # A newcomer with a token for the id takes it over, on any node.
        newcomer = yield self.register("alice", url=self.urls[2], token=self.token("alice"))
        code, reason = yield holder.wait_closed()
        self.assertEqual((code, reason), (4001, "replaced"))
        yield self.roundtrip(newcomer)


class CuttableProxy:
    """
    A TCP forwarder to Redis for one node: cutting it (refusing and
    dropping its connections) takes that node away from Redis while the
    others keep it, as a network partition would.
    """

    def __init__(self, target_port: int) -> None:
        self.factory = portforward.ProxyFactory("127.0.0.1", target_port)
        self.connections: list = []
        build = self.factory.buildProtocol

        def tracked(address):
            protocol = build(address)
            self.connections.append(protocol)
            return protocol

        self.factory.buildProtocol = tracked
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    @defer.inlineCallbacks
    def cut(self):
        """Refuse new connections and drop the open ones (both directions)."""
        if self.listening is not None:
            listening, self.listening = self.listening, None
            yield listening.stopListening()
        connections, self.connections = self.connections, []
        for protocol in connections:
            for side in (protocol, protocol.peer):
                if side is not None and side.transport is not None:
                    side.transport.abortConnection()

    def restore(self):
        """Accept connections again, on the same port."""
        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")


class OutageTestCase(ClusterServerTestCase):
    """
    Two nodes on a private redis-server of their own, which the tests stop,
    start and freeze; node 0 reaches it through a :class:`CuttableProxy`.
    """

    nodes = 2
    appendonly = False

    def redis_server(self):
        server = redis_server.RedisServer(
            appendonly=self.appendonly, appendfsync="always", tcp=True
        )
        self.addCleanup(server.cleanup)
        server.start()
        self.proxy = CuttableProxy(server.port)
        self.addCleanup(self.proxy.cut)
        return server

    def node_overrides(self, index):
        if index == 0:
            return {"redis_url": f"redis://127.0.0.1:{self.proxy.port}/0"}
        return {}

    @defer.inlineCallbacks
    def wait_ready_code(self, index, code):
        """Poll node ``index``'s /ready until it answers ``code`` (bounded)."""
        url = f"http://127.0.0.1:{self.services[index].ports()[0].getHost().port}/ready"
        deadline = reactor.seconds() + 2 * WAIT
        while True:
            response, _ = yield http_get(url)
            if response.code == code:
                return
            if reactor.seconds() > deadline:
                raise AssertionError(f"/ready of node {index} never answered {code}")
            yield pause(0.05)

    @defer.inlineCallbacks
    def populate(self):
        """alice and bob on node 0, carol on node 1, all registered and in room r."""
        alice = yield self.register("alice", url=self.urls[0])
        bob = yield self.register("bob", url=self.urls[0])
        carol = yield self.register("carol", url=self.urls[1])
        yield self.settle(alice, bob, carol)
        for client in (alice, bob, carol):
            client.send({"type": "join-room", "roomId": "r"})
            yield client.expect("join-success", skip=("user-joined",))
        yield self.settle(alice, bob, carol)
        return alice, bob, carol

    @defer.inlineCallbacks
    def settle(self, *clients):
        """Read every client's inbox up to a pong (presence and joins come async)."""
        yield pause(0.2)
        for client in clients:
            client.send({"type": "ping"})
            while (yield client.next())["type"] != "pong":
                pass


class RedisDownTests(OutageTestCase):
    appendonly = True

    @defer.inlineCallbacks
    def test_local_peers_keep_talking_global_requests_answer_unavailable(self):
        alice, bob, carol = yield self.populate()
        self.redis.stop()
        yield self.wait_ready_code(0, 503)
        _, body = yield http_get(self.http + "/ready")
        self.assertEqual(json.loads(body), {"status": "unavailable"})

        # Same node: directed and room relay go on.
        alice.send({"type": "offer", "to": "bob", "offer": {"sdp": "x"}})
        self.assertEqual((yield bob.expect("offer"))["from"], "alice")
        alice.send({"type": "chat", "roomId": "r", "message": "still here"})
        self.assertEqual((yield bob.expect("chat"))["message"], "still here")
        # Anything that needs Redis: UNAVAILABLE, never a false success.
        alice.send({"type": "offer", "to": "carol", "messageId": "x1", "offer": {}})
        error = yield alice.expect_error("UNAVAILABLE")
        self.assertEqual(error["messageId"], "x1")
        for request in ({"type": "get-peers"}, {"type": "join-room", "roomId": "other"},
                        {"type": "leave-room", "roomId": "r"}):
            alice.send(request)
            yield alice.expect_error("UNAVAILABLE")
        newcomer = yield self.connect(url=self.urls[0])
        newcomer.send({"type": "register", "peerId": "dave"})
        yield newcomer.expect_error("UNAVAILABLE")
        _, body = yield http_get(self.http + "/stats")
        self.assertEqual(json.loads(body)["cluster"]["available"], False)

        # bob leaves during the outage: node 0 tells its own at once...
        yield bob.drop()
        self.assertEqual((yield alice.expect("user-left"))["userId"], "bob")
        self.assertEqual((yield alice.expect("peer-status"))["status"], "offline")

        # ...and once Redis is back with its data (appendonly), node 0
        # releases bob, which carol hears, and both nodes claim their
        # peers again. (Node 0 comes back last, so that carol's node listens.)
        yield self.proxy.cut()
        self.redis.start()
        yield self.wait_ready_code(1, 200)
        self.proxy.restore()
        yield self.wait_ready_code(0, 200)
        self.assertEqual((yield carol.expect("user-left"))["userId"], "bob")
        self.assertEqual((yield carol.expect("peer-status"))["status"], "offline")
        alice.send({"type": "offer", "to": "carol", "offer": {}})
        self.assertEqual((yield carol.expect("offer"))["from"], "alice")
        carol.send({"type": "chat", "roomId": "r", "message": "back"})
        self.assertEqual((yield alice.expect("chat"))["message"], "back")
        carol.send({"type": "get-peers"})
        self.assertEqual([p["peerId"] for p in (yield carol.expect("peers-list"))["peers"]], ["alice"])
        self.assertEqual(self.registry.rooms, {"r": ["alice", "carol"]})

    @defer.inlineCallbacks
    def test_acknowledged_offline_message_survives_a_redis_crash(self):
        sender = yield self.register("sender", url=self.urls[0])
        sender.send({"type": "offer", "to": "later", "messageId": "keep", "offer": {"sdp": "1"}})
        self.assertTrue((yield sender.expect("peer-offline"))["queued"])
        self.redis.restart(kill=True)  # SIGKILL: only what reached the AOF survives
        yield self.wait_ready_code(1, 200)
        later = yield self.register("later", url=self.urls[1])
        self.assertEqual((yield later.expect("offline-message"))["messageId"], "keep")


class RedisRestartTests(OutageTestCase):
    """Redis restarts without persistence: it forgets everything; the nodes put it back."""

    @defer.inlineCallbacks
    def test_nodes_register_their_peers_and_rooms_again(self):
        alice, bob, carol = yield self.populate()
        self.redis.restart()
        self.assertEqual(self.redis.command("KEYS", "*"), [])
        yield self.wait_ready_code(0, 200)
        yield self.wait_ready_code(1, 200)
        yield wait_for(lambda: self.redis.command("ZCARD", PREFIX + "peers") == 3, "re-registration")
        carol.send({"type": "offer", "to": "alice", "offer": {}})
        self.assertEqual((yield alice.expect("offer"))["from"], "carol")
        alice.send({"type": "chat", "roomId": "r", "message": "hello again"})
        self.assertEqual((yield carol.expect("chat"))["message"], "hello again")
        self.assertEqual((yield bob.expect("chat"))["message"], "hello again")
        carol.send({"type": "get-peers"})
        listed = [p["peerId"] for p in (yield carol.expect("peers-list"))["peers"]]
        self.assertEqual(sorted(listed), ["alice", "bob"])
        self.assertEqual(sorted(self.registry.rooms["r"]), ["alice", "bob", "carol"])
        # Nobody was told that anything went away.
        yield self.roundtrip(carol)
        carol.assert_quiet()

    @defer.inlineCallbacks
    def test_a_newer_holder_elsewhere_wins_after_a_partition(self):
        alice, bob, carol = yield self.populate()
        yield self.proxy.cut()  # node 0 alone loses Redis
        yield self.wait_ready_code(0, 503)
        newcomer = yield self.register("alice", url=self.urls[1])
        self.proxy.restore()
        code, reason = yield alice.wait_closed()
        self.assertEqual((code, reason), (4001, "replaced"))
        yield self.wait_ready_code(0, 200)
        # bob, the other peer of node 0, is still there for everyone.
        carol.send({"type": "offer", "to": "bob", "offer": {}})
        self.assertEqual((yield bob.expect("offer", skip=("peer-status",)))["from"], "carol")
        newcomer.send({"type": "offer", "to": "bob", "offer": {}})
        self.assertEqual((yield bob.expect("offer", skip=("peer-status",)))["from"], "alice")


class GivenUpTests(OutageTestCase):
    @defer.inlineCallbacks
    def test_a_node_cut_off_too_long_is_announced_gone_then_back(self):
        alice, bob, carol = yield self.populate()
        yield self.proxy.cut()  # node 0 alone loses Redis, past the node timeout
        events = set()
        while len(events) < 4:
            message = yield carol.next(timeout=4 * NODE_TIMEOUT)
            events.add((message["type"], message.get("userId") or message.get("peerId"),
                        message.get("status")))
        self.assertEqual(events, {("user-left", "alice", None), ("user-left", "bob", None),
                                  ("peer-status", "alice", "offline"),
                                  ("peer-status", "bob", "offline")})
        # Node 0 is back: its peers are claimed again and announced anew, to
        # the other nodes only (its own never saw them go).
        self.proxy.restore()
        events = set()
        while len(events) < 4:
            message = yield carol.next(timeout=4 * NODE_TIMEOUT)
            events.add((message["type"], message.get("userId") or message.get("peerId"),
                        message.get("status")))
        self.assertEqual(events, {("user-joined", "alice", None), ("user-joined", "bob", None),
                                  ("peer-status", "alice", "online"),
                                  ("peer-status", "bob", "online")})
        carol.send({"type": "offer", "to": "alice", "offer": {}})
        self.assertEqual((yield alice.expect("offer"))["from"], "carol")
        yield self.roundtrip(bob)
        bob.assert_quiet()
        self.assertEqual(sorted(self.registry.rooms["r"]), ["alice", "bob", "carol"])


class FrozenRedisTests(OutageTestCase):
    @defer.inlineCallbacks
    def test_requests_answer_unavailable_in_bounded_time(self):
        alice, bob, carol = yield self.populate()
        self.redis.pause()  # SIGSTOP: connections stay open, nothing is answered
        alice.send({"type": "offer", "to": "carol", "offer": {}})
        yield alice.expect_error("UNAVAILABLE")  # within helpers.WAIT
        yield self.wait_ready_code(0, 503)
        alice.send({"type": "offer", "to": "bob", "offer": {}})
        yield bob.expect("offer")
        self.redis.resume()
        yield self.wait_ready_code(0, 200)
        yield self.wait_ready_code(1, 200)
        alice.send({"type": "offer", "to": "carol", "offer": {}})
        yield carol.expect("offer")
