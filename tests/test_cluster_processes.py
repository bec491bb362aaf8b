"""
Cluster mode with real processes (``python -m signaling --redis ...``) on a
private redis-server: a node killed with SIGKILL, Redis down and restarted,
``--workers 2`` whose clients talk across the workers, and SIGTERM to the
parent of the workers, seen from another node.
"""

from __future__ import annotations

import http.client
import json
import os
import signal

from twisted.internet import defer, reactor, task

from processes import MODULE, ProcessTestCase
from redis_server import start_redis
from test_workers import WorkersTestCase

#: The node timeout of these tests: short, yet long enough that a node of a
#: busy test machine is not given up while it is alive.
NODE_TIMEOUT = "5"
#: Seconds a test waits for a dead node to be noticed: the node timeout, a
#: reaper period (a third of it), and room for a busy machine.
NOTICED_WITHIN = 15.0
PREFIX = "signaling:"


def ready_code(port: int) -> int:
    """GET /ready (blocking; the server is another process)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/ready")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@defer.inlineCallbacks
def wait_until(condition, what: str, timeout: float = 10.0):
    """Poll ``condition`` every 20 ms; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.02, lambda: None)


@defer.inlineCallbacks
def wait_ready(port: int, code: int, timeout: float = 20.0):
    """Poll /ready on ``port`` until it answers ``code``; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        try:
            if ready_code(port) == code:
                return
        except OSError:
            pass
        if reactor.seconds() > deadline:
            raise AssertionError(f"/ready on {port} never answered {code}")
        yield task.deferLater(reactor, 0.05, lambda: None)


class NodeProcessTestCase(ProcessTestCase):
    """Node processes on this test's own redis-server."""

    def setUp(self):
        self.redis = start_redis(self)

    @defer.inlineCallbacks
    def node(self, *args: str):
        """A started node process; fires with (process, ws:// URL, port)."""
        server, port = yield self.start(
            MODULE, "--port", "0", "--redis", self.redis.url, "--node-timeout", NODE_TIMEOUT,
            "--redis-timeout", "0.5", "--log-format", "json", *args,
        )
        yield wait_ready(port, 200)
        return server, f"ws://127.0.0.1:{port}/", port

    @defer.inlineCallbacks
    def joined(self, client, room: str):
        client.send({"type": "join-room", "roomId": room})
        reply = yield client.expect("join-success", skip=("peer-status", "user-joined"))
        return reply


class NodeDeathTests(NodeProcessTestCase):
    @defer.inlineCallbacks
    def test_killed_node_is_noticed_its_ids_freed_its_messages_stored(self):
        a, url_a, _ = yield self.node()
        b, url_b, _ = yield self.node()
        watcher = yield self.register(url_a, "watcher")
        victim = yield self.register(url_b, "victim", deviceType="phone")
        yield self.joined(watcher, "r")
        yield self.joined(victim, "r")
        yield watcher.expect("user-joined", skip=("peer-status",))

        node_b = self.redis.command("HGET", PREFIX + "id:victim", "node")
        channel = PREFIX.encode() + b"node:" + node_b
        os.kill(b.pid, signal.SIGKILL)
        yield victim.wait_closed()
        # Once Redis has seen B's subscriber connection close (a message
        # published in the instant before is lost, as any pub/sub message
        # in flight to a process that dies)...
        yield wait_until(lambda: self.redis.command("PUBSUB", "NUMSUB", channel)[1] == 0,
                         "Redis to notice node B's subscriber is gone")
        # ...messages to the dead node's peer are stored offline; and
        # within the node timeout (and a reaper period) it leaves its room and
        # goes offline, announced once.
        watcher.send({"type": "offer", "to": "victim", "messageId": "while-dead", "offer": {}})
        seen = {}
        while len(seen) < 3:
            try:
                message = yield watcher.next(timeout=NOTICED_WITHIN)
            except defer.TimeoutError:
                raise AssertionError(f"only {seen} arrived; node A's log:\n{a.log}")
            self.assertNotIn(message["type"], seen, message)
            seen[message["type"]] = message
        stored, left, status = seen["peer-offline"], seen["user-left"], seen["peer-status"]
        self.assertEqual((stored["messageId"], stored["queued"]), ("while-dead", True))
        self.assertEqual(left, {"type": "user-left", "userId": "victim", "roomId": "r"})
        self.assertEqual((status["peerId"], status["status"], status["deviceType"]),
                         ("victim", "offline", "phone"))
        # The id is free: it registers anew without replacing anybody, and
        # gets what was stored for it.
        again = yield self.register(url_a, "victim")
        self.assertEqual((yield again.expect("offline-message"))["messageId"], "while-dead")
        watcher.send({"type": "get-peers"})
        peers = yield watcher.expect("peers-list", skip=("peer-status",))
        self.assertEqual([p["peerId"] for p in peers["peers"]], ["victim"])
        self.assertEqual(self.redis.command("SMEMBERS", PREFIX + "nodes"),
                         [self.redis.command("HGET", PREFIX + "id:watcher", "node")])


