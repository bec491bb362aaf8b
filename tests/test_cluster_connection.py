"""
The Redis client adapter against a real redis-server: order on the one
command connection, bounded failures while Redis is down or frozen,
reconnection, resubscription, script reloading and logging in.
"""

from __future__ import annotations

import os
import time

from twisted.internet import defer
from twisted.trial import unittest

import redis_server
from cluster_helpers import TIMEOUT, RedisTestCase, command_calls, wait_until
from signaling.cluster import BackendError, BackendUnavailable, parse_redis_url
from signaling.cluster.connection import MAX_BATCH_ITEMS, CommandConnection, Script
from signaling.cluster.scripts import load_scripts


class CommandTests(RedisTestCase):
    """One command connection: replies, order, errors."""

    @defer.inlineCallbacks
    def test_bytes_round_trip_exactly(self):
        connection = yield self.commands()
        value = bytes(range(256)) * 300 + "é\u2028\U0001F600".encode()
        yield connection.execute(b"SET", b"k\x00", value)
        self.assertEqual((yield connection.execute(b"GET", b"k\x00")), value)
        # Numbers stay bytes: nothing is converted behind our back.
        yield connection.execute(b"SET", b"n", b"12")
        self.assertEqual((yield connection.execute(b"GET", b"n")), b"12")

    @defer.inlineCallbacks
    def test_many_publishes_keep_their_order(self):
        received = []
        subscriber = yield self.subscriber(lambda channel, payload: received.append(payload))
        yield subscriber.subscribe(b"chan")
        connection = yield self.commands()
        count = 3000
        sends = [connection.execute(b"PUBLISH", b"chan", b"%d" % n) for n in range(count)]
        # Interleave scripts with the publishes: they share the one connection.
        script = Script("echo", "redis.call('PUBLISH', 'chan', ARGV[1]) return 1")
        sends += [connection.execute(b"EVAL", script.text, 0, b"script-%d" % n) for n in range(3)]
        replies = yield defer.gatherResults(sends)
        self.assertEqual(replies[:count], [1] * count)
        yield wait_until(
            lambda: len(received) == count + 3,
            timeout=20,
            what=lambda: f"every publish (received {len(received)} of {count + 3})",
        )
        self.assertEqual(received[:count], [b"%d" % n for n in range(count)])

    @defer.inlineCallbacks
    def test_redis_errors_are_backend_errors(self):
        connection = yield self.commands()
        yield connection.execute(b"SET", b"k", b"v")
        with self.assertRaises(BackendError) as e:
            yield connection.execute(b"LPUSH", b"k", b"x")
        self.assertIn("WRONGTYPE", str(e.exception))
        # The connection is still usable, and replies still match their commands.
        self.assertEqual((yield connection.execute(b"GET", b"k")), b"v")

    @defer.inlineCallbacks
    def test_scripts_are_loaded_on_connect_and_reloaded_after_flush(self):
        script = Script("double", "return tonumber(ARGV[1]) * 2")
        connection = yield self.commands(scripts=[script])
        self.assertEqual(self.redis.command("SCRIPT", "EXISTS", script.sha), [1])
        self.assertEqual((yield connection.run(script, b"21")), 42)
        self.redis.command("SCRIPT", "FLUSH")
        self.assertEqual((yield connection.run(script, b"5")), 10)
        self.assertEqual((yield connection.run(script, b"6")), 12)

    @defer.inlineCallbacks
    def test_select_database(self):
        connection = yield self.commands(address=parse_redis_url(self.redis.url + "?db=3"))
        yield connection.execute(b"SET", b"where", b"db3")
        self.assertEqual(self.redis.command("SELECT", "3"), b"OK")
        other = yield self.commands()
        self.assertIsNone((yield other.execute(b"GET", b"where")))


