"""
Log events and log formats.

Every operational log line carries an ``event`` field naming what happened
(see :data:`EVENTS`) and a ``peer`` field with the remote address
(``"ip:port"``) when a connection is involved. Other fields by convention:
``identity`` (the bound peer/user id), ``room``, ``code`` (error code or close
code), ``limit`` (which limit was hit), ``reason``.

Log through :func:`log_event`, which keeps the format string lazy::

    log_event(log, "register", peer=peer, identity=peer_id)
    log_event(log, "limit", peer=peer, limit="rate")

or call the logger directly with the same fields::

    log.info("{peer} registered as {identity}", event="register",
             peer=peer, identity=peer_id)

Two observers render events: :func:`text_observer` (one readable line each)
and :func:`json_observer` (one JSON object per line). :func:`json_logger` and
:func:`text_logger` are the zero-argument factories ``twistd --logger``
expects; without ``--logger``, ``twistd signaling`` logs through
:func:`twistd_text_observer`, so its lines look like those of
``python -m signaling``.
"""

from __future__ import annotations

import json
import sys
from string import Formatter
from datetime import datetime, timezone
from functools import lru_cache
from typing import IO, Any, Mapping

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    Logger,
    formatEvent,
)
from twisted.python.failure import Failure
from twisted.python.reflect import safe_repr

from .config import MAX_LOGGED_TEXT

__all__ = [
    "EVENTS",
    "PAYLOAD_FIELDS",
    "log_event",
    "json_observer",
    "text_observer",
    "json_logger",
    "text_logger",
    "twistd_text_observer",
    "payload_for_log",
]

#: The event vocabulary: name -> (level, default format). Each format names
#: only the fields that event requires.
EVENTS: Mapping[str, tuple[LogLevel, str]] = {
    "connect": (LogLevel.info, "{peer} connected"),
    "disconnect": (LogLevel.info, "{peer} disconnected"),
    "register": (LogLevel.info, "{peer} registered as {identity}"),
    "join": (LogLevel.info, "{peer} ({identity}) joined room {room}"),
    "leave": (LogLevel.info, "{peer} ({identity}) left room {room}"),
    "takeover": (LogLevel.info, "{peer} took over {identity}"),
    "error": (LogLevel.info, "{peer} got error {code}"),
    "heartbeat_drop": (LogLevel.info, "{peer} dropped: no heartbeat"),
    "limit": (LogLevel.warn, "{peer} hit limit {limit}"),
    "shutdown": (LogLevel.info, "server shutting down ({reason})"),
    "worker_start": (LogLevel.info, "worker {worker} started (pid {pid})"),
    "worker_ready": (LogLevel.info, "serving on {sockets} inherited sockets"),
    "worker_exit": (LogLevel.warn, "worker {worker} (pid {pid}) exited: {reason}"),
    "workers_failed": (LogLevel.critical, "stopping: {reason}"),
}

_REQUIRED = {
    name: tuple(field for _, field, _, _ in Formatter().parse(fmt) if field)
    for name, (_, fmt) in EVENTS.items()
}

#: Message fields that may carry SDP, addresses or user content.
PAYLOAD_FIELDS = frozenset(
    {"sdp", "offer", "answer", "candidate", "data", "message", "payload", "deviceInfo"}
)

REDACTED = "<redacted>"

# Keys an old-style twisted.python.log event carries besides its own fields.
_LEGACY_KEYS = frozenset({"message", "time", "system", "isError", "format", "failure"})
_RESERVED = ("time", "level", "namespace", "event", "text", "failure")


def log_event(
    logger: Logger,
    event: str,
    format: str | None = None,
    level: LogLevel | None = None,
    **fields: Any,
) -> None:
    """
    Emit one event of :data:`EVENTS` with its fields.

    ``format`` and ``level`` default to the vocabulary's; fields the
    default format needs but the caller left out are logged as ``None``, so
    the text always renders. Formatting happens only in an observer.

    :raises KeyError: for an event name outside the vocabulary.
    """
    default_level, default_format = EVENTS[event]
    if format is None:
        format = default_format
        for name in _REQUIRED[event]:
            fields.setdefault(name, None)
    for name, value in fields.items():
        if isinstance(value, str) and len(value) > MAX_LOGGED_TEXT:
            fields[name] = _cut(value)
    logger.emit(default_level if level is None else level, format, event=event, **fields)


def _cut(text: str) -> str:
    """``text`` cut to :data:`MAX_LOGGED_TEXT` characters, saying how much was left out."""
    return f"{text[:MAX_LOGGED_TEXT]}…(+{len(text) - MAX_LOGGED_TEXT} characters)"


def _timestamp(event: Mapping[str, Any]) -> str:
    when = event.get("log_time") or 0
    second = int(when)
    return f"{_second_prefix(second)}{int((when - second) * 1000):03d}Z"


