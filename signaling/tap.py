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

import difflib
import os
import re
import sys
from dataclasses import MISSING, fields
from typing import Any, Callable, Mapping, NoReturn

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from . import __version__
from .config import Config
from .listeners import check_worker_listeners
from .logs import twistd_text_observer
from .redis_url import redis_target
from .service import Policies
from .tls import check_listen_description

__all__ = [
    "ENVIRONMENT", "Options", "environment_warnings", "log_warnings", "makeService",
    "usage_error_text", "version_text",
]

_log = Logger()


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
    ("offline-max-bytes-per-sender", None, "offline_max_bytes_per_sender", int,
     "Bytes of offline messages one sender id may have stored at once "
     "(default: a tenth of --offline-max-bytes)."),
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
    ("auth-secret", None, "auth_secret", str,
     "Shared secret (32+ bytes) for HS256 tokens; turns authentication on."),
    ("auth-public-key", None, "auth_public_key", str,
     "PEM public key file for RS256/ES256 tokens; turns authentication on."),
    ("rate-limit", None, "rate_limit", float, "Messages per second one connection may send (0: off)."),
    ("rate-burst", None, "rate_burst", int, "Messages one connection may send in a burst."),
    ("max-connections", None, "max_connections", int,
     "Open connections in total, counted from accept (WebSocket, HTTP or not yet either);"
     " more are refused with 503 (0: no limit)."),
    ("max-connections-per-ip", None, "max_connections_per_ip", int,
     "Open connections from one address, counted from accept (behind a --trusted-proxy:"
     " per forwarded address, from the WebSocket handshake); more are refused with 503"
     " (0: no limit)."),
    ("handshake-timeout", None, "handshake_timeout", float,
     "Seconds a client has to send a complete HTTP request head, and again its body;"
     " 408 after."),
    ("max-request-head", None, "max_request_head", int,
     "Largest HTTP request head (request line and headers) in bytes; a larger one gets 431."),
    ("max-request-body", None, "max_request_body", int,
     "Largest HTTP request body in bytes; a larger one gets 413 before it is read"
     " (the HTTP endpoints take no body)."),
    ("max-send-buffer", None, "max_send_buffer", int,
     "Unsent bytes a connection may hold before it is closed with 1013 (slow consumer)."),
    ("max-device-info-bytes", None, "max_device_info_bytes", int, "Largest deviceInfo, in bytes."),
    ("reconnect-jitter", None, "reconnect_jitter", float,
     "Upper bound in seconds of the random reconnectAfterMs sent with server-shutdown."),
    ("turn-secret", None, "turn_secret", str,
     "Secret shared with the TURN server (coturn static-auth-secret) for /ice-servers."),
    ("turn-ttl", None, "turn_ttl", float, "Seconds the TURN credentials of /ice-servers stay valid."),
    ("redis", None, "redis_url", str,
     "Cluster mode: the Redis server shared by every process, redis://[[user]:password@]host[:port][/db],"
     " rediss://... (TLS) or unix:///path[?db=N] (see docs/cluster.md)."),
    ("redis-password-file", None, "redis_password_file", str,
     "File holding the Redis password (keeps it out of the command line)."),
    ("redis-prefix", None, "redis_prefix", str, "Prefix of every Redis key and channel."),
    ("redis-timeout", None, "redis_timeout", float,
     "Seconds a Redis command may take before it counts as failed."),
    ("node-timeout", None, "node_timeout", float,
     "Seconds after which the peers of a node that stopped answering count as offline."),
    ("workers", None, "workers", int,
     "Worker processes serving the listening sockets, which this process binds (more than 1"
     " needs --redis; see docs/workers.md)."),
]

# (option, Config field): options that may be given several times; their
# help is the docstring of their opt_ method.
_REPEATABLE: list[tuple[str, str]] = [
    ("listen", "listen"),
    ("allowed-origin", "allowed_origins"),
    ("trusted-proxy", "trusted_proxies"),
    ("metrics-listen", "metrics_listen"),
    ("stun-url", "stun_urls"),
    ("turn-url", "turn_urls"),
]

# (option, Config field, help): switches.
_FLAGS: list[tuple[str, str, str]] = [
    ("auth-required", "auth_required", "Refuse to bind an id without a valid token."),
    ("hide-device-info", "hide_device_info",
     "Presence and peer lists carry only ids, no deviceType/deviceInfo."),
    ("log-payloads", "log_payloads",
     "Include message payloads (SDP holds IP addresses) in logged errors."),
]

# (option, Config field, help): switches that turn a default-on feature off.
_OFF_FLAGS: list[tuple[str, str, str]] = [
    ("no-demo", "demo", "Do not serve the demo video-call page at /demo/."),
]

