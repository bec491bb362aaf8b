"""
Test support: the server as a real child process.

:class:`ServerProcess` runs ``twistd -n signaling`` or ``python -m signaling``
from this checkout (``PYTHONPATH`` points at it, so the ``twistd`` plugin in
``twisted/plugins`` is found) in a temporary working directory, with its log
in a file there. :class:`ProcessTestCase` starts them, connects real
WebSocket clients to them and makes sure that no process, connection or timer
outlives a test: a process still running at cleanup gets SIGKILL.

Waits are bounded by deadlines and poll the reactor, so a test fails instead
of hanging, and nothing is asserted about how long anything took.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from helpers import Client, connect, settle_autobahn_timers

__all__ = [
    "REPO",
    "TWISTD",
    "MODULE",
    "START_TIMEOUT",
    "ServerProcess",
    "ProcessTestCase",
    "SystemTempMixin",
    "environment",
    "free_port",
    "last_line",
    "occupied_port",
    "run",
]

#: Root of the checkout under test.
REPO = Path(__file__).resolve().parent.parent
#: Command line (after the interpreter) that runs ``twistd -n signaling``.
TWISTD: tuple[str, ...] = (
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
    "-n",
    "--pidfile=",
    "signaling",
)
#: Command line (after the interpreter) that runs ``python -m signaling``.
MODULE: tuple[str, ...] = ("-m", "signaling")
#: Seconds a server may take to start listening or to exit.
START_TIMEOUT = 20.0
#: Seconds between two looks at a child process or its log.
POLL = 0.02

_LISTENING = re.compile(r"starting on (\d+)")


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """
    The environment of a child server: this one without any setting the
    server reads (``PORT``, ``SIGNALING_*``), plus ``extra``.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "PORT" and not name.startswith("SIGNALING_")
    }
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def occupied_port(testcase: unittest.TestCase) -> int:
    """A port on 127.0.0.1 held by a listening socket until the test's cleanup."""
    taken = socket.socket()
    testcase.addCleanup(taken.close)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken.getsockname()[1]


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (where a command's error message stands)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run(
    command: Sequence[str],
    args: Sequence[str],
    cwd: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> subprocess.CompletedProcess:
    """Run a command that is expected to exit by itself (``--help``, a usage error)."""
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class ServerProcess:
    """
    One server child process, its log file and its working directory.

    :ivar directory: the working directory (a fresh temporary one).
    :ivar log_path: where its stdout and stderr go.
    """

    def __init__(
        self,
        command: Sequence[str],
        args: Sequence[str],
        directory: str | os.PathLike[str],
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """``preexec_fn`` runs in the child before the server (resource limits, say)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / "server.log"
        self.argv = [sys.executable, *command, *args]
        self._env = environment(env)
        self._preexec_fn = preexec_fn
        self._log_file: Any = None
        self.popen: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        """Start the process (appending to the log of an earlier run in the same directory)."""
        self._log_file = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=self.directory,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._preexec_fn,
        )
        self._log_start = self.log_path.stat().st_size
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.popen is not None
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal); None while running."""
        assert self.popen is not None
        return self.popen.poll()

    @property
    def log(self) -> str:
        """Everything this run logged so far."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode("utf-8", "replace")

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process (if it still runs)."""
        if self.returncode is None:
            os.kill(self.pid, signum)

    @defer.inlineCallbacks
    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT) -> Any:
        """
        Wait until the log holds ``count`` matches of the regular expression
        ``pattern``; fires with the list of matches. Fails when the process
        exits first or after ``timeout`` seconds.
        """
        regex = re.compile(pattern)
        deadline = reactor.seconds() + timeout
        while True:
            matches = list(regex.finditer(self.log))
            if len(matches) >= count:
                return matches
            if self.returncode is not None:
                raise AssertionError(
                    f"server exited with {self.returncode} before logging {pattern!r}:\n{self.log}"
                )
            if reactor.seconds() > deadline:
                raise AssertionError(f"no {pattern!r} in the log after {timeout}s:\n{self.log}")
            yield _sleep(POLL)

    @defer.inlineCallbacks
    def listening(self, count: int = 1, timeout: float = START_TIMEOUT) -> Any:
        """Wait until ``count`` listeners started; fires with their port numbers."""
        matches = yield self.wait_for_log(_LISTENING.pattern, count, timeout)
        return [int(m.group(1)) for m in matches]

    @defer.inlineCallbacks
    def wait_exit(self, timeout: float = START_TIMEOUT) -> Any:
        """Fires with the exit status; fails if the process still runs after ``timeout``."""
        deadline = reactor.seconds() + timeout
        while self.returncode is None:
            if reactor.seconds() > deadline:
                raise AssertionError(f"server still running after {timeout}s:\n{self.log}")
            yield _sleep(POLL)
        self._close_log()
        return self.returncode

    def wait_exit_blocking(self, timeout: float = START_TIMEOUT) -> int:
        """The exit status, waiting without the reactor (raises TimeoutExpired)."""
        assert self.popen is not None
        code = self.popen.wait(timeout)
        self._close_log()
        return code

    def kill(self) -> None:
        """
        SIGKILL the process and its process group (the workers of
        ``--workers``) if they still run, and reap the process.
        """
        if self.popen is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)  # started as a session (and group) leader
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(START_TIMEOUT)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class SystemTempMixin:
    """
    ``mktemp`` in the system's temporary directory, removed after the test
    (trial's own would leave directories in the working directory).
    """

    def mktemp(self) -> str:
        """A path that does not exist yet, in a new directory removed at cleanup."""
        base = tempfile.mkdtemp(prefix="signaling-test-")
        self.addCleanup(shutil.rmtree, base, True)  # type: ignore[attr-defined]
        return os.path.join(base, "temp")

    def mkdtemp(self) -> str:
        """A new empty directory, removed at cleanup."""
        path = self.mktemp()
        os.mkdir(path)
        return path


