"""
Test support: a blocking WebSocket client and a blocking server process
control, for tests written as plain synchronous code (the Hypothesis state
machine of ``test_websocket_state_machine``) rather than on the reactor.

The client is ``websockets.sync`` (17.1 or later, for ``legacy=True``): a
background thread reads every frame as
it arrives (and answers the server's pings and close frames), so nothing the
server sends waits in the kernel while the test looks elsewhere. Every read
has a deadline; a read that runs out of time raises ``TimeoutError``.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from typing import Any, Iterable

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from processes import MODULE, START_TIMEOUT, ServerProcess

__all__ = ["Closed", "SyncClient", "SyncServer", "encode_frame"]

#: Seconds the opening and closing handshakes may take.
HANDSHAKE_TIMEOUT = 10.0

_LISTENING = re.compile(r"starting on (\d+)")


class Closed:
    """
    What :meth:`SyncClient.receive` returns once the connection is closed:
    the close code the server sent (None when the connection just dropped)
    and its reason.
    """

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"Closed({self.code!r}, {self.reason!r})"


def encode_frame(message: Any) -> bytes:
    """
    ``message`` as compact JSON in UTF-8, characters written as themselves;
    a message holding a lone surrogate (which UTF-8 cannot carry) is written
    with ``\\uXXXX`` escapes instead.
    """
    try:
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":")).encode("ascii")


class SyncClient:
    """One WebSocket connection to ``url``; blocking, with bounded waits."""

    def __init__(self, url: str) -> None:
        self._ws = connect(
            url, proxy=None, compression=None, max_size=None, max_queue=None,
            ping_interval=None, open_timeout=HANDSHAKE_TIMEOUT,
            close_timeout=HANDSHAKE_TIMEOUT, legacy=True,
        )

    def send_text(self, data: bytes) -> None:
        """Send ``data`` as one text frame (not checked: it may be invalid UTF-8)."""
        self._ws.send(data, text=True)

    def send_binary(self, data: bytes) -> None:
        """Send ``data`` as one binary frame."""
        self._ws.send(data, text=False)

    def send_fragments(self, parts: Iterable[bytes]) -> None:
        """Send one binary message split into one frame per part."""
        self._ws.send(iter(list(parts)))

    def send_json(self, message: Any) -> None:
        """Send ``message`` as a text frame (see :func:`encode_frame`)."""
        self.send_text(encode_frame(message))

    def receive(self, timeout: float) -> Any:
        """
        The next message the server sent, decoded from strict UTF-8 JSON, or
        :class:`Closed` once the connection is closed. Raises
        ``TimeoutError`` after ``timeout`` seconds, and ``AssertionError``
        when the server sent something that is not UTF-8 JSON.
        """
        try:
            data = self._ws.recv(max(timeout, 0.0), decode=False)
        except ConnectionClosed as e:
            if e.rcvd is None:
                return Closed(None, "")
            return Closed(e.rcvd.code, e.rcvd.reason)
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError as e:
            raise AssertionError(f"the server sent a frame that is not UTF-8 JSON: {data[:200]!r}: {e}")

    def close(self) -> None:
        """Close cleanly (code 1000), waiting for the server's close frame."""
        self._ws.close(1000)

    def abort(self) -> None:
        """Cut the TCP connection without a closing handshake."""
        try:
            self._ws.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._ws.close()


class SyncServer:
    """
    ``python -m signaling`` from this checkout on 127.0.0.1, controlled
    without the reactor: started on a port of its choosing in ``directory``
    (where relative paths such as ``--db`` point), stopped by a signal.
    """

    def __init__(self, directory: str, *args: str) -> None:
        self.process = ServerProcess(
            MODULE, ["--port", "0", "--interface", "127.0.0.1", *args], directory
        )
        self.port = 0

    @property
    def url(self) -> str:
        """The WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def log(self) -> str:
        """What this run logged so far."""
        return self.process.log

    @property
    def running(self) -> bool:
        """Whether the process still runs."""
        return self.process.popen is not None and self.process.returncode is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """
        Start the process and wait until it serves HTTP on its port (so its
        signal handlers are installed); fails when it exits first.
        """
        self.process.start()
        deadline = time.monotonic() + timeout
        while True:
            found = _LISTENING.search(self.log)
            if found:
                self.port = int(found.group(1))
                break
            self._check_alive(deadline, "listening")
            time.sleep(0.02)
        while True:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            self._check_alive(deadline, "answering /health")
            time.sleep(0.02)

    def _check_alive(self, deadline: float, what: str) -> None:
        if self.process.returncode is not None:
            raise AssertionError(
                f"the server exited with {self.process.returncode} before {what}:\n{self.log}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"the server was not {what} in time:\n{self.log}")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """(status, decoded JSON body) of ``GET path``."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def stop(self, signum: int, timeout: float = START_TIMEOUT) -> int:
        """Send ``signum`` and wait for the exit status."""
        self.process.send_signal(signum)
        return self.process.wait_exit_blocking(timeout)

    def kill(self) -> None:
        """SIGKILL the process if it still runs (cleanup)."""
        self.process.kill()
