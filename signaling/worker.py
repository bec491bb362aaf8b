"""
One worker process of ``--workers``: ``python -m signaling.worker N``,
started by the supervisor (:mod:`signaling.workers`), never by hand.

What the parent hands over:

- file descriptor 0: one line of JSON, ``{"worker": N, "sockets": K,
  "version": ..., "package": ..., "config": {...}}`` (:func:`handoff_line`;
  a worker that imported the server from another place than its parent
  refuses to run). The configuration comes this way, not on the command
  line or in the environment, so it adds nothing to what ``ps`` shows. The
  pipe then stays open: the line ``stop`` asks the worker to drain and exit
  (:class:`ParentPipe`), and so does its end (the parent died).
- file descriptor 1: where the worker writes its log events, one JSON
  object per line (:func:`event_line`), for the parent to log as its own.
- file descriptor 2: stderr, logged by the parent line by line.
- file descriptors 3 to 3+K-1: the listening sockets, in the order of
  :func:`signaling.listeners.listener_specs`.

The parent asks for the drain on the pipe, not with a signal: systemd's
``systemctl stop`` sends SIGTERM to every process of the service at once,
and a second SIGTERM would make a draining worker exit without finishing.
The worker ignores SIGINT (a terminal's Ctrl-C reaches the whole process
group, and the parent turns it into one drain), reloads its TLS certificate
on SIGHUP and drains on SIGTERM as a single server does.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
from dataclasses import asdict, fields, replace
from typing import IO, Any, Callable, NamedTuple

from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import FileLogObserver, Logger, eventAsJSON, globalLogBeginner
from twisted.python.failure import Failure
from twisted.python.reflect import safe_str
from zope.interface import implementer

from . import __version__
from .config import Config
from .logs import log_event

__all__ = [
    "Handoff",
    "decode_config",
    "encode_config",
    "event_line",
    "handoff_line",
    "main",
    "read_handoff",
]

#: Largest hand-over line the worker reads, in bytes.
MAX_HANDOFF_BYTES = 1024 * 1024

_log = Logger(namespace="signaling.worker")


class Handoff(NamedTuple):
    """What the parent told a worker: its number, socket count and configuration."""

    worker: int
    sockets: int
    config: Config
    version: str
    package: str


def package_directory() -> str:
    """Where this process imported the ``signaling`` package from."""
    return os.path.dirname(os.path.realpath(__file__))


def encode_config(config: Config) -> dict[str, Any]:
    """``config`` as JSON-ready values (tuples become lists)."""
    return asdict(config)


def decode_config(values: dict[str, Any]) -> Config:
    """
    The :class:`Config` of :func:`encode_config`'s values, validated again.

    :raises ValueError: unknown settings (a parent of another version) or
        invalid values.
    """
    known = {f.name: f for f in fields(Config)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"settings this version does not know: {', '.join(unknown)}")
    converted = {}
    for name, value in values.items():
        if isinstance(known[name].default, tuple) and isinstance(value, list):
            value = tuple(value)
        converted[name] = value
    try:
        return Config(**converted)
    except TypeError as e:
        raise ValueError(str(e)) from None


def handoff_line(config: Config, worker: int, sockets: int) -> bytes:
    """The line the parent writes to worker number ``worker``'s standard input."""
    document = {
        "worker": worker,
        "sockets": sockets,
        "version": __version__,
        "package": package_directory(),
        "config": encode_config(config),
    }
    return json.dumps(document, allow_nan=False).encode("utf-8") + b"\n"


def read_handoff(stream: IO[bytes]) -> Handoff:
    """
    Read the parent's hand-over line from ``stream``.

    :raises ValueError: no line, or not one :func:`handoff_line` writes.
    """
    line = stream.readline(MAX_HANDOFF_BYTES + 1)
    if not line.endswith(b"\n"):
        raise ValueError("no settings from the parent process (this is started by --workers)")
    try:
        document = json.loads(line)
        worker, sockets = document["worker"], document["sockets"]
        config = decode_config(document["config"])
        version = str(document.get("version"))
        package = str(document.get("package"))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unusable settings from the parent process: {e}") from None
    if not isinstance(worker, int) or not isinstance(sockets, int) or sockets < 0:
        raise ValueError("unusable settings from the parent process: bad worker or sockets")
    return Handoff(worker, sockets, config, version, package)


