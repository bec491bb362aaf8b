"""Tests of the benchmark: its ledgers and percentiles, and whole runs against a small relay."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from processes import environment
from signaling.bench.ledger import ChatLedger, DirectedLedger
from signaling.bench.payload import Payloads, chat_seq, sdp_seq
from signaling.bench.stats import Samples, percentile
from signaling.bench.table import render


class PercentileTests(unittest.TestCase):
    """Nearest-rank percentiles and the sample summary."""

    def test_nearest_rank(self) -> None:
        values = [float(v) for v in range(1, 101)]
        self.assertEqual(percentile(values, 50), 50.0)
        self.assertEqual(percentile(values, 90), 90.0)
        self.assertEqual(percentile(values, 99), 99.0)
        self.assertEqual(percentile(values, 99.9), 100.0)
        self.assertEqual(percentile(values, 0), 1.0)
        self.assertEqual(percentile([7.0], 99), 7.0)
        self.assertEqual(percentile([1.0, 2.0, 3.0, 4.0], 50), 2.0)
        self.assertRaises(ValueError, percentile, [], 50)

    def test_summary(self) -> None:
        s = Samples()
        self.assertEqual(s.summary(), {"n": 0})
        for v in [5.0, 1.0, 4.0, 2.0, 3.0]:
            s.add(v)
        self.assertEqual(s.summary(), {"n": 5, "mean": 3.0, "p50": 3.0, "p90": 5.0, "p99": 5.0, "p999": 5.0, "max": 5.0})

    def test_reservoir_keeps_count_mean_and_max_exact(self) -> None:
        s = Samples(cap=10)
        for v in range(1000):
            s.add(float(v))
        out = s.summary()
        self.assertEqual(len(s.values), 10)
        self.assertEqual((out["n"], out["mean"], out["max"]), (1000, 499.5, 999.0))


class DirectedLedgerTests(unittest.TestCase):
    """Each directed message ends exactly once, and every fault is counted exactly."""

    def setUp(self) -> None:
        self.p = Payloads(300)
        self.ids = ["pa0", "pb0", "pa1", "pb1"]
        self.led = DirectedLedger(self.ids, self.p)

    def _send(self, src: int, kind: int = 0) -> tuple[int, dict]:
        seq = self.led.send(src, src ^ 1, kind, 1000 + src, 1.0, 1.0)
        return seq, json.loads(self.led.wire(seq))

    def _recv(self, at: int, m: dict) -> int:
        typ = m["type"]
        return self.led.receive(at, m["from"], 0 if typ == "offer" else 1, m[typ]["sdp"])

    def test_wire_text(self) -> None:
        seq, m = self._send(0)
        self.assertEqual(m["type"], "offer")
        self.assertEqual((m["to"], m["from"], m["offer"]["type"]), ("pb0", "pa0", "offer"))
        self.assertEqual(m["offer"]["sdp"], self.p.sdp(seq, 1000, "pa0", "pb0"))
        self.assertEqual(sdp_seq(m["offer"]["sdp"]), seq)
        _, a = self._send(1, kind=1)
        self.assertEqual((a["type"], a["answer"]["type"], a["to"]), ("answer", "answer", "pa0"))

    def test_faults_are_counted_exactly(self) -> None:
        msgs = [self._send(i % 4, kind=i % 2) for i in range(10)]
        good = self._recv(1, msgs[0][1])
        self.assertEqual(good, msgs[0][0])
        self.assertEqual(self._recv(1, msgs[0][1]), -1)                      # duplicate
        self.assertEqual(self._recv(3, msgs[4][1]), -1)                      # sent to 1, arrives at 3
        wrong_from = dict(msgs[2][1], **{"from": "pb1"})
        self.assertEqual(self._recv(3, wrong_from), -1)
        m3 = msgs[3][1]                                                      # an answer, seen as an offer
        self.assertEqual(self.led.receive(2, m3["from"], 0, m3["answer"]["sdp"]), -1)
        m5 = msgs[5][1]
        self.assertEqual(self.led.receive(0, m5["from"], 1, m5["answer"]["sdp"][:-1] + "X"), -1)
        self.assertEqual(self.led.receive(0, "pb0", 1, "not an sdp"), -1)  # no seq: bad payload
        self.assertEqual(self._recv(3, msgs[6][1]), msgs[6][0])
        self.led.send(0, 1, 0, 0, 0.0, 0.0)                                 # never arrives
        unsent = self.led.send(0, 1, 0, 5, 0.0, 0.0)
        self.led.unsent(unsent)
        self.assertEqual(self.led.receive(1, "pa0", 0, self.p.sdp(unsent, 5, "pa0", "pb0")), -1)
        self.assertEqual(self.led.finish(), 5)                               # 1, 7, 8, 9 and the extra send
        self.assertEqual(self.led.errors, Counter(
            duplicate=1, wrong_peer=1, wrong_from=1, wrong_type=1, bad_payload=2, unknown_seq=1, missing=5))
        self.assertEqual(self.led.delivered, 2)
        self.assertEqual(self.led.pending, 5)


class ChatLedgerTests(unittest.TestCase):
    """Each chat must reach every other member of its room exactly once."""

    def setUp(self) -> None:
        self.p = Payloads(chat_bytes=60)
        rooms, members = 2, 3
        self.ids = [f"u{r}x{j}" for r in range(rooms) for j in range(members)]
        self.room_ids = ["r0", "r1"]
        self.led = ChatLedger(self.ids, [i // members for i in range(6)], [i % members for i in range(6)],
                              self.room_ids, members, self.p)

    def _send(self, src: int) -> tuple[int, dict]:
        seq = self.led.send(src, 77, 0.0, 0.0)
        return seq, json.loads(self.led.wire(seq))

    def _recv(self, at: int, m: dict) -> int:
        return self.led.receive(at, m["roomId"], m["sender"], m["message"])

    def test_faults_are_counted_exactly(self) -> None:
        seq, m = self._send(0)                                 # expects 1 and 2
        self.assertEqual((m["type"], m["roomId"], m["sender"], chat_seq(m["message"])), ("chat", "r0", "u0x0", seq))
        self.assertEqual(self._recv(1, m), seq)
        self.assertEqual(self._recv(1, m), -1)                 # duplicate
        self.assertEqual(self._recv(0, m), -1)                 # self echo: ignored, not an error
        self.assertEqual(self._recv(4, m), -1)                 # another room
        self.assertEqual(self._recv(2, dict(m, sender="u0x1")), -1)
        _, m2 = self._send(3)                                  # expects 4 and 5
        self.assertEqual(self._recv(4, dict(m2, message=m2["message"] + "!")), -1)
        self.assertEqual(self._recv(5, dict(m2, message="999|1|x")), -1)
        self.assertEqual(self.led.outstanding, 1)
        self.assertEqual(self.led.finish(), 1)
        self.assertEqual(self.led.errors, Counter(
            duplicate=1, wrong_room=1, wrong_sender=1, bad_payload=1, unknown_seq=1, missing=1))
        self.assertEqual(self.led.ignored, Counter({"self-echo": 1}))
        self.assertEqual((self.led.delivered, self.led.expected), (1, 4))


class _StandInRelay(WebSocketServerProtocol):
    """A minimal relay of the peer and room protocols; ``factory.drop_every`` loses messages."""

    def onOpen(self) -> None:
        self.ident = None

    def _send(self, m: dict) -> None:
        self.sendMessage(json.dumps(m).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        f, m = self.factory, json.loads(payload)
        if m["type"] == "register":
            self.ident = m["peerId"]
            f.peers[self.ident] = self
            self._send({"type": "registered", "peerId": self.ident})
        elif m["type"] == "join-room":
            self.ident = m["sender"]
            f.rooms.setdefault(m["roomId"], []).append(self)
            self._send({"type": "join-success", "roomId": m["roomId"], "userId": self.ident})
        elif "to" in m:
            f.count += 1
            if not (f.drop_every and f.count % f.drop_every == 0):
                f.peers[m["to"]]._send(dict(m, **{"from": self.ident}))
        elif "roomId" in m:
            for other in f.rooms.get(m["roomId"], []):
                if other is not self:
                    other._send(dict(m, sender=self.ident))

    def onClose(self, wasClean: bool, code: object, reason: object) -> None:
        f = self.factory
        if f.peers.get(self.ident) is self:
            del f.peers[self.ident]
        for members in f.rooms.values():
            if self in members:
                members.remove(self)


class _ReorderingOfflineRelay(_StandInRelay):
    """The stand-in relay with an offline store that hands each target its first two messages swapped."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        f, m = self.factory, json.loads(payload)
        if "to" in m and m["to"] not in f.peers:
            f.stored.setdefault(m["to"], []).append(dict(m, **{"from": self.ident}))
            self._send({"type": "peer-offline", "peerId": m["to"], "messageId": m["messageId"], "queued": True})
            return
        super().onMessage(payload, isBinary)
        if m["type"] == "register":
            queue = f.stored.pop(self.ident, [])
            queue[:2] = queue[1::-1]
            for om in queue:
                self._send({"type": "offline-message", "messageId": om["messageId"], "originalMessage": om})