class RedisOutageTests(NodeProcessTestCase):
    @defer.inlineCallbacks
    def test_redis_down_then_back_empty_then_restarted(self):
        _, url_a, port_a = yield self.node()
        _, url_b, port_b = yield self.node()
        a1 = yield self.register(url_a, "a1")
        a2 = yield self.register(url_a, "a2")
        b1 = yield self.register(url_b, "b1")
        # a1 hears a2 and b1 come online (b1's from the other node, later).
        online = set()
        while online != {"a2", "b1"}:
            online.add((yield a1.expect("peer-status"))["peerId"])

        # Down: same-node peers keep talking, the rest answers UNAVAILABLE.
        self.redis.stop()
        yield wait_ready(port_a, 503)
        a1.send({"type": "offer", "to": "a2", "offer": {"sdp": "local"}})
        self.assertEqual((yield a2.expect("offer", skip=("peer-status",)))["from"], "a1")
        a1.send({"type": "offer", "to": "b1", "offer": {}})
        yield a1.expect_error("UNAVAILABLE")
        newcomer = yield self.client(url_b)
        newcomer.send({"type": "register", "peerId": "late"})
        yield newcomer.expect_error("UNAVAILABLE")

        # Back, empty (no persistence): the nodes register their peers again.
        self.redis.start()
        yield wait_ready(port_a, 200)
        yield wait_ready(port_b, 200)
        a1.send({"type": "offer", "to": "b1", "offer": {}})
        self.assertEqual((yield b1.expect("offer", skip=("peer-status",)))["from"], "a1")
        b1.send({"type": "get-peers"})
        listed = yield b1.expect("peers-list", skip=("peer-status",))
        self.assertEqual(sorted(p["peerId"] for p in listed["peers"]), ["a1", "a2"])

        # A plain restart: the same.
        self.redis.restart()
        yield wait_ready(port_a, 200)
        yield wait_ready(port_b, 200)
        b1.send({"type": "offer", "to": "a2", "offer": {}})
        self.assertEqual((yield a2.expect("offer", skip=("peer-status",)))["from"], "b1")


class WorkersAcrossTests(WorkersTestCase):
    @defer.inlineCallbacks
    def test_clients_on_both_workers_talk_to_each_other(self):
        server, port = yield self.start_workers(MODULE, "--log-format", "json")
        placed = yield self.clients_on_every_worker(server, f"ws://127.0.0.1:{port}/")
        one, two = placed[1][0], placed[2][0]
        id_one = self.peer_id(server, one)
        id_two = self.peer_id(server, two)
        one.send({"type": "offer", "to": id_two, "offer": {"sdp": "x"}})
        self.assertEqual((yield two.expect("offer", skip=("peer-status",)))["from"], id_one)
        two.send({"type": "answer", "to": id_one, "answer": {"sdp": "y"}})
        self.assertEqual((yield one.expect("answer", skip=("peer-status",)))["from"], id_two)
        for client in (one, two):
            client.send({"type": "join-room", "roomId": "both"})
            yield client.expect("join-success", skip=("peer-status", "user-joined"))
        two.send({"type": "chat", "roomId": "both", "message": "across"})
        got = yield one.expect("chat", skip=("peer-status", "user-joined"))
        self.assertEqual((got["message"], got["sender"]), ("across", id_two))
        one.send({"type": "get-peers"})
        listed = yield one.expect("peers-list", skip=("peer-status", "user-joined"))
        self.assertIn(id_two, [p["peerId"] for p in listed["peers"]])

    def peer_id(self, server, client) -> str:
        """The id a client of clients_on_every_worker registered (from the JSON log)."""
        host = client.transport.getHost()
        address = f"{host.host}:{host.port}"
        for line in server.log.splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "register" and event.get("peer") == address:
                    return event["identity"]
        raise AssertionError(f"no registration of {address} in the log")

    @defer.inlineCallbacks
    def test_sigterm_to_the_parent_releases_every_peer_at_once(self):
        other, other_port = yield self.start(
            MODULE, "--port", "0", "--redis", self.redis.url, "--node-timeout", "600",
        )
        yield wait_ready(other_port, 200)
        watcher = yield self.register(f"ws://127.0.0.1:{other_port}/", "watcher")
        server, port = yield self.start_workers(
            MODULE, "--log-format", "json", "--reconnect-jitter", "0", "--node-timeout", "600",
        )
        placed = yield self.clients_on_every_worker(server, f"ws://127.0.0.1:{port}/")
        count = sum(len(group) for group in placed.values())
        online = 0
        while online < count:
            status = yield watcher.expect("peer-status")
            online += status["status"] == "online"
        server.send_signal(signal.SIGTERM)
        # Far sooner than the node timeout (600 s): the drain releases them.
        offline = set()
        while len(offline) < count:
            status = yield watcher.expect("peer-status", timeout=20)
            self.assertEqual(status["status"], "offline")
            offline.add(status["peerId"])
        self.assertEqual(len(offline), count)
        status = yield server.wait_exit(30)
        self.assertEqual(status, 0, server.log)
        ids = sorted(k.decode() for k in self.redis.command("KEYS", PREFIX + "id:*"))
        self.assertEqual(ids, [PREFIX + "id:watcher"])
        self.assertEqual(len(self.redis.command("SMEMBERS", PREFIX + "nodes")), 1)
