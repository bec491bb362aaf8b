"""
The offline store across restarts of a real server process: ``queued: true``
is a promise that survives SIGKILL, and a clean stop keeps everything.
"""

import json
import os
import signal
import time

from twisted.internet import defer, task

from helpers import http_get
from processes import MODULE, ProcessTestCase
from signaling.messages import encode
from signaling.tap import Options
from test_sqlite_store import version_2_file

#: Most messages the burst cut by SIGKILL may send.
BURST = 5000
#: Messages sent at once, every few milliseconds, during that burst.
CHUNK = 50
#: Acknowledgements to wait for before the SIGKILL.
ACKS_BEFORE_KILL = 100


#: Arguments that switch off per-connection rate limiting, where the server
#: has it: the bursts here are far above any sensible client rate.
UNLIMITED = ["--rate-limit", "0"] if "rate-limit=" in Options().longOpt else []


def ids(count, prefix="m"):
    """``count`` message ids whose order is their sort order."""
    return [f"{prefix}{number:05d}" for number in range(count)]


class DurabilityTests(ProcessTestCase):
    def setUp(self):
        self.directory = self.mktemp()

    @defer.inlineCallbacks
    def start_server(self):
        """A server on the test's database file; fires with (process, ws URL)."""
        server, port = yield self.start(
            MODULE, "--port", "0", "--db", "offline.sqlite", "--offline-max", str(BURST),
            *UNLIMITED, directory=self.directory,
        )
        return server, f"ws://127.0.0.1:{port}/"

    def send_burst(self, sender, message_ids, to="target", first=0):
        for number, message_id in enumerate(message_ids, first):
            sender.send({"type": "message", "to": to, "messageId": message_id,
                         "payload": {"n": number}})

    def acknowledged(self, message, to="target"):
        """The message id of a ``peer-offline`` (which must say queued), else fail."""
        self.assertEqual(message.get("type"), "peer-offline", message)
        self.assertEqual((message["peerId"], message["queued"]), (to, True), message)
        return message["messageId"]

    @defer.inlineCallbacks
    def receive_offline(self, url, peer_id="target"):
        """Register ``peer_id``; fires with the offline messages it got."""
        target = yield self.register(url, peer_id)
        before_pong = yield self.until_pong(target)
        delivered = []
        for message in before_pong:
            self.assertEqual(message["type"], "offline-message", message)
            original = message["originalMessage"]
            self.assertEqual((original["type"], original["from"], original["messageId"]),
                             ("message", "sender", message["messageId"]))
            self.assertEqual(original["payload"], {"n": int(message["messageId"][1:])})
            delivered.append(message["messageId"])
        return delivered

    def assert_delivery(self, delivered, acked, sent):
        """Every acknowledged message, in order, once; nothing that was not sent."""
        self.assertEqual(len(delivered), len(set(delivered)), "a message was delivered twice")
        self.assertEqual(delivered, sorted(delivered), "messages were delivered out of order")
        self.assertEqual(set(delivered) - set(sent), set())
        missing = sorted(set(acked) - set(delivered))
        self.assertEqual(missing, [], f"{len(missing)} acknowledged messages were lost")

    @defer.inlineCallbacks
    def interrupted_burst(self, signum):
        """
        Send a stream of messages for the offline "target" and stop the server
        with ``signum`` after the first acknowledgements; fires with (ids
        sent, ids acknowledged as queued, exit status, the stopped process).
        """
        server, url = yield self.start_server()
        sender = yield self.register(url, "sender")
        sent = []
        pending = iter(ids(BURST))

        def send_some():
            chunk = [message_id for _, message_id in zip(range(CHUNK), pending)]
            self.send_burst(sender, chunk, first=len(sent))
            sent.extend(chunk)
            if not chunk:
                sending.stop()

        # Keep sending while the acknowledgements come in, so that the kill
        # lands while messages are on their way.
        sending = task.LoopingCall(send_some)
        finished = sending.start(0.002)
        acked = []
        while len(acked) < ACKS_BEFORE_KILL or (len(sent) == len(acked) and sending.running):
            message = yield sender.next()
            acked.append(self.acknowledged(message))
        server.send_signal(signum)
        if sending.running:
            sending.stop()
        yield finished
        status = yield server.wait_exit()
        yield sender.wait_closed()
        # Acknowledgements that arrived before the connection died count too;
        # a notice about the shutdown itself (any type a client may ignore) may come.
        acked += [
            self.acknowledged(message)
            for message in sender.inbox.pending
            if message.get("type") in ("peer-offline", "error")
        ]
        self.assertEqual(acked, sorted(acked), "acknowledgements came out of order")
        return sent, acked, status, server

    @defer.inlineCallbacks
    def test_sigkill_keeps_every_acknowledged_message(self):
        sent, acked, status, _ = yield self.interrupted_burst(signal.SIGKILL)
        self.assertEqual(status, -signal.SIGKILL)

        server, url = yield self.start_server()
        delivered = yield self.receive_offline(url)
        self.assert_delivery(delivered, acked, sent)

        # Delivered messages are gone for good once the server stopped cleanly.
        server.send_signal(signal.SIGTERM)
        self.assert_clean_exit(server, (yield server.wait_exit()))
        server, url = yield self.start_server()
        again = yield self.receive_offline(url)
        self.assertEqual(again, [])

    @defer.inlineCallbacks
    def test_sigterm_mid_burst_keeps_every_acknowledged_message(self):
        sent, acked, status, server = yield self.interrupted_burst(signal.SIGTERM)
        self.assert_clean_exit(server, status)
        server, url = yield self.start_server()
        delivered = yield self.receive_offline(url)
        self.assert_delivery(delivered, acked, sent)

    @defer.inlineCallbacks
    def test_clean_restart_keeps_everything(self):
        server, url = yield self.start_server()
        sender = yield self.register(url, "sender")
        sent = ids(60)
        self.send_burst(sender, sent)
        others = ids(5, prefix="o")
        for message_id in others:
            sender.send({"type": "offer", "to": "other", "messageId": message_id, "sdp": "v=0"})
        replies = []
        for _ in range(len(sent) + len(others)):
            replies.append((yield sender.next()))
        acked = [self.acknowledged(m) for m in replies if m.get("peerId") == "target"]
        acked_others = [self.acknowledged(m, "other") for m in replies if m.get("peerId") == "other"]
        self.assertEqual((acked, acked_others), (sent, others))

        server.send_signal(signal.SIGTERM)
        yield sender.wait_closed()
        self.assert_clean_exit(server, (yield server.wait_exit()))

        server, url = yield self.start_server()
        delivered = yield self.receive_offline(url)
        self.assertEqual(delivered, sent)
        other = yield self.register(url, "other")
        before_pong = yield self.until_pong(other)
        self.assertEqual(
            [(m["type"], m["messageId"], m["originalMessage"]["sdp"]) for m in before_pong],
            [("offline-message", message_id, "v=0") for message_id in others],
        )

        server.send_signal(signal.SIGTERM)
        self.assert_clean_exit(server, (yield server.wait_exit()))
        server, url = yield self.start_server()
        self.assertEqual((yield self.receive_offline(url)), [])
        self.assertEqual((yield self.receive_offline(url, "other")), [])


