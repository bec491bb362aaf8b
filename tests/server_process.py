"""
Test support: the server as a child process on 127.0.0.1.

Its standard output goes to a file in the test's temporary directory, read
after the process ended; the process is always killed in cleanup.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

from twisted.internet import defer, reactor, task

#: The checkout root, put on the child's PYTHONPATH.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class ServerProcess:
    """
    One server process: ``args`` after ``python``, run in ``workdir`` with
    the checkout on ``PYTHONPATH``.
    """

    def __init__(self, testcase: Any, args: list[str], workdir: str) -> None:
        self.output_path = os.path.join(workdir, "stdout.log")
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        with open(self.output_path, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, *args], cwd=workdir, env=env,
                stdout=out, stderr=subprocess.STDOUT,
            )
        testcase.addCleanup(self.kill)

    def kill(self) -> None:
        """Kill the process if it still runs, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the process."""
        self.process.send_signal(signum)

    @defer.inlineCallbacks
    def wait_listening(self, port: int, timeout: float = 15.0) -> Any:
        """Wait until ``port`` accepts connections (fails if the process ends first)."""
        for _ in range(int(timeout / 0.05)):
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output()}")
            if _accepts(port):
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"server did not listen on {port}:\n{self.output()}")

    @defer.inlineCallbacks
    def wait_exit(self, timeout: float) -> Any:
        """The exit status, waiting at most ``timeout`` seconds (None if still running)."""
        for _ in range(int(timeout / 0.05)):
            if self.process.poll() is not None:
                return self.process.returncode
            yield task.deferLater(reactor, 0.05, lambda: None)
        return self.process.poll()

    def output(self) -> str:
        """Everything the process wrote so far."""
        with open(self.output_path, encoding="utf-8", errors="replace") as f:
            return f.read()
