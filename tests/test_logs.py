"""Tests for signaling.logs: the lines an operator's tools will parse."""

from __future__ import annotations

import io
import json
import re
import sys

from twisted.logger import (
    ILogObserver,
    LogLevel,
    LogPublisher,
    Logger,
    globalLogPublisher,
)
from twisted.python import log as legacy_log
from twisted.python.reflect import namedAny
from twisted.trial import unittest

from signaling import logs
from signaling.logs import (
    EVENTS,
    json_logger,
    json_observer,
    log_event,
    payload_for_log,
    text_observer,
)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Unserializable:
    """A value JSON cannot hold."""

    def __repr__(self) -> str:
        return "<Unserializable thing>"


class JSONObserverTests(unittest.TestCase):
    """json_observer writes one parseable object per event."""

    def setUp(self) -> None:
        self.out = io.StringIO()
        self.log = Logger(
            namespace="signaling.test",
            observer=LogPublisher(json_observer(self.out)),
        )

    def lines(self) -> list[dict]:
        text = self.out.getvalue()
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()]

    def test_event_fields(self) -> None:
        log_event(self.log, "register", peer="127.0.0.1:4000", identity="alice")
        log_event(self.log, "limit", peer="127.0.0.1:4001", limit="per_ip")
        first, second = self.lines()
        self.assertRegex(first["time"], ISO_UTC)
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["namespace"], "signaling.test")
        self.assertEqual(first["event"], "register")
        self.assertEqual(first["peer"], "127.0.0.1:4000")
        self.assertEqual(first["identity"], "alice")
        self.assertEqual(first["text"], "127.0.0.1:4000 registered as alice")
        self.assertEqual(second["level"], "warn")
        self.assertEqual(second["limit"], "per_ip")
        self.assertEqual(second["text"], "127.0.0.1:4001 hit limit per_ip")

    def test_direct_logger_call(self) -> None:
        self.log.info("{peer} gone", event="disconnect", peer="127.0.0.1:1", code=1001)
        (line,) = self.lines()
        self.assertEqual(line["event"], "disconnect")
        self.assertEqual(line["code"], 1001)
        self.assertEqual(line["text"], "127.0.0.1:1 gone")

    def test_missing_fields_still_render(self) -> None:
        log_event(self.log, "join", peer="127.0.0.1:2")
        (line,) = self.lines()
        self.assertEqual(line["text"], "127.0.0.1:2 (None) joined room None")
        self.assertIsNone(line["room"])

    def test_custom_format_and_level(self) -> None:
        log_event(
            self.log, "shutdown", "draining {count} connections",
            level=LogLevel.warn, count=3,
        )
        (line,) = self.lines()
        self.assertEqual(line["text"], "draining 3 connections")
        self.assertEqual(line["level"], "warn")
        self.assertNotIn("reason", line)

    def test_unknown_event_name_refused(self) -> None:
        self.assertRaises(KeyError, log_event, self.log, "registered", peer="x")

    def test_non_serializable_values(self) -> None:
        self.log.info(
            "odd values", event="error", code="X",
            thing=Unserializable(), nan=float("nan"), nested={"a": Unserializable()},
        )
        (line,) = self.lines()
        self.assertEqual(line["thing"], "<Unserializable thing>")
        self.assertEqual(line["nan"], "nan")
        self.assertEqual(line["nested"], {"a": "<Unserializable thing>"})

    def test_field_cannot_overwrite_line_keys(self) -> None:
        self.log.info("t", time="yesterday", text="other", namespace="n")
        (line,) = self.lines()
        self.assertRegex(line["time"], ISO_UTC)
        self.assertEqual((line["text"], line["namespace"]), ("t", "signaling.test"))
        self.assertEqual(line["field_time"], "yesterday")
        self.assertEqual((line["field_text"], line["field_namespace"]), ("other", "n"))
        self.assertIsNone(line["event"])

    def test_failure_serialised(self) -> None:
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure(
                "relay failed for {peer}",
                peer="127.0.0.1:3", event="error", code="INTERNAL_ERROR",
            )
        (line,) = self.lines()
        self.assertEqual(line["level"], "critical")
        self.assertEqual(line["text"], "relay failed for 127.0.0.1:3")
        self.assertIn("ZeroDivisionError", line["failure"])
        self.assertIn("Traceback", line["failure"])

    def test_bad_format_still_one_line(self) -> None:
        self.log.info("{missing} field")
        (line,) = self.lines()
        self.assertIn("Unable to format event", line["text"])

    def test_legacy_events(self) -> None:
        observer = json_observer(self.out)
        globalLogPublisher.addObserver(observer)
        try:
            legacy_log.msg("old style", system="proto")
            try:
                {}["k"]
            except KeyError:
                legacy_log.err(None, "old failure")
        finally:
            globalLogPublisher.removeObserver(observer)
        self.flushLoggedErrors(KeyError)
        mine = [line for line in self.lines() if line["namespace"] == "log_legacy"]
        self.assertEqual([line["text"] for line in mine][0], "old style")
        self.assertNotIn("message", mine[0])
        self.assertNotIn("isError", mine[0])
        self.assertIn("KeyError", mine[1]["failure"])