_DEFAULTS = {f.name: f.default for f in fields(Config) if f.default is not MISSING}


def _default_note(field: str) -> str:
    default = _DEFAULTS[field]
    return "" if default in (None, "") else f" [default: {default}]"


def _env_name(option: str) -> str:
    return "PORT" if option == "port" else "SIGNALING_" + option.upper().replace("-", "_")


def _options() -> list[str]:
    return ([name for name, *_ in _PARAMETERS] + [name for name, _ in _REPEATABLE]
            + [name for name, *_ in _FLAGS])


#: Every environment variable the server reads, by name.
ENVIRONMENT = frozenset(_env_name(option) for option in _options())

#: Spellings people reach for, and the variable they mean.
_ALIASES = {"SIGNALING_PORT": "PORT"}


def environment_warnings(environ: Mapping[str, str], known: frozenset[str] = ENVIRONMENT) -> list[str]:
    """
    One warning per ``SIGNALING_*`` variable in ``environ`` that is not in
    ``known`` (a misspelling would otherwise be ignored without a word),
    naming the closest one that is.
    """
    warnings = []
    spellings = sorted(known | set(_ALIASES))
    for name in sorted(environ):
        if not name.startswith("SIGNALING_") or name in known:
            continue
        close = difflib.get_close_matches(name, spellings, n=1)
        hint = f" (did you mean {_ALIASES.get(close[0], close[0])}?)" if close else ""
        warnings.append(f"environment variable {name} is not a setting and is ignored{hint}")
    return warnings


def version_text() -> str:
    """What ``--version`` prints: our version and those it runs on."""
    import platform

    import autobahn
    from twisted import copyright

    return (f"signaling {__version__} (Twisted {copyright.version}, "
            f"Autobahn {autobahn.__version__}, Python {platform.python_version()})")


def usage_error_text(error: Exception, command: str) -> str:
    """The two lines a usage error prints: the message, then where help is."""
    return f"signaling: error: {error}\nRun '{command} --help' to see every option."


def _name_sources(message: str, from_environment: Mapping[str, str]) -> str:
    """Name the environment variable instead of the option for values that came from there."""
    for option, variable in from_environment.items():
        message = re.sub(rf"--{re.escape(option)}(?![\w-])", variable, message)
    return message