@lru_cache(maxsize=4)
def _second_prefix(second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.`` in UTC, computed once per second, not per line."""
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")


def _level_name(event: Mapping[str, Any]) -> str | None:
    name = getattr(event.get("log_level"), "name", None)
    return name if isinstance(name, str) else None


def _failure_of(event: Mapping[str, Any]) -> Failure | None:
    failure = event.get("log_failure", event.get("failure"))
    return failure if isinstance(failure, Failure) else None


def _traceback(failure: Failure) -> str:
    try:
        return failure.getTraceback()
    except Exception:
        return f"{failure.type!r}: {failure.value!r} (traceback unavailable)"


def _fields(event: Mapping[str, Any]) -> dict[str, Any]:
    legacy = event.get("log_namespace") == "log_legacy" or "isError" in event
    fields = {}
    for key, value in event.items():
        if key == "event" or key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        if key in _RESERVED:
            # Never let an event field overwrite the line's own keys.
            key = "field_" + key
        fields[key] = value
    return fields


def _dumps(record: dict[str, Any]) -> str:
    try:
        return json.dumps(record, default=safe_repr, allow_nan=False)
    except (TypeError, ValueError):
        # A dict with non-string keys, NaN, or the like: repr field by field.
        safe = {}
        for key, value in record.items():
            try:
                json.dumps(value, default=safe_repr, allow_nan=False)
                safe[key] = value
            except (TypeError, ValueError):
                safe[key] = safe_repr(value)
        return json.dumps(safe, default=safe_repr)


def format_json(event: Mapping[str, Any]) -> str:
    """
    Render one event as a JSON line.

    Keys: ``time`` (ISO 8601 UTC), ``level``, ``namespace``, ``event``
    (``null`` for events outside the vocabulary), ``text`` (the formatted
    message), ``failure`` (traceback text, only when there is one), then the
    event's own fields; values JSON cannot hold are repr'd.
    """
    record: dict[str, Any] = {
        "time": _timestamp(event),
        "level": _level_name(event),
        "namespace": event.get("log_namespace"),
        "event": event.get("event"),
        "text": _message(event),
    }
    failure = _failure_of(event)
    if failure is not None:
        record["failure"] = _traceback(failure)
    record.update(_fields(event))
    return _dumps(record) + "\n"


def _message(event: Mapping[str, Any]) -> str:
    """
    The text of ``event``: the server's own events (plain ``{field}``
    formats) are formatted directly; anything else, or what that cannot
    format, as Twisted does.
    """
    if "event" in event:
        try:
            return event["log_format"].format_map(event)
        except Exception:
            pass
    return formatEvent(dict(event))


def format_text(event: Mapping[str, Any]) -> str:
    """
    Render one event as a readable line::

        2024-05-01T12:00:00.123Z [signaling.hub#info] register: 10.0.0.1:5000 registered as alice

    A line a worker of ``--workers`` logged says which one
    (``[signaling.hub#info worker 2]``). A failure's traceback follows on
    indented lines.
    """
    level_name = _level_name(event) or "-"
    text = _message(event).replace("\n", "\n\t")
    name = event.get("event")
    if isinstance(name, str):
        text = f"{name}: {text}"
    where = f"{event.get('log_namespace', '-')}#{level_name}"
    if event.get("worker") is not None:
        where += f" worker {event['worker']}"
    line = f"{_timestamp(event)} [{where}] {text}\n"
    failure = _failure_of(event)
    if failure is not None and "log_failure" in event:
        line += "\t" + _traceback(failure).rstrip("\n").replace("\n", "\n\t") + "\n"
    return line


def json_observer(outfile: IO[str]) -> ILogObserver:
    """An observer writing one JSON object per line to ``outfile``."""
    return FileLogObserver(outfile, format_json)


def text_observer(outfile: IO[str]) -> ILogObserver:
    """An observer writing one readable line per event to ``outfile``."""
    return FileLogObserver(outfile, format_text)


def json_logger() -> ILogObserver:
    """
    JSON lines on standard output, for ``twistd --logger signaling.logs.json_logger``.

    twistd calls this with no arguments before it redirects standard output
    into the log, so the stream is taken here, at call time.
    """
    return json_observer(sys.stdout)


def text_logger() -> ILogObserver:
    """
    Readable lines on standard output, for ``twistd --logger
    signaling.logs.text_logger`` (what ``twistd -n signaling`` does anyway).
    """
    return text_observer(sys.stdout)


def twistd_text_observer(server_options: Any) -> ILogObserver | None:
    """
    The text observer for a ``twistd`` run, writing where twistd would write
    its own lines: standard output with ``--nodaemon`` (unless ``--logfile``
    names a file), else the ``--logfile`` (``twistd.log`` by default), which
    SIGUSR1 rotates as with twistd. ``None`` when twistd's options chose
    another logger (``--syslog``), when there are no twistd options, or with
    ``--logger`` (which twistd prefers anyway).
    """
    if not hasattr(server_options, "get") or "logfile" not in server_options:
        return None
    if server_options.get("logger") or server_options.get("syslog"):
        return None
    name = server_options.get("logfile") or ""
    if name == "-" or (not name and server_options.get("nodaemon")):
        # twistd itself refuses "-" without --nodaemon, before this is used.
        return text_observer(sys.stdout)
    import signal

    from twisted.python.logfile import LogFile

    logfile = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logfile.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return text_observer(logfile)


def payload_for_log(message: Any, log_payloads: bool = False) -> Any:
    """
    A copy of ``message`` safe to log: every :data:`PAYLOAD_FIELDS` value, at
    any depth, replaced by ``"<redacted>"``, since SDP and ICE candidates
    hold IP addresses (kept with ``log_payloads``, ``--log-payloads``). Either
    way strings are cut to :data:`MAX_LOGGED_TEXT` characters and objects
    and lists to their first :data:`_MAX_ITEMS` entries, so a log line stays
    small whatever a client sends. The message itself is never modified.
    """
    return _strip(message, 0, not log_payloads)


_MAX_DEPTH = 32
#: Entries of one object or list kept in a logged message.
_MAX_ITEMS = 32


def _strip(value: Any, depth: int, redact: bool) -> Any:
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, str):
        return _cut(value) if len(value) > MAX_LOGGED_TEXT else value
    if isinstance(value, dict):
        return {
            _strip(key, depth, False): REDACTED if redact and key in PAYLOAD_FIELDS
            else _strip(item, depth + 1, redact)
            for key, item in list(value.items())[:_MAX_ITEMS]
        }
    if isinstance(value, list):
        return [_strip(item, depth + 1, redact) for item in value[:_MAX_ITEMS]]
    return value
