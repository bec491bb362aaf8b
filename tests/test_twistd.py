"""``twistd -n signaling`` as a real process: serving, stopping, options, environment."""

import json
import os
import re
import signal
import subprocess
import sys

from twisted.internet import defer

from helpers import Client, http_get
from processes import (
    TWISTD,
    ProcessTestCase,
    environment,
    free_port,
    last_line,
    occupied_port,
    run,
)
from signaling import __version__
from signaling.tap import Options

#: ``twistd`` itself, without the plugin name.
TWISTD_ONLY = TWISTD[:-1]


class PingRecorder(Client):
    """Counts the heartbeat pings it receives and never answers them."""

    answer_pings = False
    pings = 0

    def onPing(self, payload):
        self.pings += 1


class ServeTests(ProcessTestCase):
    @defer.inlineCallbacks
    def test_serve_talk_health_and_sigterm(self):
        server, port = yield self.start(
            TWISTD, "--port", "0", "--db", ":memory:", "--shutdown-timeout", "5"
        )
        # The start-up output says where the demo page is, and it is there.
        [match] = yield server.wait_for_log(r"demo video call: open (\S+) in two browser tabs")
        self.assertEqual(match.group(1), f"http://127.0.0.1:{port}/demo/")
        response, page = yield http_get(match.group(1))
        self.assertEqual(response.code, 200)
        self.assertIn(b"<title>signaling demo", page)
        url = f"ws://127.0.0.1:{port}/"
        alice = yield self.register(url, "alice")
        bob = yield self.register(url, "bob")
        status = yield alice.expect("peer-status")
        self.assertEqual((status["peerId"], status["status"]), ("bob", "online"))

        alice.send({"type": "offer", "to": "bob", "sdp": "v=0 test", "messageId": "o1"})
        offer = yield bob.expect("offer")
        self.assertEqual((offer["from"], offer["sdp"], offer["messageId"]), ("alice", "v=0 test", "o1"))
        bob.send({"type": "answer", "to": "alice", "sdp": "v=0 answer"})
        answer = yield alice.expect("answer")
        self.assertEqual(answer["from"], "bob")

        response, body = yield http_get(f"http://127.0.0.1:{port}/health")
        self.assertEqual(response.code, 200)
        health = json.loads(body)
        self.assertEqual(health["status"], "healthy")
        self.assertEqual(health["connections"]["current"], 2)

        # SIGHUP (certificate reload) without TLS changes nothing.
        server.send_signal(signal.SIGHUP)
        yield self.until_pong(alice)
        self.assertIsNone(server.returncode)

        server.send_signal(signal.SIGTERM)
        closes = yield defer.gatherResults([alice.wait_closed(), bob.wait_closed()])
        self.assertEqual([code for code, _ in closes], [1001, 1001])
        status = yield server.wait_exit()
        self.assert_clean_exit(server, status)

    @defer.inlineCallbacks
    def test_sigterm_with_a_client_that_never_closes(self):
        server, port = yield self.start(
            TWISTD, "--port", "0", "--db", "offline.sqlite", "--shutdown-timeout", "1"
        )
        url = f"ws://127.0.0.1:{port}/"
        polite = yield self.register(url, "polite")
        stubborn = yield self.register(url, "stubborn")
        stubborn.sendCloseFrame = lambda *args, **kwargs: None
        server.send_signal(signal.SIGTERM)
        code, _ = yield polite.wait_closed()
        self.assertEqual(code, 1001)
        yield stubborn.wait_closed(timeout=15)
        status = yield server.wait_exit()
        self.assert_clean_exit(server, status)

    @defer.inlineCallbacks
    def test_port_from_environment(self):
        wanted = free_port()
        server, port = yield self.start(TWISTD, "--db", ":memory:", env={"PORT": str(wanted)})
        self.assertEqual(port, wanted)
        client = yield self.client(f"ws://127.0.0.1:{wanted}/")
        yield self.until_pong(client)

    @defer.inlineCallbacks
    def test_presence_and_heartbeat_from_environment(self):
        server, port = yield self.start(
            TWISTD, "--port", "0", "--db", ":memory:",
            env={"SIGNALING_PRESENCE": "none", "SIGNALING_HEARTBEAT_INTERVAL": "0.2"},
        )
        url = f"ws://127.0.0.1:{port}/"
        alice = yield self.register(url, "alice")
        yield self.register(url, "bob")
        before_pong = yield self.until_pong(alice)
        self.assertEqual([m for m in before_pong if m["type"] == "peer-status"], [])

        # With the default interval (30 s) no ping would come in this wait.
        silent = yield self.client(url, client_class=PingRecorder)
        code, _ = yield silent.wait_closed(timeout=10)
        self.assertGreaterEqual(silent.pings, 1)
        self.assertNotEqual(code, 1000)
        yield self.until_pong(alice)  # answers its pings, so still there

    @defer.inlineCallbacks
    def test_command_line_beats_environment(self):
        taken = occupied_port(self)
        server, port = yield self.start(
            TWISTD, "--port", "0", "--presence", "all", "--db", ":memory:",
            env={"PORT": str(taken), "SIGNALING_PRESENCE": "none"},
        )
        self.assertNotEqual(port, taken)
        url = f"ws://127.0.0.1:{port}/"
        alice = yield self.register(url, "alice")
        yield self.register(url, "bob")
        before_pong = yield self.until_pong(alice)
        self.assertEqual(
            [(m["peerId"], m["status"]) for m in before_pong if m["type"] == "peer-status"],
            [("bob", "online")],
        )

    def test_port_in_use_exits(self):
        number = str(occupied_port(self))
        server = self.spawn(TWISTD, "--port", number, "--interface", "127.0.0.1", "--db", ":memory:")
        code = server.wait_exit_blocking()
        self.assertNotEqual(code, 0, server.log)
        self.assertIn("Address already in use", server.log)
        self.assertIn(number, server.log)

    def test_corrupt_db_refused_and_left_alone(self):
        directory = self.mkdtemp()
        path = os.path.join(directory, "offline.sqlite")
        content = b"not a database\n" * 50
        with open(path, "wb") as f:
            f.write(content)
        result = run(TWISTD, ["--port", "0", "--interface", "127.0.0.1", "--db", path], directory)
        self.assertNotEqual(result.returncode, 0)
        message = last_line(result.stdout + "\n" + result.stderr)
        self.assertIn(path, message)
        self.assertIn("not an SQLite database", message)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), content)
        self.assertEqual(sorted(os.listdir(directory)), ["offline.sqlite"])


