"""
The server as a process: JSON log lines of ``python -m signaling`` and the
SIGTERM drain of ``twistd -n signaling``.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
from typing import Any

from twisted.internet import defer

from helpers import Client
from processes import MODULE, TWISTD, ProcessTestCase

#: A string no log line may hold unless payload logging is on.
CANARY = "v=0 o=- SDP-CANARY-7f3a9c 2 IN IP4 203.0.113.9"

PEER = re.compile(r"^127\.0\.0\.1:\d+$")

#: Seconds a test waits for a process to exit after SIGTERM, beyond its own timeout.
EXIT_MARGIN = 10.0


def address(client: Client) -> str:
    """The ``ip:port`` the server sees for ``client``."""
    host = client.transport.getHost()
    return f"{host.host}:{host.port}"


class JsonLogTests(ProcessTestCase):
    """``python -m signaling --log-format json``: every line is one JSON object."""

    @defer.inlineCallbacks
    def run_scenario(self, *extra: str) -> Any:
        """
        connect, register, join, leave, error, takeover, disconnect and a
        SIGTERM shutdown; returns (parsed lines, raw output, client addresses).
        """
        server, port = yield self.start(
            MODULE, "--log-format", "json", "--port", "0", "--db", ":memory:",
            "--reconnect-jitter", "0", *extra,
        )
        url = f"ws://127.0.0.1:{port}/"
        alice = yield self.register(url, "alice")
        member = yield self.client(url)
        addresses = {"alice": address(alice), "member": address(member)}
        member.send({"type": "join-room", "roomId": "lobby", "sender": "m1"})
        yield member.expect("join-success")
        member.send({"type": "leave-room", "roomId": "lobby"})
        yield member.expect("leave-success")
        alice.send({"type": "weird-offer", "sdp": CANARY})
        yield alice.expect_error("UNKNOWN_MESSAGE_TYPE")
        successor = yield self.register(url, "alice")
        addresses["successor"] = address(successor)
        code, _ = yield alice.wait_closed()
        self.assertEqual(code, 4001)
        yield member.drop()
        server.send_signal(signal.SIGTERM)
        yield successor.expect("server-shutdown")
        status = yield server.wait_exit(5 + EXIT_MARGIN)
        self.assertEqual(status, 0, server.log)
        raw = server.log
        lines = [json.loads(line) for line in raw.splitlines()]
        return lines, raw, addresses

    @defer.inlineCallbacks
    def test_events_and_fields(self):
        lines, raw, addresses = yield self.run_scenario()
        for line in lines:
            self.assertTrue({"time", "level", "namespace", "event", "text"} <= set(line), line)
        events = [line for line in lines if line["event"] is not None]

        def one(name: str, **fields: Any) -> dict:
            found = [e for e in events
                     if e["event"] == name and all(e.get(k) == v for k, v in fields.items())]
            self.assertEqual(len(found), 1, f"{name} {fields}: {found}")
            return found[0]

        for name in ("connect", "disconnect"):
            for who in ("alice", "member"):
                one(name, peer=addresses[who])
        one("connect", peer=addresses["successor"])
        one("register", peer=addresses["alice"], identity="alice")
        one("register", peer=addresses["successor"], identity="alice")
        one("join", peer=addresses["member"], identity="m1", room="lobby")
        one("leave", peer=addresses["member"], identity="m1", room="lobby")
        one("takeover", peer=addresses["successor"], identity="alice")
        error = one("error", peer=addresses["alice"])
        self.assertEqual(error["code"], "UNKNOWN_MESSAGE_TYPE")
        self.assertEqual(error["request"]["sdp"], "<redacted>")
        self.assertEqual(one("shutdown")["level"], "info")
        for event in events:
            if event["event"] != "shutdown":
                self.assertRegex(event["peer"], PEER)
        self.assertNotIn("SDP-CANARY", raw)

    @defer.inlineCallbacks
    def test_log_payloads_keeps_sdp(self):
        lines, raw, addresses = yield self.run_scenario("--log-payloads")
        [error] = [line for line in lines if line["event"] == "error"]
        self.assertEqual(error["request"], {"type": "weird-offer", "sdp": CANARY})
        self.assertIn("SDP-CANARY", raw)


class TwistdDrainTests(ProcessTestCase):
    """``twistd -n signaling`` stopped by SIGTERM."""

    @defer.inlineCallbacks
    def start_twistd(self, *extra: str) -> Any:
        """A twistd server on ``offline.sqlite``; fires with (process, ws URL)."""
        server, port = yield self.start(TWISTD, "--port", "0", "--db", "offline.sqlite", *extra)
        return server, f"ws://127.0.0.1:{port}/"

    @defer.inlineCallbacks
    def test_sigterm_drains(self):
        server, url = yield self.start_twistd("--shutdown-timeout", "3", "--reconnect-jitter", "2")
        client = yield self.register(url, "alice")
        server.send_signal(signal.SIGTERM)
        notice = yield client.expect("server-shutdown")
        self.assertTrue(0 <= notice["reconnectAfterMs"] <= 2000, notice)
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 1001)
        status = yield server.wait_exit(3 + EXIT_MARGIN)
        self.assertIn(status, (0, -signal.SIGTERM), server.log)

    @defer.inlineCallbacks
    def test_second_sigterm_exits_at_once(self):
        """
        A client that never answers the close holds a drain for about one
        second only: the server cuts an unanswered close after its close
        handshake timeout (1 s), well before ``--shutdown-timeout``. To keep
        the drain going long enough to signal it twice without a race, the
        test also holds a write lock on the store file while a message is
        waiting to be written, so the drain's final flush waits on SQLite's
        busy timeout. The second SIGTERM must end the process with status 1.
        """
        server, url = yield self.start_twistd("--shutdown-timeout", "30")
        client = yield self.register(url, "alice")
        client.sendCloseFrame = lambda *args, **kwargs: None  # never answers the close
        lock = sqlite3.connect(server.directory / "offline.sqlite", isolation_level=None)
        self.addCleanup(lock.close)
        lock.execute("BEGIN EXCLUSIVE")
        client.send({"type": "offer", "to": "absent", "offer": {"sdp": "x"}})
        # The pong comes first: the offline write is stuck behind the lock.
        before_pong = yield self.until_pong(client)
        self.assertEqual(before_pong, [])
        server.send_signal(signal.SIGTERM)
        yield client.expect("server-shutdown")
        server.send_signal(signal.SIGTERM)
        status = yield server.wait_exit(EXIT_MARGIN)
        self.assertEqual(status, 1, server.log)