def event_line(event: dict[str, Any]) -> str:
    """
    One log event as a line of JSON for the parent (Twisted's
    ``eventAsJSON``), with a failure's exception kept as text so the
    parent's traceback still says what went wrong.
    """
    failure = event.get("log_failure")
    if isinstance(failure, Failure) and not isinstance(failure.value, str):
        portable = copy.copy(failure)
        portable.value = safe_str(failure.value)
        event = dict(event, log_failure=portable)
    return eventAsJSON(event) + "\n"


#: The line the parent writes on a worker's standard input to make it drain.
STOP_LINE = b"stop\n"


@implementer(IReadDescriptor)
class ParentPipe:
    """
    Standard input after the hand-over: calls ``on_stop`` with a reason
    when the parent writes :data:`STOP_LINE` or when the pipe closes (the
    parent died), unless the reactor is already shutting down.
    """

    def __init__(self, reactor: Any, on_stop: Callable[[str], Any], fd: int = 0) -> None:
        self._reactor = reactor
        self._on_stop = on_stop
        self._fd = fd
        self._watching = False
        self._received = b""
        os.set_blocking(fd, False)

    def start(self) -> None:
        """Watch from now until the reactor begins to shut down."""
        self._watching = True
        self._reactor.addReader(self)
        self._reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def stop(self) -> None:
        """Stop watching."""
        if self._watching:
            self._watching = False
            self._reactor.removeReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "ParentPipe"

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._finish("the parent process is gone")
            return
        self._received = (self._received + data)[-len(STOP_LINE):]
        if self._received == STOP_LINE:
            self._finish("the parent asks to stop")

    def connectionLost(self, reason: Any) -> None:
        """The pipe hung up (or the reactor drops every descriptor as it stops)."""
        self._finish("the parent process is gone")

    def _finish(self, why: str) -> None:
        if self._watching:
            self.stop()
            self._on_stop(why)


def main() -> int:
    """Serve until SIGTERM, the parent's ``stop`` or the parent's end; the exit status."""
    # Until their handlers are in place: a SIGHUP must not kill a starting
    # worker, and Ctrl-C is for the parent to turn into a drain.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # Unbuffered: nothing after the hand-over line may be read ahead.
        handoff = read_handoff(sys.stdin.buffer.raw)
    except ValueError as e:
        print(f"signaling worker: {e}", file=sys.stderr)
        return 1
    if handoff.package != package_directory():
        # python -m looks in the working directory first; twistd does not.
        print(
            f"signaling worker: this worker imported the server from {package_directory()},"
            f" its parent from {handoff.package}; start the server from a directory"
            " without a 'signaling' package in it",
            file=sys.stderr,
        )
        return 1
    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stdout, event_line)], redirectStandardIO=False
    )
    if handoff.version != __version__:
        _log.warn(
            "worker runs version {mine}, its parent {theirs}: restart the service after an upgrade",
            mine=__version__, theirs=handoff.version,
        )
    from twisted.internet import reactor

    from .listeners import InheritedSockets
    from .runner import run_service
    from .service import make_service

    # Workers run in cluster mode (--workers needs --redis): their offline
    # store is the cluster's, in Redis. No worker may ever open the --db
    # SQLite file, which is not safe for several writers.
    config = replace(handoff.config, db=":memory:")
    inherited = InheritedSockets(range(3, 3 + handoff.sockets))
    try:
        service = make_service(config, reactor, inherited=inherited)
    except Exception as e:
        print(f"signaling: cannot start: {e}", file=sys.stderr)
        return 1

    def drain(why: str) -> None:
        _log.info("{why}: draining", why=why)
        try:
            reactor.stop()
        except ReactorNotRunning:  # already stopping
            pass

    def serving() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the reactor set its own
        ParentPipe(reactor, drain).start()
        log_event(_log, "worker_ready", sockets=handoff.sockets)

    reactor.callWhenRunning(serving)
    return run_service(service, reactor)


if __name__ == "__main__":
    sys.exit(main())
