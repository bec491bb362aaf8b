"""Start, pin, wait for and stop the server under test (``python -m signaling``) as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pin(pid: int, core: int) -> bool:
    """Pin ``pid`` (0: this process) to ``core`` when the machine has two cores or more."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return False
    try:
        os.sched_setaffinity(pid, {core})
        return True
    except OSError:
        return False


#: Server options for a load test from one address: the per-connection rate
#: limit and the per-address connection cap are production defaults that a
#: benchmark from 127.0.0.1 must not hit. ``--server-arg`` can set them again.
BENCH_SERVER_ARGS = ("--rate-limit", "0", "--max-connections-per-ip", "0", "--max-connections", "0")


class ServerProcess:
    """``python -m signaling --interface 127.0.0.1 --port PORT --db :memory: [limits off] [extra]``,
    pinned to ``pin_core`` (default 0; ``None``: not pinned)."""

    def __init__(
        self, extra_args: Sequence[str] = (), port: Optional[int] = None, pin_core: Optional[int] = 0
    ) -> None:
        self.extra_args = list(extra_args)
        self.pin_core = pin_core
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self._log = tempfile.TemporaryFile()

    @property
    def pid(self) -> Optional[int]:
        """The server's process id while it runs."""
        return self.proc.pid if self.proc else None

    @property
    def url(self) -> str:
        """The server's WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/"

    def argv(self) -> list[str]:
        """The server's command line."""
        return [
            sys.executable, "-m", "signaling",
            "--interface", "127.0.0.1", "--port", str(self.port), "--db", ":memory:",
            *BENCH_SERVER_ARGS, *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until its port accepts; raise ``RuntimeError`` otherwise."""
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        self.proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        if self.pin_core is not None:
            pin(self.proc.pid, self.pin_core)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if port_open(self.port):
                return
            time.sleep(0.05)
        code = self.proc.poll()
        self.stop()
        raise RuntimeError(
            f"server did not come up (exit status {code}): {self.log_tail()}"
        )

    def log_tail(self, n: int = 2000) -> str:
        """The end of the server's combined stdout/stderr."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def close(self) -> None:
        """Stop the server and drop its log."""
        self.stop()
        self._log.close()
