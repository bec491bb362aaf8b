"""
Server settings: one frozen, validated object built from the command line,
the environment or code.

Every limit of the server has its one home here: the configurable ones as
:class:`Config` fields with their defaults, the fixed ones (part of the
protocol or of its security) as the constants below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .ice import validate_ice_url
from .origins import OriginPolicy
from .proxies import ProxyPolicy
from .redis_url import parse_redis_url

__all__ = [
    "Config",
    "default_offline_sender_quota",
    "MAX_WORKERS",
    "ENVELOPE_HEADROOM",
    "ERROR_LOG_BURST",
    "ERROR_LOG_RATE",
    "MAX_DEVICE_TYPE_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_LOGGED_TEXT",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_REQUEST_BODY",
    "MIN_REQUEST_HEAD",
    "MAX_TOKEN_LENGTH",
    "OFFLINE_SENDER_SHARE",
    "RATE_STRIKES",
    "RATE_STRIKE_WINDOW",
    "RETRY_AFTER",
]

#: Longest peer, user or room id accepted (PROTOCOL section 2).
MAX_ID_LENGTH = 128

#: Deepest nesting of arrays/objects accepted in a message. Far beyond any
#: signaling message, and far below the interpreter's recursion limit, so
#: encoding a decoded message again can never hit a RecursionError.
MAX_JSON_DEPTH = 64

#: Longest ``deviceType`` accepted ("phone", "desktop", "web"...): every
#: presence message and peer list carries it.
MAX_DEVICE_TYPE_LENGTH = 64

#: Longest token looked at; anything longer is refused before any crypto.
MAX_TOKEN_LENGTH = 8192

#: Longest client ``messageId`` (or ``id``) the server keeps as the key of an
#: offline message or echoes in an error.
MAX_MESSAGE_ID_LENGTH = 256

#: Bytes the server may add around a message it relays or stores (``from``
#: and ``sender``, a timestamp, the ``offline-message`` envelope): what it
#: sends may be this much larger than ``max_message_size``.
ENVELOPE_HEADROOM = 16 * 1024

#: Error events one connection may log at once, and per second after that;
#: beyond, its errors are counted and answered but not logged one by one.
ERROR_LOG_BURST = 20
ERROR_LOG_RATE = 1.0

#: Longest text of one logged field; longer ones are cut (the log must not
#: grow faster than a client sends).
MAX_LOGGED_TEXT = 512

#: ``RATE_LIMITED`` warnings a connection may ignore within
#: :data:`RATE_STRIKE_WINDOW` seconds before it is closed with 1008.
RATE_STRIKES = 20
RATE_STRIKE_WINDOW = 10.0

#: Without ``--offline-max-bytes-per-sender``, one sender id may hold this
#: fraction of ``--offline-max-bytes`` (1/10): a flood from one id can never
#: take the offline store from everyone else.
OFFLINE_SENDER_SHARE = 10


def default_offline_sender_quota(offline_max_bytes: int) -> int:
    """The per-sender byte quota derived from the store's byte cap (a tenth, at least 1)."""
    return max(1, offline_max_bytes // OFFLINE_SENDER_SHARE)

#: Bounds of ``--max-request-head`` (a browser's WebSocket handshake needs
#: about a kilobyte) and of ``--max-request-body`` (a body is held in memory).
MIN_REQUEST_HEAD = 1024
MAX_REQUEST_BODY = 1024 * 1024

#: Seconds a client refused over a connection cap is told to wait
#: (``Retry-After`` of the 503).
RETRY_AFTER = 10

#: Most worker processes ``--workers`` may start.
MAX_WORKERS = 256
#: What a Redis key prefix may hold: no spaces, quotes or glob characters.
_REDIS_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class Config:
    """
    Everything that can be configured. Build it directly when embedding::

        Config(port=9001, db=":memory:", heartbeat_interval=10)

    Invalid values raise ``ValueError`` with a message naming the option.
    """

    #: TCP port of the default listener; ``None`` binds only ``listen``.
    port: int | None = 9001
    #: Address of the default listener ("" for every interface).
    interface: str = ""
    #: Twisted endpoint descriptions to listen on as well (or instead).
    listen: tuple[str, ...] = ()
    #: Listen backlog of the default listener.
    backlog: int = 1024
    #: Offline store: a SQLite file path, or ":memory:" (lost on restart).
    db: str = "signaling.sqlite"
    #: Seconds an offline message is kept (never delivered after that).
    offline_ttl: float = 86400.0
    #: Messages kept per offline peer.
    offline_max: int = 100
    #: Total encoded bytes in the offline store.
    offline_max_bytes: int = 64 * 1024 * 1024
    #: Peers that may have an offline queue at once.
    offline_max_peers: int = 100_000
    #: Encoded bytes the offline messages of one sender id may take at once;
    #: None (not given): derived, a tenth of ``offline_max_bytes``. Read the
    #: value in force from :attr:`offline_sender_quota`.
    offline_max_bytes_per_sender: int | None = None
    #: Seconds between heartbeat sweeps.
    heartbeat_interval: float = 30.0
    #: Seconds between ``[Stats]`` log lines.
    stats_interval: float = 300.0
    #: Largest accepted message, in bytes (larger closes with 1009).
    max_message_size: int = 65536
    #: ``Access-Control-Allow-Origin`` for the HTTP endpoints.
    cors_origin: str = "*"
    #: WebSocket origins allowed at the handshake (empty: any).
    allowed_origins: tuple[str, ...] = ()
    #: Seconds a graceful shutdown may take before connections are cut.
    shutdown_timeout: float = 5.0
    #: Rooms one connection may be in at once.
    max_rooms_per_connection: int = 32
    #: Members one room may hold.
    max_room_members: int = 1000
    #: Peers returned by one paged ``get-peers`` when ``limit`` is absent.
    peers_page_default: int = 100
    #: Largest ``limit`` a paged ``get-peers`` may ask for.
    peers_page_max: int = 500
    #: ``peer-status`` broadcasts: "all" (seed behaviour) or "none".
    presence: str = "all"
    #: PEM certificate (optionally followed by its chain) for the --port listener.
    tls_cert: str | None = None
    #: PEM private key of ``tls_cert``.
    tls_key: str | None = None
    #: PEM file of intermediate certificates sent after those of ``tls_cert``.
    tls_chain: str | None = None
    #: Shared secret for HS256 tokens (at least 32 bytes).
    auth_secret: str | None = None
    #: PEM public key file for RS256/ES256 tokens.
    auth_public_key: str | None = None
    #: Refuse to bind an id without a valid token.
    auth_required: bool = False
    #: Messages per second one connection may send (0: no limit).
    rate_limit: float = 100.0
    #: Messages one connection may send at once above ``rate_limit``.
    rate_burst: int = 200
    #: Open connections in total, counted from accept (WebSocket, HTTP or
    #: not yet either; 0: no limit).
    max_connections: int = 50_000
    #: Open connections from one address, counted from accept (behind a
    #: trusted proxy: from the handshake, per forwarded address; 0: no limit).
    max_connections_per_ip: int = 256
    #: Seconds a client has to send a complete HTTP request head (the
    #: WebSocket opening handshake included), and again for a request body.
    handshake_timeout: float = 10.0
    #: Largest HTTP request head (request line and headers), in bytes.
    max_request_head: int = 16 * 1024
    #: Largest HTTP request body, in bytes (the endpoints take none).
    max_request_body: int = 1024
    #: Unsent bytes one connection may hold before it is closed with 1013.
    max_send_buffer: int = 1024 * 1024
    #: Messages of one connection held back while an earlier request of it
    #: is answered asynchronously (cluster mode); at this many the server
    #: stops reading from that connection until they are handled.
    max_waiting_messages: int = 256
    #: Largest ``deviceInfo`` object, in encoded bytes.
    max_device_info_bytes: int = 4096
    #: Leave ``deviceType``/``deviceInfo`` out of presence and peer lists.
    hide_device_info: bool = False
    #: Proxy addresses whose ``X-Forwarded-For`` header is believed.
    trusted_proxies: tuple[str, ...] = ()
    #: Extra endpoints serving only ``/metrics`` (then not on the main port).
    metrics_listen: tuple[str, ...] = ()
    #: Log message payloads (SDP holds IP addresses) in error events.
    log_payloads: bool = False
    #: Upper bound of the random ``reconnectAfterMs`` sent on shutdown, seconds.
    reconnect_jitter: float = 10.0
    #: STUN server URLs offered by ``/ice-servers``.
    stun_urls: tuple[str, ...] = ()
    #: TURN server URLs offered by ``/ice-servers`` with REST-API credentials.
    turn_urls: tuple[str, ...] = ()
    #: Secret shared with the TURN server (coturn ``static-auth-secret``).
    turn_secret: str | None = None
    #: Seconds TURN credentials from ``/ice-servers`` stay valid.
    turn_ttl: float = 86400.0
    #: Use the WebSocket fast path (:mod:`signaling.internals`) when the
    #: installed Autobahn and Twisted are versions it was tested with; False
    #: runs on Autobahn's public API only (same behaviour, slower).
    fast_path: bool = True
    #: Redis server of cluster mode: ``redis://``, ``rediss://`` or
    #: ``unix://`` URL (see :mod:`signaling.redis_url`); None: one process.
    redis_url: str | None = field(default=None, repr=False)
    #: File holding the Redis password, instead of the URL.
    redis_password_file: str | None = None
    #: Prefix of every Redis key and channel the server uses.
    redis_prefix: str = "signaling:"
    #: Seconds one Redis command may take before it counts as failed.
    redis_timeout: float = 2.0
    #: Seconds after which a node that stopped refreshing counts as dead.
    node_timeout: float = 15.0
    #: Processes serving the listening sockets (1: this process, no parent).
    workers: int = 1

    #: Serve the demo video-call page at ``/demo/``.
    demo: bool = True
    @property
    def max_outgoing_size(self) -> int:
        """Largest message the server sends: ``max_message_size`` plus :data:`ENVELOPE_HEADROOM`."""
        return self.max_message_size + ENVELOPE_HEADROOM

    def __post_init__(self) -> None:
        if self.port is not None:
            _check_range("port", self.port, 0, 65535)
        if self.port is None and not self.listen:
            raise ValueError("nothing to listen on: give --port or --listen")
        _check_range("backlog", self.backlog, 1, 65535)
        for name in ("offline_max", "offline_max_bytes", "offline_max_peers",
                     "max_message_size", "max_rooms_per_connection",
                     "max_room_members", "peers_page_default", "peers_page_max"):
            _check_range(name, getattr(self, name), 1, None)
        for name in ("max_send_buffer", "max_device_info_bytes", "rate_burst",
                     "max_waiting_messages"):
            _check_range(name, getattr(self, name), 1, None)
        if self.offline_max_bytes_per_sender is not None:
            _check_range("offline_max_bytes_per_sender", self.offline_max_bytes_per_sender, 1, None)
        for name in ("max_connections", "max_connections_per_ip"):
            _check_range(name, getattr(self, name), 0, None)
        _check_range("max_request_head", self.max_request_head, MIN_REQUEST_HEAD, None)
        _check_range("max_request_body", self.max_request_body, 0, MAX_REQUEST_BODY)
        if not isinstance(self.rate_limit, (int, float)) or not 0 <= self.rate_limit < float("inf"):
            raise ValueError("--rate-limit must be a number of messages per second (0: off)")
        if not isinstance(self.reconnect_jitter, (int, float)) or not self.reconnect_jitter >= 0:
            raise ValueError("--reconnect-jitter must be zero or a positive number of seconds")
        if self.auth_secret and self.auth_public_key:
            raise ValueError("give --auth-secret or --auth-public-key, not both")
        if self.auth_required and not (self.auth_secret or self.auth_public_key):
            raise ValueError("--auth-required needs --auth-secret or --auth-public-key")
        if self.turn_urls and not self.turn_secret:
            raise ValueError("--turn-url needs --turn-secret")
        for name in ("offline_ttl", "heartbeat_interval", "stats_interval",
                     "shutdown_timeout", "handshake_timeout", "turn_ttl"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{_option(name)} must be a positive number of seconds")
        if self.presence not in ("all", "none"):
            raise ValueError("--presence must be 'all' or 'none'")
        if not self.db:
            raise ValueError("--db must be a file path or ':memory:'")
        for origin in self.allowed_origins:
            if not origin or origin != origin.strip():
                raise ValueError(f"--allowed-origin {origin!r} is not an origin")
        _check_patterns(self)
        self._check_cluster()

    @property
    def offline_sender_quota(self) -> int:
        """
        The bytes one sender id may have in the offline store at once:
        ``offline_max_bytes_per_sender`` when given, else a tenth of
        ``offline_max_bytes`` (:func:`default_offline_sender_quota`). Kept
        derived rather than filled in, so ``dataclasses.replace`` with
        another ``offline_max_bytes`` derives it again.
        """
        if self.offline_max_bytes_per_sender is not None:
            return self.offline_max_bytes_per_sender
        return default_offline_sender_quota(self.offline_max_bytes)

    def _check_cluster(self) -> None:
        """The Redis and ``--workers`` settings (the password file is read later)."""
        if self.redis_url is not None:
            if parse_redis_url(self.redis_url).password is not None and self.redis_password_file:
                raise ValueError(
                    "give the Redis password in --redis or in --redis-password-file, not both"
                )
        elif self.redis_password_file is not None:
            raise ValueError("--redis-password-file needs --redis")
        if self.redis_password_file is not None and not self.redis_password_file:
            raise ValueError("--redis-password-file must be a file path")
        if not isinstance(self.redis_prefix, str) or not _REDIS_PREFIX.match(self.redis_prefix):
            raise ValueError(
                "--redis-prefix must be 1 to 64 letters, digits or '_.:-' characters"
            )
        _check_seconds("redis_timeout", self.redis_timeout, 0.1, 60.0)
        _check_seconds("node_timeout", self.node_timeout, 3.0, 600.0)
        if self.node_timeout < 2 * self.redis_timeout:
            raise ValueError(
                "--node-timeout must be at least twice --redis-timeout, or a node could"
                " be declared dead while one of its commands is still allowed to run"
            )
        _check_range("workers", self.workers, 1, MAX_WORKERS)
        if self.workers > 1 and self.redis_url is None:
            raise ValueError(
                f"--workers {self.workers} needs --redis: the workers must share rooms,"
                " presence and the offline store through Redis (see docs/cluster.md)"
            )


def _check_patterns(config: Config) -> None:
    """
    The settings that are patterns, addresses or URLs (checked without
    touching a file; files are checked by ``make_service``).
    """
    try:
        OriginPolicy(config.allowed_origins)
    except ValueError as e:
        raise ValueError(e if "--allowed-origin" in str(e) else f"--allowed-origin: {e}") from None
    ProxyPolicy(config.trusted_proxies)
    for option, urls in (("--stun-url", config.stun_urls), ("--turn-url", config.turn_urls)):
        for url in urls:
            try:
                validate_ice_url(url)
            except ValueError as e:
                raise ValueError(f"{option}: {e}") from None


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_seconds(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{_option(name)} must be between {low:g} and {high:g} seconds")


def _check_range(name: str, value: Any, low: int, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{_option(name)} must be an integer")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{_option(name)} must be {bounds}, not {value}")
