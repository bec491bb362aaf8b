"""
Test support: a private ``redis-server`` on a Unix socket in a temporary
directory, without persistence, stopped at the test's cleanup.

    redis = start_redis(self)           # in a trial test case
    redis.url                           # "unix:///tmp/.../redis.sock"

Debian's ``redis-server`` package provides the binary (``.ci/run`` installs
it); without it these tests fail with a message saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["RedisServer", "start_redis"]

#: Seconds redis-server may take to answer its first PING.
START_TIMEOUT = 10.0


class RedisServer:
    """One ``redis-server`` process listening only on a Unix socket."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.socket_path = self.directory / "redis.sock"
        self.log_path = self.directory / "redis.log"
        self.popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The ``--redis`` URL of this server."""
        return f"unix://{self.socket_path}"

    def start(self) -> "RedisServer":
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [binary, "--port", "0", "--unixsocket", str(self.socket_path),
                 "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                 "--dir", str(self.directory)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        """Whether the server answers PING now."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1.0)
                s.connect(str(self.socket_path))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGKILL: nothing is persisted) and reap it."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(START_TIMEOUT)


def start_redis(testcase: Any) -> RedisServer:
    """A running private Redis for ``testcase``, stopped and removed at its cleanup."""
    directory = tempfile.mkdtemp(prefix="signaling-redis-")
    testcase.addCleanup(shutil.rmtree, directory, True)
    server = RedisServer(directory)
    testcase.addCleanup(server.stop)
    return server.start()