#: A batched script: after a tag (the head), items of (channel, payload);
#: publishes each payload and replies "<tag>:<payload>" for each item.
PUBLISH_EACH = Script("publish-each", """
local replies = {}
for i = 2, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
  replies[#replies + 1] = ARGV[1] .. ':' .. ARGV[i + 1]
end
return replies
""")


class BatchTests(RedisTestCase):
    """run_batched: one script call per turn of the reactor, in order with every other command."""

    HEAD = (b"h",)

    def batched(self, connection, payload, head=HEAD):
        return connection.run_batched(PUBLISH_EACH, head, (b"chan", payload))

    @defer.inlineCallbacks
    def test_items_of_one_turn_share_one_call(self):
        connection = yield self.commands(scripts=[PUBLISH_EACH])
        self.redis.command("CONFIG", "RESETSTAT")
        replies = yield defer.gatherResults(
            [self.batched(connection, b"%d" % n) for n in range(100)]
        )
        self.assertEqual(replies, [b"h:%d" % n for n in range(100)])
        self.assertEqual(command_calls(self.redis)["evalsha"], 1)

    @defer.inlineCallbacks
    def test_other_commands_keep_their_place(self):
        received = []
        subscriber = yield self.subscriber(lambda channel, payload: received.append(payload))
        yield subscriber.subscribe(b"chan")
        connection = yield self.commands(scripts=[PUBLISH_EACH])
        self.redis.command("CONFIG", "RESETSTAT")
        sends = [
            self.batched(connection, b"1"),
            self.batched(connection, b"2"),
            connection.execute(b"PUBLISH", b"chan", b"3"),
            self.batched(connection, b"4"),
            self.batched(connection, b"5", head=(b"other",)),  # another head: another call
            self.batched(connection, b"6"),
        ]
        replies = yield defer.gatherResults(sends)
        self.assertEqual(replies, [b"h:1", b"h:2", 1, b"h:4", b"other:5", b"h:6"])
        yield wait_until(lambda: len(received) == 6, what=lambda: f"six messages, got {received}")
        self.assertEqual(received, [b"1", b"2", b"3", b"4", b"5", b"6"])
        self.assertEqual(command_calls(self.redis)["evalsha"], 4)

    @defer.inlineCallbacks
    def test_a_full_batch_is_sent_at_once(self):
        connection = yield self.commands(scripts=[PUBLISH_EACH])
        self.redis.command("CONFIG", "RESETSTAT")
        count = MAX_BATCH_ITEMS + 10
        replies = yield defer.gatherResults(
            [self.batched(connection, b"%d" % n) for n in range(count)]
        )
        self.assertEqual(replies, [b"h:%d" % n for n in range(count)])
        self.assertEqual(command_calls(self.redis)["evalsha"], 2)

    @defer.inlineCallbacks
    def test_a_lost_script_is_sent_again(self):
        connection = yield self.commands(scripts=[PUBLISH_EACH])
        self.redis.command("SCRIPT", "FLUSH")
        replies = yield defer.gatherResults([self.batched(connection, b"%d" % n) for n in range(3)])
        self.assertEqual(replies, [b"h:0", b"h:1", b"h:2"])

    @defer.inlineCallbacks
    def assert_every_item_fails(self, script, count, text):
        """``count`` items of ``script`` in one call each fail with BackendError saying ``text``."""
        connection = yield self.commands(scripts=[script])
        items = [connection.run_batched(script, (), (b"%d" % n,)) for n in range(count)]
        for item in items:
            with self.assertRaises(BackendError) as e:
                yield item
            self.assertIn(text, str(e.exception))
        return connection

    @defer.inlineCallbacks
    def test_an_error_fails_every_item(self):
        failing = Script("failing", "return redis.error_reply('no way')")
        connection = yield self.assert_every_item_fails(failing, 3, "no way")
        self.assertEqual((yield connection.execute(b"PING")), b"PONG")

    def test_a_reply_of_the_wrong_length_fails_every_item(self):
        return self.assert_every_item_fails(Script("short", "return {1}"), 2, "answered 2 items")

    @defer.inlineCallbacks
    def test_items_fail_when_the_connection_stops_first(self):
        connection = yield self.commands(scripts=[PUBLISH_EACH])
        item = self.batched(connection, b"1")
        yield connection.stop()
        with self.assertRaises(BackendUnavailable):
            yield item

    @defer.inlineCallbacks
    def test_items_fail_at_once_while_down(self):
        connection = yield self.commands(scripts=[PUBLISH_EACH])
        self.redis.stop()
        yield wait_until(lambda: not connection.up, what="the connection to notice")
        with self.assertRaises(BackendUnavailable):
            yield self.batched(connection, b"1")
        self.redis.start()


