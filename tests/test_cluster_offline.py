"""
RedisOfflineStore against a real redis-server: acknowledged writes, exact
round trips, limits and the per-sender quota, expiry, shared totals, outages
and Redis persistence.
"""

from __future__ import annotations

from twisted.internet import defer

import redis_server
from cluster_helpers import RedisTestCase, wait_until
from signaling.cluster import BackendUnavailable, OfflineLimits, RedisOfflineStore, parse_redis_url
from signaling.cluster import offline
from signaling.messages import encode
from signaling.store import IOfflineStore, QueueFull, StoreLimits

NOW = 1_700_000_000.0


def msg(n, **extra):
    """A message as a recipient would receive it."""
    return {"type": "message", "from": "alice", "payload": {"n": n}, **extra}


def ids(entries):
    return [entry.message_id for entry in entries]


class StoreTestCase(RedisTestCase):
    @defer.inlineCallbacks
    def store(self, limits=OfflineLimits(), address=None, **options):
        connection = yield self.commands(address=address)
        store = RedisOfflineStore(connection, self.reactor, limits, **options)
        self.addCleanup(store.close)
        return store


class BasicTests(StoreTestCase):
    """enqueue / pending / remove / expire."""

    @defer.inlineCallbacks
    def test_interface_and_limits(self):
        store = yield self.store(StoreLimits(max_bytes=1000))
        self.assertTrue(IOfflineStore.providedBy(store))
        self.assertEqual(store.limits.sender_quota, 100)
        self.assertEqual(OfflineLimits(max_bytes_per_sender=7).sender_quota, 7)

    @defer.inlineCallbacks
    def test_enqueue_fires_once_redis_has_it(self):
        store = yield self.store()
        d = store.enqueue("bob", "m1", msg(1), NOW, "alice")
        self.assertFalse(d.called)
        entry = yield d
        # Redis has it by the time the Deferred fired.
        self.assertEqual(self.redis.command("LLEN", "signaling:offline:q:bob"), 1)
        self.assertEqual((entry.recipient, entry.message_id, entry.stored_at), ("bob", "m1", NOW))
        self.assertEqual(entry.body, encode(msg(1)))
        self.assertEqual((store.count, store.total_bytes), (1, entry.size))
        [pending] = yield store.pending("bob", NOW)
        self.assertEqual(pending, entry)

    @defer.inlineCallbacks
    def test_exact_round_trip(self):
        store = yield self.store()
        messages = [
            msg(0, text="\x00\x01\x7f nul and controls"),
            msg(1, text="é 日本 \U0001F600 \u2028\u2029 \ud800 lone surrogate"),
            msg(2, text="x" * 1_000_000),
            msg(3, nested=[[{"a": [None, True, 1.5e300, -0.0, 10**30]}]]),
            {"type": "offer", "sdp": "v=0\r\n" * 1000, "from": "alice:1:2"},
        ]
        weird_ids = ["m\x00", "12:34:", "\ud800x", "é" * 50, ""]
        for n, (message, message_id) in enumerate(zip(messages, weird_ids)):
            yield store.enqueue("bob:\u00e9", message_id, message, NOW + n, "s:1")
        entries = yield store.pending("bob:\u00e9", NOW + 10)
        self.assertEqual(ids(entries), weird_ids)
        self.assertEqual([e.message for e in entries], messages)
        self.assertEqual([e.body for e in entries], [encode(m) for m in messages])
        self.assertEqual([e.stored_at for e in entries], [NOW + n for n in range(5)])

    @defer.inlineCallbacks
    def test_unencodable_message_is_refused_before_redis(self):
        store = yield self.store()
        with self.assertRaises(TypeError):
            yield store.enqueue("bob", "m", {"type": "x", "n": object()}, NOW)
        self.assertEqual(store.count, 0)

    @defer.inlineCallbacks
    def test_order_and_ttl(self):
        store = yield self.store(OfflineLimits(ttl=100))
        for n in range(5):
            yield store.enqueue("bob", f"m{n}", msg(n), NOW + n * 10)
        self.assertEqual(ids((yield store.pending("bob", NOW + 45))), [f"m{n}" for n in range(5)])
        # Nothing past the TTL is ever returned, expired or not yet.
        self.assertEqual(ids((yield store.pending("bob", NOW + 120))), ["m3", "m4"])
        self.assertEqual((yield store.expire(NOW + 120)), 3)
        self.assertEqual(store.count, 2)
        self.assertEqual(self.redis.command("LLEN", "signaling:offline:q:bob"), 2)
        self.assertEqual((yield store.expire(NOW + 120)), 0)
        self.assertEqual((yield store.expire(NOW + 1000)), 2)
        self.assertEqual((store.count, store.total_bytes), (0, 0))
        self.assertEqual(self.redis.command("KEYS", "*offline:q*"), [])
        self.assertEqual(self.redis.command("ZCARD", "signaling:offline:due"), 0)

    @defer.inlineCallbacks
    def test_expire_in_batches(self):
        self.patch(offline, "EXPIRE_BATCH", 3)
        store = yield self.store(OfflineLimits(ttl=10))
        for n in range(10):
            yield store.enqueue(f"p{n}", "m", msg(n), NOW, "alice")
        yield store.enqueue("p0", "new", msg(0), NOW + 20, "alice")
        self.assertEqual((yield store.expire(NOW + 15)), 10)
        self.assertEqual(ids((yield store.pending("p0", NOW + 20))), ["new"])
        self.assertEqual(self.redis.command("HGET", "signaling:offline:senders", "alice"),
                         b"%d" % len(encode(msg(0))))

    @defer.inlineCallbacks
    def test_remove_every_entry_with_those_ids(self):
        store = yield self.store()
        for n, message_id in enumerate(["a", "b", "a", "c", "d"]):
            yield store.enqueue("bob", message_id, msg(n), NOW, "alice")
        self.assertEqual((yield store.remove("bob", ["a", "d", "zzz"])), 3)
        entries = yield store.pending("bob", NOW)
        self.assertEqual(ids(entries), ["b", "c"])
        self.assertEqual((store.count, store.total_bytes), (2, sum(e.size for e in entries)))
        self.assertEqual((yield store.remove("bob", ["nope"])), 0)
        self.assertEqual((yield store.remove("nobody", ["b"])), 0)
        self.assertEqual((yield store.remove("bob", [])), 0)
        self.assertEqual((yield store.remove("bob", ["b", "c"])), 2)
        self.assertEqual((store.count, store.total_bytes), (0, 0))
        self.assertEqual(self.redis.command("HLEN", "signaling:offline:senders"), 0)
        self.assertEqual(self.redis.command("ZCARD", "signaling:offline:due"), 0)

    @defer.inlineCallbacks
    def test_remove_keeps_expiry_of_the_rest(self):
        store = yield self.store(OfflineLimits(ttl=100))
        yield store.enqueue("bob", "old", msg(0), NOW)
        yield store.enqueue("bob", "new", msg(1), NOW + 50)
        yield store.remove("bob", ["old"])
        self.assertEqual((yield store.expire(NOW + 120)), 0)
        self.assertEqual((yield store.expire(NOW + 150)), 1)


