"""
Server settings: one frozen, validated object built from the command line,
the environment or code.

Every limit of the server has its one default here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Config"]


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
    #: Open WebSocket connections in total (0: no limit).
    max_connections: int = 50_000
    #: Open WebSocket connections from one address (0: no limit).
    max_connections_per_ip: int = 256
    #: Seconds a client has to complete the HTTP/WebSocket opening handshake.
    handshake_timeout: float = 10.0
    #: Unsent bytes one connection may hold before it is closed with 1013.
    max_send_buffer: int = 1024 * 1024
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
    #: Serve the demo video-call page at ``/demo/``.
    demo: bool = True

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
        for name in ("max_send_buffer", "max_device_info_bytes", "rate_burst"):
            _check_range(name, getattr(self, name), 1, None)
        for name in ("max_connections", "max_connections_per_ip"):
            _check_range(name, getattr(self, name), 0, None)
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


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_range(name: str, value: Any, low: int, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{_option(name)} must be an integer")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{_option(name)} must be {bounds}, not {value}")