class TextObserverTests(unittest.TestCase):
    """text_observer writes one readable line per event."""

    def test_line(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="signaling.hub", observer=LogPublisher(text_observer(out)))
        log_event(log, "takeover", peer="127.0.0.1:9", identity="bob")
        log.info("plain")
        first, second = out.getvalue().splitlines()
        self.assertRegex(
            first,
            r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[signaling\.hub#info\] "
            r"takeover: 127\.0\.0\.1:9 took over bob$",
        )
        self.assertTrue(second.endswith("[signaling.hub#info] plain"))

    def test_failure_traceback_follows(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="signaling.hub", observer=LogPublisher(text_observer(out)))
        try:
            raise ValueError("bad")
        except ValueError:
            log.failure("oops")
        first, *rest = out.getvalue().splitlines()
        self.assertTrue(first.endswith("#critical] oops"))
        self.assertTrue(rest and all(line.startswith("\t") for line in rest))
        self.assertIn("ValueError: bad", rest[-1])


class TwistdLoggerTests(unittest.TestCase):
    """json_logger meets the ``twistd --logger`` contract."""

    def test_contract(self) -> None:
        factory = namedAny("signaling.logs.json_logger")
        self.assertIs(factory, json_logger)
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        observer = factory()
        self.assertTrue(ILogObserver.providedBy(observer))
        Logger(namespace="x", observer=observer).info("hi {n}", n=1, event="connect", peer="p")
        line = json.loads(stdout.getvalue())
        self.assertEqual((line["text"], line["event"], line["n"]), ("hi 1", "connect", 1))

    def test_twistd_options_accept_it(self) -> None:
        from twisted.scripts.twistd import ServerOptions

        options = ServerOptions()
        options.parseOptions(["--logger", "signaling.logs.json_logger", "--nodaemon"])
        self.assertIs(options["logger"], json_logger)


class PayloadTests(unittest.TestCase):
    """payload_for_log strips what may reveal addresses or content."""

    def test_strips_payload_fields(self) -> None:
        message = {
            "type": "offer", "to": "bob", "roomId": "r",
            "offer": {"type": "offer", "sdp": "v=0 c=IN IP4 192.0.2.1"},
            "deviceInfo": {"ip": "192.0.2.1"}, "messageId": "m1",
        }
        logged = payload_for_log(message, False)
        self.assertEqual(
            logged,
            {"type": "offer", "to": "bob", "roomId": "r", "offer": "<redacted>",
             "deviceInfo": "<redacted>", "messageId": "m1"},
        )
        self.assertNotIn("192.0.2.1", json.dumps(logged))
        self.assertEqual(message["offer"]["sdp"], "v=0 c=IN IP4 192.0.2.1")

    def test_every_payload_field(self) -> None:
        message = {name: "secret" for name in logs.PAYLOAD_FIELDS}
        message["type"] = "x"
        self.assertEqual(
            payload_for_log(message, False),
            dict({name: "<redacted>" for name in logs.PAYLOAD_FIELDS}, type="x"),
        )

    def test_nested(self) -> None:
        message = {
            "type": "offline-message", "messageId": "m",
            "originalMessage": {"type": "ice-candidate", "from": "a",
                                "candidate": {"candidate": "candidate:1 1 udp 1 192.0.2.7 5000 typ host"}},
            "items": [{"payload": "hi"}],
        }
        logged = payload_for_log(message, False)
        self.assertEqual(logged["originalMessage"]["candidate"], "<redacted>")
        self.assertEqual(logged["originalMessage"]["from"], "a")
        self.assertEqual(logged["items"], [{"payload": "<redacted>"}])

    def test_log_payloads_keeps_everything(self) -> None:
        message = {"type": "answer", "answer": {"sdp": "v=0"}}
        self.assertEqual(payload_for_log(message, True), message)

    def test_non_dict_passes(self) -> None:
        self.assertEqual(payload_for_log(5, False), 5)

    def test_vocabulary(self) -> None:
        self.assertEqual(
            set(EVENTS),
            {"connect", "disconnect", "register", "join", "leave", "takeover",
             "error", "heartbeat_drop", "limit", "shutdown",
             "worker_start", "worker_ready", "worker_exit", "workers_failed"},
        )


class MessageTextTests(unittest.TestCase):
    """The server's events are formatted directly, with the same text Twisted makes."""

    def test_every_event_reads_as_twisted_formats_it(self):
        from twisted.logger import formatEvent

        samples = ["alice", None, 7, 0.5, "{braces}", "é 漢字", "x" * 600]
        for name, (level, log_format) in logs.EVENTS.items():
            for value in samples:
                event = {"event": name, "log_format": log_format, "log_level": level,
                         **{field: value for field in logs._REQUIRED[name]}}
                self.assertEqual(logs._message(event), formatEvent(dict(event)), (name, value))

    def test_a_format_it_cannot_fill_falls_back_to_twisted(self):
        from twisted.logger import formatEvent

        event = {"event": "connect", "log_format": "{missing} and {peer}", "peer": "p"}
        self.assertEqual(logs._message(event), formatEvent(dict(event)))