class Options(usage.Options):
    """Command-line options of ``twistd signaling`` and ``python -m signaling``."""

    synopsis = "[options]"
    #: How the user ran us, for the hint after a usage error.
    command = "twistd signaling"
    #: The environment variables read.
    environment = ENVIRONMENT
    longdesc = (
        "WebRTC signaling server: rooms, directed offers/answers/ICE candidates, presence and "
        "a durable offline store, over WebSocket (ws:// or wss://) on one port, with /health "
        "and /stats on the same port. Every option can also be set in the environment as "
        "SIGNALING_<OPTION> (PORT for --port)."
    )
    optParameters = [
        [name, short, None, text + _default_note(field)]
        for name, short, field, _, text in _PARAMETERS
    ]
    optFlags = [[name, None, text] for name, _, text in (*_FLAGS, *_OFF_FLAGS)]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        for name, _ in _REPEATABLE:
            self[name] = []
        # Docstrings are indented; help lines are not.
        self.docs = {name: " ".join(doc.split()) if doc else doc for name, doc in self.docs.items()}
        self.config: Config | None = None
        self.policies: Policies | None = None
        #: Problems worth a warning at start (see :func:`environment_warnings`).
        self.warnings: list[str] = []

    def opt_version(self) -> NoReturn:
        """Print the version of the server (and of Twisted, Autobahn, Python) and exit."""
        print(version_text())
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse ``options``. Under ``twistd`` a usage error prints its message
        and a hint (not twistd's whole help) and exits with status 2.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            print(usage_error_text(e, self.command), file=sys.stderr)
            sys.exit(2)

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

    def opt_trusted_proxy(self, address: str) -> None:
        """
        Proxy address or network whose X-Forwarded-For header is believed
        (repeatable).
        """
        self["trusted-proxy"].append(address)

    def opt_metrics_listen(self, description: str) -> None:
        """
        Endpoint serving only /metrics, /health and /ready, e.g.
        tcp:9102:interface=127.0.0.1; /metrics then leaves the main port
        (repeatable).
        """
        self["metrics-listen"].append(description)

    def opt_stun_url(self, url: str) -> None:
        """STUN server URL offered by /ice-servers, e.g. stun:stun.example.org:3478 (repeatable)."""
        self["stun-url"].append(url)

    def opt_turn_url(self, url: str) -> None:
        """
        TURN server URL offered by /ice-servers with short-lived credentials,
        e.g. turn:turn.example.org:3478?transport=udp (repeatable; needs
        --turn-secret).
        """
        self["turn-url"].append(url)

    def postOptions(self) -> None:
        values: dict[str, Any] = {}
        # option -> environment variable, for the values read from there
        from_environment: dict[str, str] = {}
        for name, _, field, convert, _ in _PARAMETERS:
            raw = self.get(name)
            if raw is None:
                raw = self._environ.get(_env_name(name))
                if raw is None or not raw.strip():  # NAME= in an environment file: unset
                    continue
                from_environment[name] = _env_name(name)
            try:
                values[field] = convert(raw)
            except ValueError:
                source = from_environment.get(name, f"--{name}")
                raise usage.UsageError(f"{source}: invalid value {raw!r}")
        for name, field in _REPEATABLE:
            given = list(self[name])
            if not given and self._environ.get(_env_name(name)):
                given = re.split(r"[,\s]+", self._environ[_env_name(name)].strip())
                from_environment[name] = _env_name(name)
            values[field] = tuple(given)
        for flags, on in ((_FLAGS, True), (_OFF_FLAGS, False)):
            for name, field, _ in flags:
                raw = self._environ.get(_env_name(name))
                if not self[name] and raw is not None:
                    from_environment[name] = _env_name(name)
                try:
                    given = bool(self[name]) or (raw is not None and _flag(raw))
                except ValueError as e:
                    raise usage.UsageError(f"{_env_name(name)}: {e}")
                values[field] = given if on else not given
        if values["listen"] and "port" not in values:
            values["port"] = None
        try:
            self.config = Config(**values)
            self.policies = Policies.from_config(self.config)
            for description in (*self.config.listen, *self.config.metrics_listen):
                check_listen_description(description)
            redis_target(self.config.redis_url, self.config.redis_password_file)
            check_worker_listeners(self.config)
        except ValueError as e:  # TLSConfigError is one too
            raise usage.UsageError(_name_sources(str(e), from_environment))
        self.warnings = environment_warnings(self._environ, self.environment)
        for option, descriptions in (("--listen", self.config.listen),
                                     ("--metrics-listen", self.config.metrics_listen)):
            for description in descriptions:
                _check_endpoint(option, description)


def log_warnings(options: Options) -> None:
    """Log the warnings found while parsing ``options`` (once logging has a destination)."""
    for warning in options.warnings:
        _log.warn("{warning}", warning=warning)


def _check_endpoint(option: str, description: str) -> None:
    """Parse an endpoint description without listening; a UsageError if Twisted cannot."""
    from twisted.internet.endpoints import serverFromString

    try:
        # Parsing only stores the reactor, so a placeholder keeps this free of
        # installing one before twistd does.
        serverFromString(object(), description)
    except Exception as e:
        raise usage.UsageError(f"{option} {description!r}: {e}")


def makeService(options: Options) -> Any:
    """
    Build the service for ``twistd`` (the plugin's entry point): the server,
    or with ``--workers`` above 1 the supervisor of its worker processes. A
    store or listener that cannot start ends the process with one line
    saying why (exit status 1), not a traceback.
    """
    from twisted.internet import reactor

    from .service import freeze_startup_objects, install_signal_handlers, make_service
    from .sqlite_store import StoreOpenError
    from .workers import Supervisor

    config = options.config
    assert config is not None
    log_warnings(options)
    if config.workers > 1:
        supervisor = Supervisor(config, reactor)
        install_signal_handlers(reactor, supervisor, supervisor.kill_workers)
        reactor.addSystemEventTrigger("after", "shutdown", _exit_if_failed, supervisor)
        return _TwistdService(supervisor, twistd_text_observer(getattr(options, "parent", None)))
    try:
        service = make_service(config, reactor, policies=options.policies)
    except (StoreOpenError, ValueError, OSError) as e:
        raise SystemExit(f"signaling: cannot start: {e}")
    install_signal_handlers(reactor, service)
    freeze_startup_objects()
    return _TwistdService(service, twistd_text_observer(getattr(options, "parent", None)))


def _exit_if_failed(supervisor: Any) -> None:
    """twistd glue: the parent ends with status 1 when its workers could not be kept running."""
    if supervisor.exit_status:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(supervisor.exit_status)


class _TwistdService(MultiService):
    """
    twistd glue: a port that cannot be bound exits with a message, not a
    traceback; and the application logs in the server's own text format
    (``observer``, set as the application's log observer, which twistd uses
    unless ``--logger`` names another).
    """

    def __init__(self, service: Any, observer: ILogObserver | None) -> None:
        super().__init__()
        self._observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self._observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._observer)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except (CannotListenError, ValueError) as e:
            raise SystemExit(f"signaling: cannot start: {e}")