class PureParserTests(CommandTests):
    """The same with txredisapi's pure-Python reply parser (no hiredis)."""

    @defer.inlineCallbacks
    def commands(self, address=None, **options):
        from txredisapi import BaseRedisProtocol

        options.setdefault("protocol", BaseRedisProtocol)
        return (yield super().commands(address, **options))

    @defer.inlineCallbacks
    def subscriber(self, on_message, address=None, **options):
        from txredisapi import BaseRedisProtocol

        options.setdefault("protocol", BaseRedisProtocol)
        return (yield super().subscriber(on_message, address, **options))


class OutageTests(RedisTestCase):
    """Redis down, frozen or restarted: bounded failures, then recovery."""

    @defer.inlineCallbacks
    def test_down_fails_at_once_and_recovers_after_restart(self):
        statuses = []
        connection = yield self.commands()
        connection.on_status = statuses.append
        self.redis.stop()
        yield wait_until(lambda: not connection.up, what="the connection to notice")
        started = time.monotonic()
        with self.assertRaises(BackendUnavailable):
            yield connection.execute(b"PING")
        self.assertLess(time.monotonic() - started, TIMEOUT)
        self.redis.start()
        yield connection.when_up(5)
        self.assertEqual((yield connection.execute(b"PING")), b"PONG")
        self.assertEqual(statuses, [False, True])

    @defer.inlineCallbacks
    def test_in_flight_commands_fail_when_redis_dies(self):
        connection = yield self.commands()
        yield connection.execute(b"SET", b"k", b"v")
        pending = connection.execute(b"BLPOP", b"nothing", b"0")  # waits forever in Redis
        self.redis.stop(kill=True)
        with self.assertRaises(BackendUnavailable):
            yield pending

    @defer.inlineCallbacks
    def test_frozen_redis_fails_within_the_timeout_and_reconnects(self):
        connection = yield self.commands()
        self.redis.pause()
        started = time.monotonic()
        results = yield defer.DeferredList(
            [connection.execute(b"PING") for _ in range(5)], consumeErrors=True
        )
        elapsed = time.monotonic() - started
        self.assertEqual([ok for ok, _ in results], [False] * 5)
        for _, failure in results:
            failure.trap(BackendUnavailable)
            self.assertIn("did not answer", failure.getErrorMessage())
        # The watchdog gives up after 1.5 x timeout without a reply.
        self.assertLess(elapsed, TIMEOUT * 1.5 + 1.0)
        self.redis.resume()
        yield connection.when_up(5)
        self.assertEqual((yield connection.execute(b"PING")), b"PONG")

    @defer.inlineCallbacks
    def test_first_connect_waits_bounded(self):
        self.redis.stop()
        connection = CommandConnection(self.address(), self.reactor, timeout=TIMEOUT)
        connection.start()
        self.addCleanup(connection.stop)
        with self.assertRaises(BackendUnavailable):
            yield connection.when_up(0.3)
        with self.assertRaises(BackendUnavailable):
            yield connection.execute(b"PING")
        self.redis.start()
        yield connection.when_up(5)

    @defer.inlineCallbacks
    def test_scripts_reloaded_after_restart(self):
        script = Script("answer", "return 42")
        connection = yield self.commands(scripts=[script])
        self.redis.restart()
        yield wait_until(lambda: not connection.up, what="the connection to notice")
        yield connection.when_up(5)
        self.assertEqual(self.redis.command("SCRIPT", "EXISTS", script.sha), [1])
        self.assertEqual((yield connection.run(script)), 42)


