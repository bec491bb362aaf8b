"""
The README and ``docs/`` replayed: the documented commands are run and their
documented output compared with what really comes out (log lines, the
README's protocol examples field for field, metric names in the alert rules,
the options table, /stats, the backup command, TLS session resumption, the
plugin cache step).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys

import yaml
from twisted.internet import defer, threads

from certs import PKI
from helpers import ServerTestCase, parse_metrics, wait_for
from processes import MODULE, REPO, TWISTD, ProcessTestCase, environment
from signaling.config import Config
from tools import require_tool

README = (REPO / "README.md").read_text()
OPERATIONS = (REPO / "docs" / "operations.md").read_text()
#: Any placeholder value of an example: ``{…}`` or a bare ``…``.
ANY = "<any>"


def shape(text):
    """``text`` with every run of digits made the same: compares times, ports, addresses by form."""
    return re.sub(r"\d+", "0", text)


def code_blocks(markdown):
    """The fenced code blocks of ``markdown``, as (language, text)."""
    return re.findall(r"```(\w*)\n(.*?)```", markdown, re.S)


class LogFormatTests(ProcessTestCase):
    """The log lines of docs/operations.md, from the processes that print them."""

    def documented(self, pattern):
        [line] = [line.strip() for line in OPERATIONS.splitlines() if re.search(pattern, line)]
        return line

    @defer.inlineCallbacks
    def test_text_lines_under_twistd(self):
        server, port = yield self.start(
            TWISTD, "--port", "0", "--db", ":memory:", "--stats-interval", "0.2",
            env={"SIGNALING_HEARTBEAT_INTERVALL": "5"})
        yield self.register(f"ws://127.0.0.1:{port}/", "alice")
        [register] = yield server.wait_for_log(r"(?m)^.*register: .*$")
        [stats] = yield server.wait_for_log(r"(?m)^.*\[Stats\] .*$")
        example = self.documented(r"^\s*\d{4}-.*register: ")
        self.assertIn("\n" + example + "\n", README)  # the README shows the same line
        self.assertEqual(shape(register.group(0)), shape(example))
        self.assertIn("registered as alice", register.group(0))
        for documented in (self.documented(r"^\[Stats\] 连接数: C"),
                           next(line for line in README.splitlines() if line.startswith("[Stats]"))):
            self.assertTrue(re.fullmatch(
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[signaling\.hub#info\] "
                + re.escape(re.sub(r"\b[A-Z0-9]+\b", "0", documented)).replace("0", r"\d+"),
                stats.group(0)), (stats.group(0), documented))
        self.assertIn(
            "[signaling.tap#warn] environment variable SIGNALING_HEARTBEAT_INTERVALL is not a "
            "setting and is ignored (did you mean SIGNALING_HEARTBEAT_INTERVAL?)", server.log)
        self.assertNotIn("+0000 [", server.log)  # twistd's own format

    @defer.inlineCallbacks
    def test_json_lines(self):
        [example] = [json.loads(line) for _, block in code_blocks(OPERATIONS)
                     for line in block.splitlines() if line.strip().startswith('{"time"')]
        for command in (MODULE + ("--log-format", "json"),
                        TWISTD[:-1] + ("--logger", "signaling.logs.json_logger", "signaling")):
            server, port = yield self.start(command, "--port", "0", "--db", ":memory:")
            yield self.register(f"ws://127.0.0.1:{port}/", "alice")
            [match] = yield server.wait_for_log(r'(?m)^\{.*"event": "register".*$')
            line = json.loads(match.group(0))
            self.assertEqual(list(line), list(example), command)
            for key, value in example.items():
                self.assertEqual(shape(str(line[key])), shape(str(value)), key)
            server.send_signal(signal.SIGTERM)
            yield server.wait_exit()


def parse_example(text):
    """One JSON example of the README, placeholders (``…``) and all."""
    more = text.endswith(",…}")
    text = text.replace(",…}", "}").replace("{…}", f'"{ANY}"')
    text = re.sub(r":…(?=[,}])", f':"{ANY}"', text)
    return json.loads(text), more


def assert_like(testcase, actual, example, more=False, where=""):
    """``actual`` matches ``example`` field for field; ``ANY`` matches anything."""
    if example == ANY:
        return
    if isinstance(example, dict):
        testcase.assertIsInstance(actual, dict, where)
        keys = set(example) if not more else set(example) & set(actual)
        testcase.assertEqual(set(actual) if not more else keys, set(example), where)
        for key in example:
            assert_like(testcase, actual[key], example[key], where=f"{where}.{key}")
    elif isinstance(example, list):
        testcase.assertEqual(len(actual), len(example), where)
        for a, e in zip(actual, example):
            assert_like(testcase, a, e, where=where)
    else:
        testcase.assertEqual(actual, example, where)


class ReadmeProtocolTests(ServerTestCase):
    """The two "Protocol in brief" examples, replayed against a real server."""

    def setUp(self):
        result = super().setUp()
        self.clock.advance(1704672000)  # the examples' serverTime and timestamps
        return result

    def example_lines(self, heading):
        section = README.split(heading, 1)[1]
        [block] = re.findall(r"```\n(.*?)```", section, re.S)[:1]
        return [line.strip() for line in block.splitlines() if line.strip()]

    @defer.inlineCallbacks
    def replay(self, lines, me, others):
        last_sent = None
        for line in lines:
            arrow = re.fullmatch(r"(→|←) (\{.*\})", line)
            aside = re.fullmatch(r"\((.+?) ← (.*)\)", line)
            if arrow and arrow.group(1) == "→":
                last_sent, _ = parse_example(arrow.group(2))
                me.send(last_sent)
            elif arrow:
                expected, more = parse_example(arrow.group(2))
                got = yield me.expect(expected["type"], skip=("peer-status",))
                assert_like(self, got, expected, more, line)
            elif aside:
                who, what = aside.groups()
                same = re.fullmatch(r'the same object with ("\w+":"[^"]*"(?:,"\w+":"[^"]*")*)', what)
                if same:
                    expected, more = {**last_sent, **json.loads("{" + same.group(1) + "}")}, False
                else:
                    expected, more = parse_example(what)
                if who == "every other peer":
                    targets = list(others.values())
                elif who.endswith(", when it registers"):
                    peer_id = who.split(",")[0]
                    targets = [(yield self.register(peer_id))]
                else:
                    targets = [others[who]]
                for target in targets:
                    skip = () if expected["type"] == "peer-status" else ("peer-status",)
                    got = yield target.expect(expected["type"], skip=skip)
                    assert_like(self, got, expected, more, line)
                if who.endswith(", when it registers"):
                    # That happens later, in the example: it is not in the lists that follow.
                    yield targets[0].drop()
                    yield wait_for(lambda: peer_id not in self.registry.peers, f"{peer_id} to leave")
            else:
                self.fail(f"cannot replay {line!r}")

    @defer.inlineCallbacks
    def test_room_clients(self):
        bob = yield self.join("call-7", "bob")
        alice = yield self.connect()
        yield self.replay(self.example_lines("Room clients:"), alice, {"bob": bob})

    @defer.inlineCallbacks
    def test_peer_clients(self):
        pc = yield self.register("pc-1", deviceType="desktop", deviceInfo={"name": "Office"})
        phone = yield self.connect()
        yield self.replay(self.example_lines("Peer clients:"), phone, {"pc-1": pc})


class MetricsDocumentationTests(ServerTestCase):
    """Metric names in docs/operations.md (table and alert rules) against /metrics."""

    @defer.inlineCallbacks
    def scrape_after_traffic(self):
        a = yield self.register("a")
        b = yield self.register("b")
        a.send({"type": "offer", "to": "b", "offer": {}})
        yield b.expect("offer", skip=("peer-status",))
        _, body = yield self.http_get("/metrics")
        return {name for name, _ in parse_metrics(body)}

    @defer.inlineCallbacks
    def test_alert_rules_use_exported_metrics(self):
        exported = yield self.scrape_after_traffic()
        [rules] = [yaml.safe_load(text) for lang, text in code_blocks(OPERATIONS) if lang == "yaml"]
        scrape = yaml.safe_load((REPO / "etc" / "prometheus.yml").read_text())
        jobs = {job["job_name"] for job in scrape["scrape_configs"]}
        used = set()
        for rule in rules["groups"][0]["rules"]:
            used |= set(re.findall(r"\b(?:signaling|process)_\w+", rule["expr"]))
            for job in re.findall(r'job="([^"]+)"', rule["expr"]):
                self.assertIn(job, jobs, rule["alert"])
        self.assertGreater(len(used), 5)
        self.assertEqual(sorted(used - exported), [])

    @defer.inlineCallbacks
    def test_metrics_table_lists_every_family(self):
        exported = yield self.scrape_after_traffic()
        families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in exported
                    if not name.startswith("process_")}
        table = set(re.findall(r"^\| `(signaling_\w+)` \|", OPERATIONS, re.M))
        self.assertEqual(table, families)
        self.assertIn("process_open_fds", exported)

    @defer.inlineCallbacks
    def test_stats_fields_are_the_documented_ones(self):
        _, body = yield self.http_get("/stats")
        paragraph = OPERATIONS.split("- `GET /stats`", 1)[1].split("\n- ", 1)[0].split("Main port")[0]
        self.assertEqual(set(json.loads(body)), set(re.findall(r"`(\w+)`", paragraph)))


class OptionsTableTests(ProcessTestCase):
    def table(self):
        section = README.split("### Options", 1)[1].split("\n## ", 1)[0]
        rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
        return [(re.findall(r"`(-[-\w]+)", row[0].lstrip("| ")), row[1]) for row in rows]

    def test_table_lists_every_option_of_help_and_no_other(self):
        help_text = subprocess.run(
            [sys.executable, *TWISTD, "--help"], env=environment(), capture_output=True,
            text=True, timeout=60).stdout
        in_help = set(re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", help_text, re.M)) - {"--help", "--version"}
        in_table = {name for names, _ in self.table() for name in names if name.startswith("--")}
        self.assertEqual(in_table, in_help)
        self.assertIn("-p", [name for names, _ in self.table() for name in names])

    def test_plain_defaults_are_the_real_ones(self):
        defaults = Config(db=":memory:")
        checked = 0
        for names, default in self.table():
            field = names[0].lstrip("-").replace("-", "_")
            if re.fullmatch(r"\d+", default.strip()) and hasattr(defaults, field):
                self.assertEqual(getattr(defaults, field), int(default), names)
                checked += 1
        self.assertGreater(checked, 8)


class BackupTests(ProcessTestCase):
    """The backup command of docs/offline-store.md, against a running server."""

    def command(self, database, backups):
        text = (REPO / "docs" / "offline-store.md").read_text()
        [command] = [line for line in text.splitlines() if line.startswith("test -f ")]
        return (command.replace("/var/lib/signaling/signaling.sqlite", shlex.quote(database))
                .replace("/backup/", shlex.quote(backups + "/")))

    @defer.inlineCallbacks
    def test_backup_while_serving_and_restore(self):
        require_tool("sqlite3", "sqlite3")
        directory = self.mkdtemp()
        backups = os.path.join(directory, "backups")
        os.mkdir(backups)
        server, port = yield self.start(MODULE, "--port", "0", "--db", "signaling.sqlite",
                                        directory=directory)
        alice = yield self.register(f"ws://127.0.0.1:{port}/", "alice")
        alice.send({"type": "message", "to": "bob", "messageId": "m-1", "payload": "kept"})
        self.assertTrue((yield alice.expect("peer-offline"))["queued"])
        result = subprocess.run(["sh", "-c", self.command(os.path.join(directory, "signaling.sqlite"),
                                                          backups)],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        [copy] = os.listdir(backups)
        self.assertRegex(copy, r"^signaling-\d{4}-\d\d-\d\d\.sqlite$")
        # The copy is a database the server opens, holding the queued message.
        restored, port = yield self.start(MODULE, "--port", "0", "--db",
                                          os.path.join(backups, copy))
        bob = yield self.register(f"ws://127.0.0.1:{port}/", "bob")
        message = yield bob.expect("offline-message")
        self.assertEqual(message["originalMessage"]["payload"], "kept")

    def test_backup_of_a_missing_file_fails(self):
        require_tool("sqlite3", "sqlite3")
        directory = self.mkdtemp()
        result = subprocess.run(
            ["sh", "-c", self.command(os.path.join(directory, "nothing.sqlite"), directory)],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(os.listdir(directory), [])


class TLSSessionTests(ProcessTestCase):
    """docs/tls.md: no session is ever resumed; TLS 1.2 sends no ticket."""

    @defer.inlineCallbacks
    def test_no_resumption(self):
        directory = self.mkdtemp()
        pki = PKI.create()
        files = pki.write(os.path.join(directory, "tls"))
        server, port = yield self.start(MODULE, "--port", "0", "--db", ":memory:", "--tls-cert",
                                        str(files.fullchain), "--tls-key", str(files.key))

        contexts = {}

        def connect(version, session=None):
            if version not in contexts:
                contexts[version] = ssl.create_default_context(cadata=pki.root_pem.decode())
                contexts[version].minimum_version = contexts[version].maximum_version = version
            context = contexts[version]
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                    tls.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    while tls.recv(4096):
                        pass
                    return tls.session, tls.session_reused

        for version, ticket in ((ssl.TLSVersion.TLSv1_2, False), (ssl.TLSVersion.TLSv1_3, True)):
            first, reused = yield threads.deferToThread(connect, version)
            self.assertFalse(reused)
            self.assertEqual(first.has_ticket, ticket, version)
            _, reused = yield threads.deferToThread(connect, version, first)
            self.assertFalse(reused, version)


class PluginCacheTests(ProcessTestCase):
    def test_documented_command_leaves_twistd_nothing_to_write(self):
        unit = (REPO / "etc" / "signaling.service").read_text()
        [line] = [line for line in unit.splitlines() if "getPlugins" in line]
        argv = shlex.split(line.lstrip("# "))
        self.assertEqual(argv[0], "/opt/signaling/venv/bin/python")
        self.assertIn(" ".join(argv[1:]).replace("-c ", "-c \"", 1) + '"', README)
        result = subprocess.run([sys.executable, *argv[1:]], env=environment(),
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        from twisted import plugins

        caches = [os.path.join(d, "dropin.cache") for d in plugins.__path__
                  if os.path.exists(os.path.join(d, "dropin.cache"))]
        self.assertTrue(caches)
        before = {path: os.stat(path).st_mtime_ns for path in caches}
        result = subprocess.run([sys.executable, *TWISTD, "--version"], env=environment(),
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("plugin cache", result.stdout + result.stderr)
        self.assertEqual({path: os.stat(path).st_mtime_ns for path in caches}, before)