class ProcessTestCase(SystemTempMixin, unittest.TestCase):
    """Starts server processes and clients; kills and closes all of them after each test."""

    def spawn(
        self,
        command: Sequence[str],
        *args: str,
        env: dict[str, str] | None = None,
        directory: str | os.PathLike[str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> ServerProcess:
        """
        Start a server process (in a new temp directory unless ``directory``;
        ``preexec_fn`` runs in the child first).
        """
        server = ServerProcess(command, args, os.path.abspath(directory or self.mktemp()), env,
                               preexec_fn)
        server.start()
        self.addCleanup(server.kill)
        return server

    @defer.inlineCallbacks
    def start(
        self,
        command: Sequence[str],
        *args: str,
        env: dict[str, str] | None = None,
        directory: str | os.PathLike[str] | None = None,
        listeners: int = 1,
        preexec_fn: Callable[[], None] | None = None,
    ) -> Any:
        """
        Start a server with ``--interface 127.0.0.1`` and wait until it
        listens; fires with (process, first port).
        """
        server = self.spawn(command, "--interface", "127.0.0.1", *args,
                            env=env, directory=directory, preexec_fn=preexec_fn)
        ports = yield server.listening(listeners)
        return server, ports[0]

    @defer.inlineCallbacks
    def client(self, url: str, client_class: type = Client, context_factory: Any = None,
               headers: dict[str, str] | None = None) -> Any:
        """A WebSocket client connected to ``url``, dropped at cleanup."""
        client = yield connect(url, headers, client_class, context_factory)
        self.addCleanup(self._drop, client)
        return client

    @defer.inlineCallbacks
    def register(self, url: str, peer_id: str, context_factory: Any = None, **fields: Any) -> Any:
        """A client registered as ``peer_id`` (its ``registered`` consumed)."""
        client = yield self.client(url, context_factory=context_factory)
        client.send({"type": "register", "peerId": peer_id, **fields})
        yield client.expect("registered")
        return client

    @defer.inlineCallbacks
    def _drop(self, client: Client) -> Any:
        yield client.drop()
        yield settle_autobahn_timers()

    @staticmethod
    @defer.inlineCallbacks
    def until_pong(client: Client) -> Any:
        """Send a ping; fires with every message that arrived before the pong."""
        client.send({"type": "ping"})
        before = []
        while True:
            message = yield client.next()
            if message.get("type") == "pong":
                return before
            before.append(message)

    def assert_clean_exit(self, server: ServerProcess, code: int) -> None:
        """
        The exit status of a graceful stop: 0, or twistd's re-raised
        SIGTERM; and nothing in the log looks like a crash.
        """
        self.assertIn(code, (0, -signal.SIGTERM), server.log)
        self.assertNotIn("Traceback", server.log)
        self.assertNotIn("Unhandled", server.log)