class LimitTests(StoreTestCase):
    """Every cap refuses with QueueFull and stores nothing."""

    @defer.inlineCallbacks
    def assert_refused(self, store, text, *args):
        def state():
            stats = self.redis.command("HGETALL", "signaling:offline:stats")
            senders = self.redis.command("HGETALL", "signaling:offline:senders")
            return stats, senders, self.redis.command("DBSIZE"), store.count, store.total_bytes

        before = state()
        with self.assertRaises(QueueFull) as e:
            yield store.enqueue(*args)
        self.assertIn(text, str(e.exception))
        self.assertEqual(state(), before)

    @defer.inlineCallbacks
    def test_per_peer(self):
        store = yield self.store(OfflineLimits(max_per_peer=3))
        for n in range(3):
            yield store.enqueue("bob", f"m{n}", msg(n), NOW, "alice")
        yield self.assert_refused(store, "'bob' is full (3 messages)", "bob", "m3", msg(3), NOW, "alice")
        yield store.enqueue("carol", "m", msg(0), NOW, "alice")

    @defer.inlineCallbacks
    def test_recipients(self):
        store = yield self.store(OfflineLimits(max_peers=2))
        yield store.enqueue("p1", "m", msg(1), NOW)
        yield store.enqueue("p2", "m", msg(2), NOW)
        yield self.assert_refused(store, "too many peers", "p3", "m", msg(3), NOW)
        yield store.enqueue("p1", "m2", msg(1), NOW)
        yield store.remove("p1", ["m", "m2"])
        yield store.enqueue("p3", "m", msg(3), NOW)

    @defer.inlineCallbacks
    def test_total_bytes(self):
        size = len(encode(msg(0)))
        store = yield self.store(OfflineLimits(max_bytes=size * 3, max_bytes_per_sender=size * 3))
        for n in range(3):
            yield store.enqueue(f"p{n}", "m", msg(0), NOW)
        yield self.assert_refused(store, "offline store is full", "p9", "m", msg(0), NOW)

    @defer.inlineCallbacks
    def test_sender_quota(self):
        size = len(encode(msg(0)))
        store = yield self.store(OfflineLimits(max_bytes=size * 20))  # quota: 2 messages
        yield store.enqueue("p1", "m1", msg(0), NOW, "alice")
        yield store.enqueue("p2", "m2", msg(0), NOW, "alice")
        yield self.assert_refused(store, "quota", "p3", "m3", msg(0), NOW, "alice")
        # Others are not affected; messages without a sender are not counted to anyone.
        yield store.enqueue("p3", "m3", msg(0), NOW, "bob")
        yield store.enqueue("p3", "m4", msg(0), NOW)
        yield store.enqueue("p3", "m5", msg(0), NOW)
        yield store.enqueue("p3", "m6", msg(0), NOW)
        # Delivered messages give the quota back.
        yield store.remove("p1", ["m1"])
        yield store.enqueue("p3", "m7", msg(0), NOW, "alice")

    @defer.inlineCallbacks
    def test_limits_hold_across_nodes(self):
        first = yield self.store(OfflineLimits(max_per_peer=2))
        second = yield self.store(OfflineLimits(max_per_peer=2))
        yield first.enqueue("bob", "m1", msg(1), NOW)
        yield second.enqueue("bob", "m2", msg(2), NOW)
        yield self.assert_refused(first, "is full", "bob", "m3", msg(3), NOW)
        self.assertEqual((yield first.refresh()), (2, second.total_bytes))


