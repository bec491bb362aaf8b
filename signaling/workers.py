"""
``--workers N``: a parent process that binds every listening socket and
keeps N worker processes serving on them.

The :class:`Supervisor` is a Twisted service, run by ``twistd signaling``
and ``python -m signaling`` in place of the server itself:

- ``privilegedStartService`` binds every listener (:mod:`signaling.listeners`)
  before any privilege drop; a port in use fails the parent at once. The
  parent never accepts a connection.
- ``startService`` starts the workers (``python -m signaling.worker``,
  :mod:`signaling.worker`), each with the sockets and the configuration.
- A worker that exits is started again after a delay that doubles with
  each quick failure (:class:`RestartPolicy`); a worker that cannot get to
  serving at all ends the parent with status 1, so a service manager sees
  the failure.
- SIGHUP is forwarded to every worker (certificate reload); SIGTERM or
  SIGINT drains every worker (``stopService``, which asks each worker on
  its pipe), and a second one kills them.
- Each worker's log events come through a pipe and are logged by the
  parent as its own, marked with the worker's number and pid.

Metrics: each worker has its own registry. With ``--metrics-listen`` each
worker serves ``/metrics`` on its own port, the given one plus its number
minus one (:func:`signaling.listeners.metrics_for_worker`).
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import sys
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogLevel, Logger, eventFromJSON, globalLogPublisher

from .config import Config
from .listeners import bind_listener, check_worker_listeners, listener_specs, worker_config
from .logs import log_event
from .worker import STOP_LINE, handoff_line

__all__ = ["RestartPolicy", "Supervisor", "DRAIN_MARGIN"]

#: Seconds the parent waits beyond ``--shutdown-timeout`` for draining
#: workers before it kills them.
DRAIN_MARGIN = 10.0
#: Longest log line taken from a worker; longer ones are cut there.
MAX_LINE_BYTES = 1024 * 1024
#: Environment variables a worker must not inherit: they describe sockets
#: and notifications meant for the parent (systemd socket activation).
_PARENT_ONLY_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET")

_log = Logger(namespace="signaling.workers")


class RestartPolicy:
    """
    When to start one worker again after it exited.

    - A worker that never got to serving since the parent started (a
      start-up error) is not restarted: the parent cannot start its workers.
    - A worker that exits before serving ``max_unready`` times in a row is
      not restarted either.
    - Otherwise the delay starts at ``first`` seconds and doubles after
      each exit, up to ``cap``; a worker that served for ``stable_after``
      seconds resets it. So a worker that keeps crashing is restarted at
      most once per ``cap`` seconds.
    """

    def __init__(
        self,
        first: float = 0.5,
        cap: float = 30.0,
        stable_after: float = 30.0,
        max_unready: int = 5,
    ) -> None:
        self.first = first
        self.cap = cap
        self.stable_after = stable_after
        self.max_unready = max_unready
        self._delay = first
        self._unready_exits = 0
        self._ever_ready = False

    def exited(self, ran_for: float, was_ready: bool) -> float | None:
        """
        A worker exited after ``ran_for`` seconds, having served or not:
        seconds to wait before starting it again, or ``None`` to give up.
        """
        if was_ready:
            self._ever_ready = True
            self._unready_exits = 0
            if ran_for >= self.stable_after:
                self._delay = self.first
        else:
            self._unready_exits += 1
        if not self._ever_ready or self._unready_exits >= self.max_unready:
            return None
        delay = self._delay
        self._delay = min(self._delay * 2, self.cap)
        return delay


def describe_exit(reason: Any) -> str:
    """How a process ended, in words (``exit status 1``, ``killed by SIGKILL``)."""
    value = getattr(reason, "value", reason)
    number = getattr(value, "signal", None)
    if isinstance(value, ProcessTerminated) and number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}"
    return f"exit status {getattr(value, 'exitCode', None) or 0}"


class WorkerProcess(ProcessProtocol):
    """
    The parent's side of one running worker: hands it its settings, logs
    what it writes, and tells the supervisor when it serves and when it ends.
    """

    def __init__(
        self,
        number: int,
        handoff: bytes,
        clock: Any,
        publish: Callable[[dict], None],
        on_ready: Callable[["WorkerProcess"], None],
        on_end: Callable[["WorkerProcess", Any], None],
    ) -> None:
        self.number = number
        self.pid: int | None = None
        self.ready = False
        self._clock = clock
        self.started_at = clock.seconds()
        self.ended: defer.Deferred = defer.Deferred()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=5)
        self._handoff = handoff
        self._publish = publish
        self._on_ready = on_ready
        self._on_end = on_end
        self._buffers = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        # Standard input stays open: its end tells the worker the parent is gone.
        self.transport.write(self._handoff)

    def ask_to_stop(self) -> None:
        """Ask the worker to drain and exit (a line on its standard input)."""
        try:
            self.transport.write(STOP_LINE)
        except (OSError, AttributeError):
            pass  # already gone: processEnded follows

    def signal(self, name: str) -> bool:
        """Send signal ``name`` (``"TERM"``, ``"HUP"``, ``"KILL"``); False if it is gone."""
        try:
            self.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            return False
        return True

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self._buffers.get(childFD, b"") + data
        *lines, rest = buffer.split(b"\n")
        if len(rest) > MAX_LINE_BYTES:
            lines.append(rest[:MAX_LINE_BYTES])
            rest = b""
        self._buffers[childFD] = rest
        for line in lines:
            self._line(childFD, line.decode("utf-8", "replace"))

    def processEnded(self, reason: Any) -> None:
        for childFD, rest in self._buffers.items():
            if rest:
                self._line(childFD, rest.decode("utf-8", "replace"))
        self._buffers = {}
        self._on_end(self, reason)
        self.ended.callback(None)

    def _line(self, childFD: int, line: str) -> None:
        if not line.strip():
            return
        event = _event_from_line(line) if childFD == 1 else None
        if event is None:
            if childFD == 2:
                self.stderr_tail.append(line)
            event = {
                "log_format": "{line}",
                "line": line,
                "log_level": LogLevel.warn,
                "log_namespace": "signaling.worker." + ("stderr" if childFD == 2 else "stdout"),
                "log_time": self._clock.seconds(),
            }
        namespace = event.get("log_namespace", "-")
        level = getattr(event.get("log_level"), "name", "-")
        event["worker"] = self.number
        event["worker_pid"] = self.pid
        event["log_system"] = f"{namespace}#{level} worker {self.number}"
        self._publish(event)
        if event.get("event") == "worker_ready" and not self.ready:
            self.ready = True
            self._on_ready(self)


def _event_from_line(line: str) -> dict | None:
    """A worker's log event from its JSON line; None when the line is not one."""
    try:
        event = eventFromJSON(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    level = event.get("log_level")
    if level not in _LEVELS:
        return None
    return event


_LEVELS = tuple(LogLevel.iterconstants())


class Supervisor(Service):
    """
    Binds the listeners, runs ``config.workers`` workers on them and stops
    them gracefully; see the module's description.

    ``publish`` receives the workers' log events (default: the global log
    publisher); ``executable`` runs ``-m signaling.worker N``; ``policy``
    makes the restart policy of each worker; ``on_failure`` is called once
    the workers cannot be kept running (default: stop the reactor, which
    stops this service).

    :ivar draining: true once a graceful stop has begun.
    :ivar exit_status: 0, or 1 once the workers could not be kept running.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        publish: Callable[[dict], None] | None = None,
        executable: str = sys.executable,
        policy: Callable[[], RestartPolicy] = RestartPolicy,
        on_failure: Callable[[], Any] | None = None,
    ) -> None:
        check_worker_listeners(config)
        self.config = config
        self.reactor = reactor
        self._on_failure = on_failure
        self.draining = False
        self.exit_status = 0
        self._publish = globalLogPublisher if publish is None else publish
        self._executable = executable
        self._configs = [worker_config(config, index) for index in range(config.workers)]
        self._policies = {number: policy() for number in range(1, config.workers + 1)}
        self._shared: list[socket.socket] = []
        self._own: dict[int, list[socket.socket]] = {}
        self._workers: dict[int, WorkerProcess] = {}
        self._restarts: dict[int, Any] = {}
        self._reload_pending: set[int] = set()

    def workers(self) -> list[WorkerProcess]:
        """The worker processes running now."""
        return list(self._workers.values())

    def privilegedStartService(self) -> None:
        """Bind every listening socket (before twistd drops privileges)."""
        super().privilegedStartService()
        if self._shared:
            return
        try:
            for spec in listener_specs(self.config):
                if not spec.metrics:
                    self._shared.append(self._bind(spec, self.config, "shared socket"))
            for number, config in enumerate(self._configs, 1):
                self._own[number] = [
                    self._bind(spec, config, f"worker {number} metrics socket")
                    for spec in listener_specs(config) if spec.metrics
                ]
        except BaseException:
            self._close_sockets()
            raise

    def _bind(self, spec: Any, config: Config, what: str) -> socket.socket:
        sock = bind_listener(spec, config)
        _log.info("{what} starting on {port}", what=what, port=sock.getsockname()[1])
        return sock

    def startService(self) -> None:
        """Start the workers once the reactor runs."""
        super().startService()
        self.privilegedStartService()
        self.reactor.callWhenRunning(self._start_all)

    def _start_all(self) -> None:
        for number in range(1, self.config.workers + 1):
            if self.draining or self.exit_status:
                return
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        sockets = self._shared + self._own[number]
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for offset, sock in enumerate(sockets):
            child_fds[3 + offset] = sock.fileno()
        env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY_ENV}
        process = WorkerProcess(
            number,
            handoff_line(self._configs[number - 1], number, len(sockets)),
            self.reactor,
            self._publish,
            self._worker_ready,
            self._worker_ended,
        )
        try:
            self.reactor.spawnProcess(
                process, self._executable,
                [self._executable, "-m", "signaling.worker", str(number)],
                env=env, childFDs=child_fds,
            )
        except Exception as e:
            self._give_up(f"cannot start worker {number}: {e}")
            return
        self._workers[number] = process
        log_event(_log, "worker_start", worker=number, pid=process.pid)

    def _worker_ready(self, process: WorkerProcess) -> None:
        if process.number in self._reload_pending:
            self._reload_pending.discard(process.number)
            process.signal("HUP")

    def _worker_ended(self, process: WorkerProcess, reason: Any) -> None:
        if self._workers.get(process.number) is process:
            del self._workers[process.number]
        how = describe_exit(reason)
        if self.draining or self.exit_status:
            log_event(_log, "worker_exit", level=LogLevel.info,
                      worker=process.number, pid=process.pid, reason=how)
            return
        ran_for = self.reactor.seconds() - process.started_at
        delay = self._policies[process.number].exited(ran_for, process.ready)
        if delay is None:
            said = "; ".join(process.stderr_tail)
            before = "before serving" if not process.ready else "again"
            self._give_up(
                f"worker {process.number} (pid {process.pid}) exited {before} ({how})"
                + (f": {said}" if said else "")
            )
            return
        log_event(_log, "worker_exit", "worker {worker} (pid {pid}) exited: {reason};"
                  " starting it again in {delay} s", worker=process.number,
                  pid=process.pid, reason=how, delay=delay)
        self._restarts[process.number] = self.reactor.callLater(
            delay, self._spawn, process.number
        )

    def _give_up(self, reason: str) -> None:
        if self.exit_status:
            return
        self.exit_status = 1
        log_event(_log, "workers_failed", reason=reason)
        if self._on_failure is not None:
            self._on_failure()
        elif self.reactor.running:
            self.reactor.stop()

    def reload_tls(self) -> bool:
        """
        SIGHUP: forward it to every worker (each reloads its certificate).
        A worker still starting gets it once it serves.
        """
        sent = 0
        for process in self.workers():
            if process.ready:
                sent += process.signal("HUP")
            else:
                self._reload_pending.add(process.number)
        _log.info("forwarded SIGHUP to {count} workers", count=sent)
        return sent > 0

    def kill_workers(self) -> None:
        """SIGKILL every worker (a second SIGTERM during the drain)."""
        for process in self.workers():
            process.signal("KILL")

    def stopService(self) -> defer.Deferred:
        """
        Drain: ask every worker to stop (each drains as a single server does
        on SIGTERM), close the parent's copies of the sockets, wait for the
        workers to exit; those still running after ``--shutdown-timeout``
        plus :data:`DRAIN_MARGIN` seconds are killed.
        """
        super().stopService()
        self.draining = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        running = self.workers()
        for process in running:
            process.ask_to_stop()
        self._close_sockets()
        if not running:
            return defer.succeed(None)
        done = defer.DeferredList([process.ended for process in running])
        deadline = self.reactor.callLater(
            self.config.shutdown_timeout + DRAIN_MARGIN, self._kill_stragglers
        )
        done.addBoth(lambda result: deadline.cancel() if deadline.active() else None)
        return done

    def _kill_stragglers(self) -> None:
        stragglers = self.workers()
        _log.warn("{count} workers still running after the drain deadline: killing them",
                  count=len(stragglers))
        self.kill_workers()

    def _close_sockets(self) -> None:
        for sock in self._shared + [s for own in self._own.values() for s in own]:
            sock.close()