class EndToEndTests(unittest.TestCase):
    """``python -m signaling.bench`` as a subprocess against a relay on 127.0.0.1."""

    def _relay(self, drop_every: int = 0, protocol: type = _StandInRelay) -> str:
        from twisted.internet import reactor

        factory = WebSocketServerFactory()
        factory.protocol = protocol
        factory.peers, factory.rooms, factory.count, factory.drop_every = {}, {}, 0, drop_every
        factory.stored = {}
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"ws://127.0.0.1:{port.getHost().port}/"

    def _bench(self, *args: str) -> defer.Deferred:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        return getProcessOutputAndValue(
            sys.executable, ["-m", "signaling.bench", "--no-pin", "--warmup", "0.2", *args],
            env=environment(), path=directory)

    @staticmethod
    def _lines(out: bytes) -> list[dict]:
        return [json.loads(x) for x in out.decode().splitlines() if x.startswith("{")]

    @defer.inlineCallbacks
    def test_clean_run(self) -> defer.Generator:
        url = self._relay()
        out, err, code = yield self._bench(
            "--url", url, "--server-pid", str(os.getpid()), "--scenario", "relay", "--scenario", "fanout",
            "--scenario", "connect", "--pairs", "10", "--duration", "1", "--rooms", "2", "--members", "3",
            "--chat-rate", "100", "--conns", "20", "--drain", "2")
        lines = self._lines(out)
        self.assertEqual(code, 0, err.decode()[-2000:] + out.decode()[-2000:])
        self.assertEqual([x["scenario"] for x in lines], ["relay", "fanout", "connect"])
        relay, fan, conn = lines
        self.assertTrue(all(x["ok"] and x["errors"] == 0 for x in lines))
        self.assertGreater(relay["msgs_recv_in_window"], 0)
        self.assertEqual(relay["lat_ms"]["n"], relay["msgs_recv_in_window"])
        self.assertEqual(fan["deliveries"], fan["deliveries_expected"])
        self.assertEqual(fan["deliveries"], 2 * fan["chats_sent"])
        self.assertEqual(conn["ok_conns"], 20)
        self.assertIsNotNone(conn["server_rss_kib"]["after"])
        self.assertIn("scenario  ok", out.decode())

    @defer.inlineCallbacks
    def test_lost_messages_fail_the_run(self) -> defer.Generator:
        url = self._relay(drop_every=25)
        out, err, code = yield self._bench(
            "--url", url, "--scenario", "rate", "--pairs", "5", "--rate", "200", "--duration", "1",
            "--drain", "0.5", "--json-only")
        (line,) = self._lines(out)
        self.assertEqual(code, 1, err.decode()[-2000:])
        self.assertFalse(line["ok"])
        self.assertEqual(line["error_detail"], {"missing": line["msgs_sent"] // 25})
        self.assertIn("warning", line)

    @defer.inlineCallbacks
    def test_against_the_real_server(self) -> defer.Generator:
        out, err, code = yield self._bench(
            "--scenario", "relay", "--scenario", "fanout", "--scenario", "idle", "--pairs", "10",
            "--duration", "1", "--rooms", "2", "--members", "3", "--chat-rate", "100", "--conns", "20",
            "--idle-seconds", "0.5", "--drain", "2", "--json-only")
        lines = self._lines(out)
        self.assertEqual(code, 0, err.decode()[-2000:] + out.decode()[-3000:])
        self.assertEqual([x["ok"] for x in lines], [True, True, True])

    OFFLINE = ("--scenario", "offline", "--pairs", "5", "--rate", "200", "--senders", "2", "--offline-window", "4",
               "--duration", "1", "--baseline", "0.5", "--check-targets", "3", "--drain", "3", "--json-only")

    @defer.inlineCallbacks
    def test_offline_against_the_real_server(self) -> defer.Generator:
        out, err, code = yield self._bench(*self.OFFLINE)
        (line,) = self._lines(out)
        self.assertEqual(code, 0, err.decode()[-2000:] + out.decode()[-3000:])
        self.assertTrue(line["ok"])
        self.assertGreater(line["offline_queued_in_window"], 0)
        self.assertGreater(line["offline_queued_per_s"], 0)
        self.assertEqual(line["offline_queued"], line["offline_sent"])
        self.assertEqual(line["offline_unacked"], 0)
        for key in ("lat_ms", "baseline_lat_ms"):
            self.assertGreater(line[key]["n"], 0)
            self.assertIn("p99", line[key])
        self.assertEqual(line["missing"], 0)
        check = line["check"]
        self.assertEqual(check["targets"], 3)
        self.assertGreater(check["expected"], 0)
        self.assertEqual(check["delivered"], check["expected"])
        self.assertTrue(line["store"].startswith("sqlite file "), line["store"])
        self.assertFalse(os.path.exists(os.path.dirname(line["store"][len("sqlite file "):])))

    @defer.inlineCallbacks
    def test_offline_reordering_fails_the_run(self) -> defer.Generator:
        url = self._relay(protocol=_ReorderingOfflineRelay)
        out, err, code = yield self._bench("--url", url, *self.OFFLINE)
        (line,) = self._lines(out)
        self.assertEqual(code, 1, err.decode()[-2000:])
        self.assertFalse(line["ok"])
        self.assertEqual(line["store"], "the server's own store (--url)")
        self.assertEqual(line["error_detail"], {"check_out_of_order": 3})
        self.assertEqual(line["check"]["delivered"], line["check"]["expected"])


    @defer.inlineCallbacks
    def test_cluster_scenarios_against_real_servers(self) -> defer.Generator:
        out, err, code = yield self._bench(
            "--scenario", "cluster-relay", "--scenario", "workers-relay", "--pairs", "10",
            "--duration", "1", "--drain", "3")
        lines = self._lines(out)
        self.assertEqual(code, 0, err.decode()[-2000:] + out.decode()[-3000:])
        across, workers = lines
        self.assertEqual([x["scenario"] for x in lines], ["cluster-relay", "workers-relay"])
        self.assertTrue(all(x["ok"] and x["missing"] == 0 for x in lines))
        self.assertEqual((across["servers"]["kind"], across["servers"]["count"]), ("nodes", 2))
        self.assertEqual(len(set(across["servers"]["urls"])), 2)
        self.assertEqual(workers["servers"]["kind"], "workers")
        # Every message crossed nodes: one holder lookup each, in script calls
        # that carry every message of a turn (heartbeats aside).
        calls = across["redis_calls_per_msg"]
        self.assertTrue(0.9 <= calls["hget"] <= 1.1, calls)
        self.assertTrue(0 < calls["evalsha"] <= 1.1, calls)
        self.assertIn("cluster-relay", out.decode())


    @defer.inlineCallbacks
    def test_cross_node_hop(self) -> defer.Generator:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "signaling.bench.hop", "--count", "200", "--rate", "500", "--warmup", "20"],
            env=environment(), path=directory)
        self.assertEqual(code, 0, err.decode()[-2000:])
        (line,) = self._lines(out)
        self.assertEqual((line["delivered"], line["failed"], line["lat_ms"]["n"]), (220, 0, 200))
        calls = line["redis_calls_per_hop"]  # + heartbeats
        self.assertTrue(1.0 <= calls["hget"] <= 1.1 and 0 < calls["evalsha"] <= 1.1, line)
        self.assertGreater(line["python_cpu_us_per_hop"], 0)


