"""
The per-sender quota of the offline store (``--offline-max-bytes-per-sender``):
one sender id can hold only its share of the store's bytes, so a flood from
one connection leaves room for everybody else; the share is counted in the
index both stores share and, with SQLite, across a restart.
"""

from __future__ import annotations

import dataclasses

from twisted.internet import defer
from twisted.python import usage
from twisted.trial import unittest

from helpers import ServerTestCase, SqliteFileMixin
from signaling.config import Config
from signaling.messages import encode
from signaling.store import MemoryQueues, MemoryStore, QueueFull, StoreLimits
from signaling.tap import Options

NOW = 1_700_000_000.0


def msg(n):
    """A stored message of a fixed size."""
    return {"type": "message", "from": "x", "payload": f"{n:04d}"}


SIZE = len(encode(msg(0)))


class ConfigTests(unittest.SynchronousTestCase):
    def parse(self, *argv, environ=None):
        options = Options(environ=environ or {})
        options.parseOptions(["--db", ":memory:", *argv])
        return options.config

    def test_default_is_a_tenth_of_the_store(self):
        self.assertEqual(Config().offline_max_bytes_per_sender, None)
        self.assertEqual(Config().offline_sender_quota, 64 * 1024 * 1024 // 10)
        self.assertEqual(Config(offline_max_bytes=1000).offline_sender_quota, 100)
        self.assertEqual(Config(offline_max_bytes=5).offline_sender_quota, 1)
        self.assertEqual(StoreLimits().max_bytes_per_sender, Config().offline_sender_quota)

    def test_derived_again_when_the_store_size_changes(self):
        config = dataclasses.replace(Config(), offline_max_bytes=2000)
        self.assertEqual(config.offline_sender_quota, 200)
        self.assertEqual(StoreLimits.from_config(config).max_bytes_per_sender, 200)

    def test_given_value_wins(self):
        config = Config(offline_max_bytes=1000, offline_max_bytes_per_sender=5000)
        self.assertEqual(config.offline_sender_quota, 5000)
        self.assertEqual(StoreLimits.from_config(config).max_bytes_per_sender, 5000)

    def test_command_line_and_environment(self):
        self.assertEqual(self.parse("--offline-max-bytes-per-sender", "123").offline_sender_quota, 123)
        config = self.parse(environ={"SIGNALING_OFFLINE_MAX_BYTES_PER_SENDER": "456"})
        self.assertEqual(config.offline_sender_quota, 456)
        config = self.parse("--offline-max-bytes", "1000")
        self.assertEqual(config.offline_sender_quota, 100)

    def test_bad_values(self):
        for value in ("0", "-1", "lots"):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--offline-max-bytes-per-sender", value)
            self.assertIn("--offline-max-bytes-per-sender", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(environ={"SIGNALING_OFFLINE_MAX_BYTES_PER_SENDER": "x"})
        self.assertIn("SIGNALING_OFFLINE_MAX_BYTES_PER_SENDER", str(caught.exception))


class MemoryQueuesTests(unittest.SynchronousTestCase):
    """The index both stores use."""

    def setUp(self):
        self.queues = MemoryQueues(StoreLimits(max_bytes=100 * SIZE, max_bytes_per_sender=3 * SIZE))

    def add(self, sender, recipient="bob", n=0, message_id=None):
        entry = self.queues.make_entry(recipient, message_id or f"m{n}", msg(n), NOW, sender)
        self.queues.add(entry)
        return entry

    def test_exactly_the_quota(self):
        for n in range(3):
            self.add("mallory", n=n)
        self.assertEqual(self.queues.sender_bytes("mallory"), 3 * SIZE)
        with self.assertRaises(QueueFull) as caught:
            self.add("mallory", n=3)
        self.assertEqual(
            str(caught.exception),
            f"offline messages from 'mallory' may take at most {3 * SIZE} bytes of the store"
            " at once; wait until some are delivered or expire",
        )
        self.assertEqual((self.queues.count, self.queues.total_bytes), (3, 3 * SIZE))
        # Other senders, and messages without a known sender, are not affected.
        self.add("alice", n=4)
        self.add(None, n=5)
        self.assertEqual(self.queues.sender_bytes("alice"), SIZE)

    def test_one_byte_over(self):
        queues = MemoryQueues(StoreLimits(max_bytes_per_sender=2 * SIZE - 1))
        queues.add(queues.make_entry("bob", "a", msg(0), NOW, "mallory"))
        self.assertRaises(QueueFull, queues.make_entry, "bob", "b", msg(1), NOW, "mallory")

    def test_delivery_and_expiry_give_the_bytes_back(self):
        for n in range(3):
            self.add("mallory", recipient=f"r{n}", n=n)
        self.queues.remove("r0", ["m0"])
        self.assertEqual(self.queues.sender_bytes("mallory"), 2 * SIZE)
        self.add("mallory", n=9)
        self.queues.limits = dataclasses.replace(self.queues.limits, ttl=1.0)
        self.assertEqual(len(self.queues.expire(NOW + 2)), 3)
        self.assertEqual(self.queues.sender_bytes("mallory"), 0)
        self.assertEqual(self.queues._sender_bytes, {})

    def test_memory_store_refuses(self):
        store = MemoryStore(StoreLimits(max_bytes_per_sender=SIZE))
        self.successResultOf(store.enqueue("bob", "a", msg(0), NOW, sender="mallory"))
        self.failureResultOf(store.enqueue("carol", "b", msg(1), NOW, sender="mallory"), QueueFull)
        self.successResultOf(store.enqueue("carol", "b", msg(1), NOW, sender="alice"))
        self.assertEqual(store.count, 2)


class FloodTests(ServerTestCase):
    """One connection fills its share; everybody else keeps theirs (issue 11, item 8)."""

    config = {"offline_max_bytes": 20_000, "offline_max": 1000, "rate_limit": 0, "presence": "none"}

    @defer.inlineCallbacks
    def flood(self, client, to="victim"):
        """Send 1 KB messages until one is refused; fires with (queued, the refusal)."""
        queued = 0
        while True:
            client.send({"type": "message", "to": f"{to}-{queued % 3}", "payload": "x" * 1000})
            reply = yield client.next()
            if reply["type"] == "error":
                return queued, reply
            self.assertEqual(reply["type"], "peer-offline")
            queued += 1

    @defer.inlineCallbacks
    def test_a_flood_takes_only_its_share(self):
        mallory = yield self.register("mallory")
        queued, refusal = yield self.flood(mallory)
        self.assertEqual(refusal["code"], "QUEUE_FULL")
        self.assertIn("'mallory' may take at most 2000 bytes", refusal["error"])
        self.assertTrue(refusal["peerId"].startswith("victim-"))
        self.assertEqual(queued, 1)  # 2000 bytes hold one 1 KB message
        self.assertEqual(self.store.count, queued)
        self.assertLessEqual(self.store.total_bytes, 2000)

        # Nine other senders still get a whole share each.
        for n in range(9):
            friend = yield self.register(f"friend-{n}")
            got, refusal = yield self.flood(friend, to=f"peer{n}")
            self.assertEqual(got, 1)
            self.assertIn(f"'friend-{n}' may take at most", refusal["error"])

        # Delivery gives the share back.
        victim = yield self.register("victim-0")
        yield victim.expect("offline-message")
        again, _ = yield self.flood(mallory, to="later")
        self.assertEqual(again, 1)


class SqliteFloodTests(SqliteFileMixin, FloodTests):
    """The same on a real SQLite file, and the share survives a restart."""

    @defer.inlineCallbacks
    def test_the_share_holds_across_a_restart(self):
        mallory = yield self.register("mallory")
        queued, _ = yield self.flood(mallory)
        self.assertEqual(queued, 1)
        yield self.restart_server()
        self.assertEqual(self.store.count, 1)
        mallory = yield self.register("mallory")
        again, refusal = yield self.flood(mallory)
        self.assertEqual((again, refusal["code"]), (0, "QUEUE_FULL"))