class TotalsAndOutageTests(StoreTestCase):
    """Cached cluster totals; outages; persistence."""

    @defer.inlineCallbacks
    def test_totals_refresh_by_themselves(self):
        first = yield self.store(refresh_interval=0.05)
        second = yield self.store()
        first.start()
        yield second.enqueue("bob", "m", msg(1), NOW)
        yield wait_until(lambda: first.count == 1, what="the refresh")
        self.assertEqual(first.total_bytes, second.total_bytes)

    @defer.inlineCallbacks
    def test_flush_waits_for_earlier_writes(self):
        store = yield self.store()
        writes = [store.enqueue("bob", f"m{n}", msg(n), NOW) for n in range(50)]
        yield store.flush()
        self.assertTrue(all(d.called for d in writes))
        self.assertEqual(self.redis.command("LLEN", "signaling:offline:q:bob"), 50)
        yield defer.gatherResults(writes)

    @defer.inlineCallbacks
    def test_redis_down_is_never_success(self):
        store = yield self.store()
        self.redis.stop()
        yield wait_until(lambda: not store.connection.up, what="down")
        for call in (
            store.enqueue("bob", "m", msg(1), NOW), store.pending("bob", NOW),
            store.remove("bob", ["m"]), store.expire(NOW), store.refresh(),
        ):
            with self.assertRaises(BackendUnavailable):
                yield call
        yield store.flush()  # nothing left to wait for
        self.redis.start()

    @defer.inlineCallbacks
    def test_acknowledged_messages_survive_a_redis_crash(self):
        durable = redis_server.RedisServer(appendonly=True, appendfsync="always")
        durable.start()
        self.addCleanup(durable.cleanup)
        address = parse_redis_url(durable.url)
        store = yield self.store(address=address)
        for n in range(20):
            yield store.enqueue(f"p{n % 3}", f"m{n}", msg(n, text="é\x00"), NOW + n, "alice")
        durable.restart(kill=True)  # SIGKILL: only what reached the AOF survives
        yield wait_until(lambda: store.connection.up, what="reconnected")
        reopened = yield self.store(address=address)
        yield reopened.refresh()
        self.assertEqual(reopened.count, 20)
        entries = yield reopened.pending("p1", NOW + 30)
        self.assertEqual(ids(entries), [f"m{n}" for n in range(20) if n % 3 == 1])
        self.assertEqual(entries[0].message, msg(1, text="é\x00"))
        self.assertEqual((yield reopened.remove("p1", ids(entries))), len(entries))
