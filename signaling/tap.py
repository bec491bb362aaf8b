"""
``twistd signaling`` glue: command-line options (each also read from the
environment) and ``makeService``.

Every option ``--some-option`` can also be set as ``SIGNALING_SOME_OPTION``
in the environment (``PORT`` for ``--port``), so a systemd
``EnvironmentFile`` works; the command line wins over the environment.
Repeatable options take several values from the environment separated by
commas or whitespace.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, fields
from typing import Any, Callable, Mapping

from twisted.python import usage

from .config import Config
from .tls import check_listen_description, tls_from_options

__all__ = ["Options", "makeService"]


def _port(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected yes or no, not {text!r}")


# (option, short, Config field, converter, help). Defaults come from Config.
_PARAMETERS: list[tuple[str, str | None, str, Callable[[str], Any], str]] = [
    ("port", "p", "port", _port,
     "TCP port for WebSocket and HTTP (env PORT). When only --listen is given, no --port listener is added."),
    ("interface", None, "interface", str, "Address for the --port listener (default: every interface)."),
    ("backlog", None, "backlog", int, "Listen backlog of the --port listener."),
    ("db", None, "db", str, "Offline store: SQLite file path, or :memory:."),
    ("offline-ttl", None, "offline_ttl", float, "Seconds an offline message is kept."),
    ("offline-max", None, "offline_max", int, "Offline messages kept per peer."),
    ("offline-max-bytes", None, "offline_max_bytes", int, "Total bytes of offline messages kept."),
    ("offline-max-peers", None, "offline_max_peers", int, "Peers that may have offline messages at once."),
    ("heartbeat-interval", None, "heartbeat_interval", float,
     "Seconds between heartbeat pings; a connection silent for a whole interval is dropped."),
    ("stats-interval", None, "stats_interval", float, "Seconds between [Stats] log lines."),
    ("max-message-size", None, "max_message_size", int,
     "Largest message in bytes; a larger one closes the connection with 1009."),
    ("cors-origin", None, "cors_origin", str, "Access-Control-Allow-Origin of the HTTP endpoints."),
    ("shutdown-timeout", None, "shutdown_timeout", float,
     "Seconds a graceful shutdown may take before remaining connections are cut."),
    ("max-rooms-per-connection", None, "max_rooms_per_connection", int, "Rooms one connection may be in."),
    ("max-room-members", None, "max_room_members", int, "Members one room may hold."),
    ("presence", None, "presence", str,
     "peer-status broadcasts: all (every registered peer hears of every other) or none."),
    ("tls-cert", None, "tls_cert", str,
     "PEM certificate for the --port listener, which then speaks TLS (wss:// and https://); "
     "a full chain (certbot's fullchain.pem) is sent whole."),
    ("tls-key", None, "tls_key", str, "PEM private key of --tls-cert."),
    ("tls-chain", None, "tls_chain", str, "PEM intermediate certificates, sent after --tls-cert's."),
]

# (option, Config field): options that may be given several times; their
# help is the docstring of their opt_ method.
_REPEATABLE: list[tuple[str, str]] = [
    ("listen", "listen"),
    ("allowed-origin", "allowed_origins"),
]

_FLAGS: list[tuple[str, str, str]] = []

_DEFAULTS = {f.name: f.default for f in fields(Config) if f.default is not MISSING}


def _env_name(option: str) -> str:
    return "PORT" if option == "port" else "SIGNALING_" + option.upper().replace("-", "_")


class Options(usage.Options):
    """Command-line options of ``twistd signaling`` and ``python -m signaling``."""

    synopsis = "[options]"
    longdesc = (
        "WebRTC signaling server: rooms, directed offers/answers/ICE candidates, presence and "
        "a durable offline store, over WebSocket (ws:// or wss://) on one port, with /health "
        "and /stats on the same port. Every option can also be set in the environment as "
        "SIGNALING_<OPTION> (PORT for --port)."
    )
    optParameters = [
        [name, short, None, f"{text} [default: {_DEFAULTS[field]}]"]
        for name, short, field, _, text in _PARAMETERS
    ]
    optFlags = [[name, None, text] for name, _, text in _FLAGS]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        for name, _ in _REPEATABLE:
            self[name] = []
        self.config: Config | None = None

    def opt_listen(self, description: str) -> None:
        """
        Twisted endpoint to listen on as well (repeatable), e.g. tcp:9002,
        ssl:443:privateKey=key.pem:certKey=cert.pem:extraCertChain=chain.pem,
        tcp6:9001, unix:/run/signaling.sock, systemd:domain=INET6:index=0.
        """
        self["listen"].append(description)

    def opt_allowed_origin(self, origin: str) -> None:
        """
        WebSocket Origin allowed at the handshake, others get 403 (repeatable;
        default: any origin).
        """
        self["allowed-origin"].append(origin)

    def _raw(self, option: str) -> str | None:
        value = self.get(option)
        if value is None:
            value = self._environ.get(_env_name(option))
        return value

    def postOptions(self) -> None:
        values: dict[str, Any] = {}
        for name, _, field, convert, _ in _PARAMETERS:
            raw = self._raw(name)
            if raw is None:
                continue
            try:
                values[field] = convert(raw)
            except ValueError:
                raise usage.UsageError(f"--{name}: invalid value {raw!r}")
        for name, field in _REPEATABLE:
            given = list(self[name])
            if not given and self._environ.get(_env_name(name)):
                given = re.split(r"[,\s]+", self._environ[_env_name(name)].strip())
            values[field] = tuple(given)
        for name, field, _ in _FLAGS:
            raw = self._environ.get(_env_name(name))
            try:
                values[field] = bool(self[name]) or (raw is not None and _flag(raw))
            except ValueError as e:
                raise usage.UsageError(f"{_env_name(name)}: {e}")
        if values["listen"] and "port" not in values:
            values["port"] = None
        try:
            self.config = Config(**values)
            tls_from_options(self.config.tls_cert, self.config.tls_key, self.config.tls_chain)
            for description in self.config.listen:
                check_listen_description(description)
        except ValueError as e:  # TLSConfigError is one too
            raise usage.UsageError(str(e))


def makeService(options: Options) -> Any:
    """Build the service for ``twistd`` (the plugin's entry point)."""
    from twisted.internet import reactor

    from .service import make_service, reload_tls_on_sighup

    assert options.config is not None
    service = make_service(options.config, reactor)
    reload_tls_on_sighup(reactor, service)
    return service
