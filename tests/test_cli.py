"""``python -m signaling`` as a real process: serving, stopping, usage errors, a bad --db."""

import os
import signal
import sqlite3

from twisted.internet import defer

from processes import MODULE, ProcessTestCase, last_line, occupied_port, run
from signaling import __version__


class ServeTests(ProcessTestCase):
    @defer.inlineCallbacks
    def serve_and_stop(self, signum):
        server, port = yield self.start(MODULE, "--port", "0", "--db", "offline.sqlite")
        url = f"ws://127.0.0.1:{port}/"
        alice = yield self.register(url, "alice")
        bob = yield self.register(url, "bob")
        yield alice.expect("peer-status")
        alice.send({"type": "ice-candidate", "to": "bob", "candidate": {"candidate": "c1"}})
        candidate = yield bob.expect("ice-candidate")
        self.assertEqual((candidate["from"], candidate["candidate"]), ("alice", {"candidate": "c1"}))

        server.send_signal(signal.SIGHUP)  # certificate reload; without TLS a no-op
        yield self.until_pong(alice)
        self.assertIsNone(server.returncode)

        server.send_signal(signum)
        closes = yield defer.gatherResults([alice.wait_closed(), bob.wait_closed()])
        self.assertEqual([code for code, _ in closes], [1001, 1001])
        status = yield server.wait_exit()
        self.assertEqual(status, 0, server.log)
        self.assertNotIn("Traceback", server.log)
        self.assertTrue((server.directory / "offline.sqlite").exists())

    def test_serve_talk_and_sigterm(self):
        return self.serve_and_stop(signal.SIGTERM)

    def test_sigint_stops_cleanly_too(self):
        return self.serve_and_stop(signal.SIGINT)


class CommandLineTests(ProcessTestCase):
    def test_help(self):
        result = run(MODULE, ["--help"], self.mkdtemp())
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--port", "--db", "--tls-cert", "--listen", "--presence"):
            self.assertIn(option, result.stdout)

    def test_help_starts_with_a_usage_line(self):
        result = run(MODULE, ["--help"], self.mkdtemp())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("Usage: python -m signaling [options]\n"),
                        result.stdout[:200])
        self.assertIn("--log-format", result.stdout)

    def test_version(self):
        result = run(MODULE, ["--version"], self.mkdtemp())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith(f"signaling {__version__} (Twisted "), result.stdout)

    def test_usage_errors_exit_2_with_the_message_and_a_hint(self):
        directory = self.mkdtemp()
        for args, env, name in ((["--port", "abc"], {}, "--port"),
                                ([], {"PORT": "abc"}, "PORT"),
                                (["--no-such-option"], {}, "no-such-option"),
                                (["--presence", "some"], {}, "--presence"),
                                ([], {"SIGNALING_LOG_FORMAT": "xml"}, "--log-format")):
            result = run(MODULE, ["--db", ":memory:", *args], directory, env)
            self.assertEqual(result.returncode, 2, (args, result.stdout, result.stderr))
            lines = result.stderr.splitlines()
            self.assertEqual(len(lines), 2, result.stderr)
            self.assertTrue(lines[0].startswith("signaling: error: "), lines)
            self.assertIn(name, lines[0])
            self.assertEqual(lines[1], "Run 'python -m signaling --help' to see every option.")
            self.assertEqual(result.stdout, "")
        self.assertEqual(os.listdir(directory), [])

    def test_corrupt_db_refused_and_left_alone(self):
        directory = self.mkdtemp()
        path = os.path.join(directory, "offline.sqlite")
        content = b"this is not a database\n" * 100
        with open(path, "wb") as f:
            f.write(content)
        result = run(
            MODULE, ["--port", "0", "--interface", "127.0.0.1", "--db", "offline.sqlite"], directory
        )
        self.assertNotEqual(result.returncode, 0, result.stdout)
        message = last_line(result.stderr)
        self.assertIn("offline.sqlite", message)
        self.assertIn("not an SQLite database", message)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), content)
        self.assertEqual(sorted(os.listdir(directory)), ["offline.sqlite"])

    def assert_database_refused(self, script, reason):
        """An SQLite file made by ``script`` is refused with ``reason`` and left as it was."""
        directory = self.mkdtemp()
        path = os.path.join(directory, "offline.sqlite")
        conn = sqlite3.connect(path)
        conn.executescript(script)
        conn.close()
        with open(path, "rb") as f:
            content = f.read()
        result = run(MODULE, ["--port", "0", "--interface", "127.0.0.1", "--db", path], directory)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        message = last_line(result.stderr)
        self.assertIn(path, message)
        self.assertIn(reason, message)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), content)
        self.assertEqual(sorted(os.listdir(directory)), ["offline.sqlite"])

    def test_database_of_something_else_refused(self):
        self.assert_database_refused(
            "CREATE TABLE invoices (id INTEGER); INSERT INTO invoices VALUES (1);",
            "something else",
        )

    def test_database_from_a_newer_release_refused(self):
        self.assert_database_refused(
            "CREATE TABLE version (version INTEGER); INSERT INTO version VALUES (999);"
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY);",
            "schema version 999",
        )

    def test_port_in_use_exits_1(self):
        number = str(occupied_port(self))
        result = run(
            MODULE, ["--port", number, "--interface", "127.0.0.1", "--db", ":memory:"],
            self.mkdtemp(),
        )
        self.assertEqual(result.returncode, 1, result.stdout)
        message = last_line(result.stderr)
        self.assertIn(number, message)
        self.assertIn("Address already in use", message)
