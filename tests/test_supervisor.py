"""
The pieces of ``--workers`` in process: the restart policy, the hand-over
of the configuration, the relay of worker log lines, and the supervisor
giving up on workers that cannot start (real child processes, stand-in
programs for the worker).
"""

from __future__ import annotations

import io
import json
import os
import stat
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import LogLevel, Logger
from twisted.python.failure import Failure
from twisted.trial import unittest

from helpers import capture_log, server_config, wait_for
from processes import SystemTempMixin
from signaling.config import Config
from signaling.logs import format_json, format_text
from signaling.worker import (
    decode_config,
    event_line,
    handoff_line,
    package_directory,
    read_handoff,
)
from signaling.workers import RestartPolicy, Supervisor, WorkerProcess, describe_exit

REDIS = "unix:///run/redis/redis.sock"


class RestartPolicyTests(unittest.SynchronousTestCase):
    def test_never_served_gives_up_at_once(self):
        self.assertIsNone(RestartPolicy().exited(ran_for=0.2, was_ready=False))

    def test_backoff_doubles_to_the_cap_and_resets_after_a_stable_run(self):
        policy = RestartPolicy(first=0.5, cap=4, stable_after=30)
        delays = [policy.exited(ran_for=1, was_ready=True) for _ in range(6)]
        self.assertEqual(delays, [0.5, 1, 2, 4, 4, 4])
        self.assertEqual(policy.exited(ran_for=31, was_ready=True), 0.5)
        self.assertEqual(policy.exited(ran_for=1, was_ready=True), 1)

    def test_repeated_exits_before_serving_give_up(self):
        policy = RestartPolicy(first=1, cap=8, max_unready=3)
        self.assertEqual(policy.exited(100, True), 1)
        self.assertEqual(policy.exited(0.1, False), 2)
        self.assertEqual(policy.exited(0.1, False), 4)
        self.assertIsNone(policy.exited(0.1, False))

    def test_serving_again_clears_the_unready_count(self):
        policy = RestartPolicy(max_unready=2)
        policy.exited(100, True)
        policy.exited(0.1, False)
        policy.exited(5, True)
        self.assertIsNotNone(policy.exited(0.1, False))

    def test_describe_exit(self):
        self.assertEqual(describe_exit(Failure(ProcessDone(0))), "exit status 0")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(3))), "exit status 3")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(signal=9))), "killed by SIGKILL")


class HandoffTests(unittest.SynchronousTestCase):
    def test_round_trip_is_the_same_configuration(self):
        config = server_config(
            workers=3, redis_url="redis://:pw@h:1/2", listen=("tcp:1", "tcp:2"),
            allowed_origins=("https://a.example",), auth_secret="s" * 32, rate_limit=5.5,
        )
        handoff = read_handoff(io.BytesIO(handoff_line(config, 2, 4) + b"more input"))
        self.assertEqual((handoff.worker, handoff.sockets, handoff.config), (2, 4, config))
        self.assertEqual(handoff.package, package_directory())

    def test_bad_input(self):
        good = json.loads(handoff_line(Config(), 1, 1))
        unknown = dict(good, config=dict(good["config"], from_the_future=1))
        invalid = dict(good, config=dict(good["config"], port=-1))
        for line in (b"", b"{}", b"not json\n", b"[1]\n",
                     json.dumps(unknown).encode() + b"\n", json.dumps(invalid).encode() + b"\n",
                     handoff_line(Config(), 1, 1)[:-1]):
            self.assertRaises(ValueError, read_handoff, io.BytesIO(line))
        self.assertRaises(ValueError, decode_config, {"from_the_future": 1})