class PoisonedStoreTests(ProcessTestCase):
    """Issue 11, item 1: a row the server cannot read no longer stops it from starting."""

    @defer.inlineCallbacks
    def test_the_server_starts_on_a_store_poisoned_by_version_2(self):
        directory = self.mkdtemp()
        now = time.time()
        version_2_file(os.path.join(directory, "offline.sqlite"), [
            [1, "victim", "m1", now, encode({"type": "message", "from": "a", "n": 1})],
            [2, "victim", "\ud800", now,
             encode({"type": "message", "to": "victim", "messageId": "\ud800", "from": "mallory"})],
            [3, "victim", "m3", now, encode({"type": "message", "from": "a", "n": 3})],
        ])
        server, port = yield self.start(MODULE, "--port", "0", "--db", "offline.sqlite",
                                        directory=directory)
        self.assertIn("row 2 cannot be loaded (message_id is not UTF-8", server.log)
        _, body = yield http_get(f"http://127.0.0.1:{port}/stats")
        self.assertEqual(json.loads(body)["offlineQuarantined"], 1)
        _, body = yield http_get(f"http://127.0.0.1:{port}/metrics")
        self.assertIn(b"\nsignaling_offline_quarantined 1.0\n", body)
        victim = yield self.register(f"ws://127.0.0.1:{port}/", "victim")
        delivered = yield self.until_pong(victim)
        self.assertEqual([m["messageId"] for m in delivered], ["m1", "m3"])
        server.send_signal(signal.SIGTERM)
        self.assert_clean_exit(server, (yield server.wait_exit()))