class SubscriberTests(RedisTestCase):
    """The subscriber connection: confirmations, resubscription, health checks."""

    @defer.inlineCallbacks
    def test_resubscribes_after_restart(self):
        received = []
        statuses = []
        subscriber = yield self.subscriber(lambda channel, payload: received.append((channel, payload)))
        subscriber.on_status = statuses.append
        yield subscriber.subscribe(b"a", b"b")
        self.redis.restart()
        yield wait_until(lambda: statuses == [False, True], what="down then up")
        self.assertEqual(self.redis.command("PUBSUB", "NUMSUB", "a", "b"), [b"a", 1, b"b", 1])
        self.redis.command("PUBLISH", "b", "after")
        yield wait_until(lambda: received == [(b"b", b"after")], what="the message")

    @defer.inlineCallbacks
    def test_many_channels_resubscribed(self):
        subscriber = yield self.subscriber(lambda channel, payload: None)
        channels = [b"room:%d" % n for n in range(1300)]
        yield subscriber.subscribe(*channels)
        self.redis.restart()
        yield wait_until(lambda: not subscriber.up, what="down")
        yield subscriber.when_up(5)
        self.assertEqual(self.redis.command("PUBSUB", "NUMSUB", "room:0")[1], 1)
        self.assertEqual(self.redis.command("PUBSUB", "NUMSUB", "room:1299")[1], 1)
        subscriber.unsubscribe(*channels[:1000])
        yield wait_until(
            lambda: self.redis.command("PUBSUB", "NUMSUB", "room:0")[1] == 0, what="unsubscribe"
        )
        self.assertEqual(self.redis.command("PUBSUB", "NUMSUB", "room:1000")[1], 1)

    @defer.inlineCallbacks
    def test_subscribe_fails_while_down(self):
        subscriber = yield self.subscriber(lambda channel, payload: None)
        self.redis.stop()
        yield wait_until(lambda: not subscriber.up, what="down")
        with self.assertRaises(BackendUnavailable):
            yield subscriber.subscribe(b"x")
        self.assertNotIn(b"x", subscriber.channels)

    @defer.inlineCallbacks
    def test_frozen_redis_is_noticed_by_ping(self):
        statuses = []
        subscriber = yield self.subscriber(lambda channel, payload: None)
        yield subscriber.subscribe(b"x")
        subscriber.on_status = statuses.append
        self.redis.pause()
        yield wait_until(lambda: statuses == [False], timeout=TIMEOUT * 6 + 2, what="down")
        self.redis.resume()
        yield wait_until(lambda: statuses == [False, True], what="up again")

    @defer.inlineCallbacks
    def test_handler_errors_do_not_break_the_connection(self):
        received = []

        def handler(channel, payload):
            if payload == b"bad":
                raise RuntimeError("handler bug")
            received.append(payload)

        subscriber = yield self.subscriber(handler)
        yield subscriber.subscribe(b"c")
        self.redis.command("PUBLISH", "c", "bad")
        self.redis.command("PUBLISH", "c", "good")
        yield wait_until(lambda: received == [b"good"], what="the good message")
        self.flushLoggedErrors(RuntimeError)