class RelayTests(unittest.SynchronousTestCase):
    """What a worker writes becomes the parent's log events."""

    def setUp(self):
        self.events: list[dict] = []
        self.ready: list[WorkerProcess] = []
        self.process = WorkerProcess(2, b"", reactor, self.events.append, self.ready.append,
                                     lambda process, reason: None)
        self.process.pid = 4242

    def worker_events(self, *emit: Any) -> list[str]:
        """Lines as a worker writes them for events logged with ``emit`` calls."""
        written: list[dict] = []
        logger = Logger(namespace="signaling.hub.Hub", observer=written.append)
        for call in emit:
            call(logger)
        return [event_line(event) for event in written]

    def test_events_keep_their_fields_and_say_which_worker(self):
        [line] = self.worker_events(
            lambda log: log.info("{peer} registered as {identity}", event="register",
                                 peer="127.0.0.1:5", identity="alice"))
        data = line.encode()
        self.process.childDataReceived(1, data[:10])
        self.assertEqual(self.events, [])
        self.process.childDataReceived(1, data[10:])
        [event] = self.events
        self.assertEqual((event["worker"], event["worker_pid"]), (2, 4242))
        self.assertEqual(event["log_level"], LogLevel.info)
        record = json.loads(format_json(event))
        self.assertEqual(
            (record["event"], record["identity"], record["text"], record["worker"]),
            ("register", "alice", "127.0.0.1:5 registered as alice", 2),
        )
        self.assertIn("[signaling.hub.Hub#info worker 2] register: 127.0.0.1:5 registered as alice",
                      format_text(event))
        self.assertEqual(event["log_system"], "signaling.hub.Hub#info worker 2")

    def test_failure_keeps_its_exception_text(self):
        def fail(log: Logger) -> None:
            try:
                raise KeyError("the-missing-key")
            except KeyError:
                log.failure("lookup failed")

        [line] = self.worker_events(fail)
        self.process.childDataReceived(1, line.encode())
        text = format_text(self.events[0])
        self.assertIn("lookup failed", text)
        self.assertIn("KeyError: 'the-missing-key'", text)
        self.assertIn("test_supervisor.py", text)

    def test_ready_event_marks_the_worker_ready(self):
        [line] = self.worker_events(lambda log: log.info("serving", event="worker_ready"))
        self.assertFalse(self.process.ready)
        self.process.childDataReceived(1, line.encode())
        self.assertTrue(self.process.ready)
        self.assertEqual(self.ready, [self.process])

    def test_other_output_is_logged_as_text(self):
        self.process.childDataReceived(1, b"a stray print\n\n")
        self.process.childDataReceived(2, b"Traceback (most recent call last):\n  boom")
        self.process.processEnded(Failure(ProcessDone(0)))
        texts = [format_text(event) for event in self.events]
        self.assertEqual(len(texts), 3, texts)
        self.assertIn("worker 2] a stray print", texts[0])
        self.assertIn("Traceback (most recent call last):", texts[1])
        self.assertIn("boom", texts[2])
        self.assertEqual(list(self.process.stderr_tail),
                         ["Traceback (most recent call last):", "  boom"])

    def test_endless_line_is_cut(self):
        self.process.childDataReceived(2, b"x" * (2 * 1024 * 1024))
        [event] = self.events
        self.assertEqual(len(event["line"]), 1024 * 1024)


def write_program(directory: str, body: str) -> str:
    """An executable shell script standing in for ``python`` (it gets ``-m signaling.worker N``)."""
    path = os.path.join(directory, "worker.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\ncd \"$(dirname \"$0\")\"\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


class SupervisorTests(SystemTempMixin, unittest.TestCase):
    """The supervisor with stand-in worker programs: failing starts and crash loops."""

    def supervise(self, program: str, workers: int = 1, **policy: Any) -> Any:
        self.events: list[dict] = []
        self.failed = defer.Deferred()
        config = server_config(workers=workers, redis_url=REDIS if workers > 1 else None)
        supervisor = Supervisor(
            config, reactor, publish=self.events.append, executable=program,
            policy=lambda: RestartPolicy(**policy), on_failure=lambda: self.failed.callback(None),
        )
        supervisor.privilegedStartService()
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        return supervisor

    @defer.inlineCallbacks
    def test_worker_that_cannot_start_ends_the_parent(self):
        program = write_program(self.mkdtemp(), "echo 'cannot read the key' >&2\nexit 3\n")
        captured = capture_log(self, lambda event: event.get("event") == "workers_failed")
        supervisor = self.supervise(program, workers=2)
        yield self.failed.addTimeout(20, reactor)
        self.assertEqual(supervisor.exit_status, 1)
        [failed] = captured
        self.assertIn("exited before serving (exit status 3): cannot read the key", failed["reason"])

    @defer.inlineCallbacks
    def test_crash_loop_restarts_with_backoff_then_gives_up(self):
        directory = self.mkdtemp()
        with open(os.path.join(directory, "ready.json"), "w") as f:
            logger = Logger(namespace="stand-in", observer=lambda e: f.write(event_line(e)))
            logger.info("serving", event="worker_ready")
        program = write_program(directory, (
            "n=$(cat count 2>/dev/null || echo 0)\necho $((n + 1)) > count\n"
            "if [ \"$n\" = 0 ]; then cat ready.json; sleep 0.2; fi\n"
            "echo \"run $n fails\" >&2\nexit 1\n"
        ))
        starts = capture_log(self, lambda event: event.get("event") == "worker_start")
        supervisor = self.supervise(program, first=0.3, cap=0.6, max_unready=2)
        yield self.failed.addTimeout(20, reactor)
        # Served once, then two starts that failed before serving: three starts.
        self.assertEqual(len(starts), 3)
        # The second delay is the doubled first one.
        self.assertGreaterEqual(starts[2]["log_time"] - starts[1]["log_time"], 0.6)
        with open(os.path.join(directory, "count")) as f:
            self.assertEqual(f.read().strip(), "3")
        self.assertEqual(supervisor.exit_status, 1)
        yield wait_for(lambda: not supervisor.workers(), "no worker left")