class TableTests(unittest.TestCase):
    """The summary table names every scenario and flags failures."""

    def test_render(self) -> None:
        text = render([{"scenario": "rate", "target_rate": 2000.0, "ok": False, "achieved_rate": 1999.5,
                        "lat_ms": {"p50": 0.8, "p99": 2.0, "max": 9.0}, "errors": 3}])
        header, row = text.splitlines()
        self.assertTrue(header.startswith("scenario"))
        self.assertEqual(row.split()[:6], ["rate@2000", "NO", "2000", "msgs/s", "0.8", "2"])


class WithoutTheBenchExtraTests(unittest.TestCase):
    """``python -m signaling.bench`` without picows says what to install."""

    @defer.inlineCallbacks
    def test_install_hint(self) -> None:
        blocked = self.mktemp()
        os.makedirs(os.path.join(blocked, "picows"))
        with open(os.path.join(blocked, "picows", "__init__.py"), "w") as f:
            f.write("raise ImportError('not installed', name='picows')\n")
        env = environment()
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(blocked), env["PYTHONPATH"]])
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "signaling.bench", "--scenario", "relay"], env=env
        )
        self.assertEqual(code, 2, err)
        self.assertIn(b"pip install 'signaling[bench]'", err)
        self.assertNotIn(b"Traceback", err)