class LoginTests(RedisTestCase):
    """Passwords from the URL or a file; a wrong one is refused clearly."""

    def setUp(self):
        super().setUp()
        self.secured = redis_server.RedisServer(password="s3cret:/@x")
        self.secured.start()
        self.addCleanup(self.secured.cleanup)

    def url(self):
        return self.secured.url

    def test_a_unix_url_takes_its_password_from_a_file(self):
        with self.assertRaises(ValueError) as e:
            parse_redis_url(f"unix://:pw@{self.secured.socket}")
        self.assertIn("--redis-password-file", str(e.exception))

    @defer.inlineCallbacks
    def test_password_file(self):
        path = os.path.abspath("redis-password")
        with open(path, "w") as f:
            f.write("s3cret:/@x\n")
        connection = yield self.commands(address=parse_redis_url(self.url(), password_file=path))
        self.assertEqual((yield connection.execute(b"PING")), b"PONG")

    @defer.inlineCallbacks
    def test_wrong_password_is_refused(self):
        path = os.path.abspath("wrong-password")
        with open(path, "w") as f:
            f.write("wrong\n")
        address = parse_redis_url(self.url(), password_file=path)
        connection = CommandConnection(address, self.reactor, timeout=TIMEOUT)
        connection.start()
        self.addCleanup(connection.stop)
        with self.assertRaises(BackendUnavailable) as e:
            yield connection.when_up(5)
        self.assertIn("refused the login", str(e.exception))
        with self.assertRaises(BackendUnavailable) as e:
            yield connection.execute(b"PING")
        self.assertIn("refused the login", str(e.exception))

    @defer.inlineCallbacks
    def test_no_password_when_one_is_required(self):
        connection = CommandConnection(
            parse_redis_url(self.url()), self.reactor, timeout=TIMEOUT, scripts=[Script("s", "return 1")]
        )
        connection.start()
        self.addCleanup(connection.stop)
        with self.assertRaises(BackendUnavailable) as e:
            yield connection.when_up(5)
        self.assertIn("NOAUTH", str(e.exception))


class TLSTests(RedisTestCase):
    """rediss:// with a certificate chain checked against a CA file."""

    def setUp(self):
        super().setUp()
        binary = redis_server.tls_binary()
        if binary is None:
            from tools import require_tool

            # Skips with the reason, or fails under CI, where .ci/run installs it.
            require_tool("redis-server", "redis-server")
            raise unittest.SkipTest("the redis-server found is not built with TLS")
        from certs import PKI

        self.files = PKI.create().write(os.path.abspath("tls"))
        self.port = redis_server.free_port()
        self.secure = redis_server.RedisServer(
            binary=binary,
            extra=(
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.files.fullchain),
                "--tls-key-file", str(self.files.key),
                "--tls-ca-cert-file", str(self.files.root),
                "--tls-auth-clients", "no",
            ),
        )
        self.secure.start()
        self.addCleanup(self.secure.cleanup)

    @defer.inlineCallbacks
    def test_commands_and_subscriptions_over_tls(self):
        address = parse_redis_url(f"rediss://localhost:{self.port}/2?ca={self.files.root}")
        connection = yield self.commands(address=address)
        received = []
        subscriber = yield self.subscriber(lambda c, p: received.append(p), address=address)
        yield subscriber.subscribe(b"c")
        self.assertEqual((yield connection.execute(b"PUBLISH", b"c", b"\x00tls")), 1)
        yield wait_until(lambda: received == [b"\x00tls"], what="the message")
        reply = yield connection.run(load_scripts()["heartbeat"], b"p:", b"n", b"1000", b"e1")
        self.assertEqual(reply, [0, b"e1"])

    @defer.inlineCallbacks
    def test_untrusted_certificate_is_refused(self):
        other = os.path.abspath("other-root.pem")
        from certs import PKI

        with open(other, "wb") as f:
            f.write(PKI.create("someone else").root_pem)
        address = parse_redis_url(f"rediss://localhost:{self.port}?ca={other}")
        connection = CommandConnection(address, self.reactor, timeout=TIMEOUT)
        connection.start()
        self.addCleanup(connection.stop)
        with self.assertRaises(BackendUnavailable):
            yield connection.when_up(1.5)