def help_texts(help_output):
    """The option descriptions of a ``--help`` output (without the option column)."""
    texts = []
    for line in help_output.splitlines():
        match = re.match(r"^\s+(?:-\w, )?--[\w-]+=?\s+(.*)$", line)
        texts.append(match.group(1) if match else line.strip())
    return texts


class HelpTests(ProcessTestCase):
    def test_version_is_ours(self):
        result = run(TWISTD, ["--version"], self.mkdtemp())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(
            result.stdout,
            rf"^signaling {re.escape(__version__)} \(Twisted [\w.]+, Autobahn [\w.]+, Python [\w.]+\)\n$",
        )

    def test_help_starts_with_usage_and_has_no_runs_of_spaces(self):
        result = run(TWISTD, ["--help"], self.mkdtemp())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("Usage: twistd [options] signaling [options]\n"),
                        result.stdout[:200])
        crowded = [text for text in help_texts(result.stdout) if "  " in text]
        self.assertEqual(crowded, [])
        self.assertNotIn("[default: None]", result.stdout)
        self.assertNotIn("[default: ]", result.stdout)

    def test_twistd_lists_the_plugin(self):
        result = run(TWISTD_ONLY, ["--help"], self.mkdtemp())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"(?m)^\s+signaling\s+\S")

    def test_plugin_help_mentions_every_option(self):
        result = run(TWISTD, ["--help"], self.mkdtemp())
        self.assertEqual(result.returncode, 0, result.stderr)
        names = [name.rstrip("=") for name in Options().longOpt]
        self.assertGreater(len(names), 20)
        missing = [name for name in names if f"--{name}" not in result.stdout]
        self.assertEqual(missing, [], result.stdout)
        self.assertIn("SIGNALING_", result.stdout)


class BadValueTests(ProcessTestCase):
    #: (arguments, environment, what the error line must name)
    cases = [
        (["--port", "abc"], {}, "--port"),
        (["--heartbeat-interval", "-1"], {}, "--heartbeat-interval"),
        (["--presence", "some"], {}, "--presence"),
        (["--tls-cert", "cert.pem"], {}, "--tls-key"),
        (["--offline-max", "0"], {}, "--offline-max"),
        (["--tls-cert", "missing-cert.pem", "--tls-key", "missing-key.pem"], {}, "missing-cert.pem"),
        ([], {"PORT": "abc"}, "PORT"),
        ([], {"SIGNALING_OFFLINE_MAX": "0"}, "SIGNALING_OFFLINE_MAX"),
        ([], {"SIGNALING_SHUTDOWN_TIMEOUT": "soon"}, "SIGNALING_SHUTDOWN_TIMEOUT"),
        ([], {"SIGNALING_HIDE_DEVICE_INFO": "maybe"}, "SIGNALING_HIDE_DEVICE_INFO"),
    ]

    def run_all(self, cases):
        """Run twistd once per case, all at once; [(case, exit status, output)]."""
        directory = self.mkdtemp()
        children = []
        for args, env, _ in cases:
            argv = [sys.executable, *TWISTD, "--db", ":memory:", "--interface", "127.0.0.1", *args]
            child = subprocess.Popen(
                argv, cwd=directory, env=environment(env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            self.addCleanup(lambda c=child: c.poll() is None and (c.kill(), c.wait()))
            children.append(child)
        results = []
        for case, child in zip(cases, children):
            out, _ = child.communicate(timeout=60)
            results.append((case, child.returncode, out))
        return results

    def test_bad_values_exit_with_a_message_naming_the_option(self):
        problems = []
        for (args, env, name), code, out in self.run_all(self.cases):
            lines = out.splitlines()
            if code != 2:
                problems.append(f"{args} {env}: exit status {code}")
            elif len(lines) != 2 or name not in lines[0] or not lines[0].startswith("signaling: error: "):
                problems.append(f"{args} {env}: not one message naming {name} and a hint:\n{out}")
            elif lines[1] != "Run 'twistd signaling --help' to see every option.":
                problems.append(f"{args} {env}: no hint:\n{out}")
        self.assertEqual(problems, [])

    def test_unknown_listen_endpoint_is_a_usage_error(self):
        [(_, code, out)] = self.run_all([(["--listen", "nonsense:1"], {}, "nonsense")])
        self.assertEqual(code, 2)
        self.assertIn("nonsense", out.splitlines()[0])
        self.assertNotIn("Traceback", out)

    def test_unknown_option_is_a_usage_error_without_the_help(self):
        [(_, code, out)] = self.run_all([(["--no-such-option"], {}, "")])
        self.assertEqual(code, 2)
        self.assertEqual(out.splitlines(), [
            "signaling: error: option --no-such-option not recognized",
            "Run 'twistd signaling --help' to see every option.",
        ])
