"""
One client connection as the hub sees it: its bound identity, registration,
rooms, token grant, rate limiter and the requests waiting behind a slow one.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface

from .auth import Grant
from .limits import RateLimiter

__all__ = ["IConnection", "Session"]


class IConnection(Interface):
    """What the hub needs from a client connection (the only way out)."""

    def send(data):
        """Queue one encoded message (bytes) for the client."""

    def close(code, reason):
        """Start a closing handshake with this close code and reason text."""

    def abort():
        """Drop the connection at once, without a closing handshake."""

    def ping():
        """Send a WebSocket ping (the client's pong proves it is alive)."""

    def pause_reading():
        """Stop reading from the client until :meth:`resume_reading`."""

    def resume_reading():
        """Read from the client again."""

    def writable():
        """Whether the connection takes more data now (its send buffer is not full)."""

    def when_drained(callback):
        """
        Call ``callback()`` once what was sent so far has left the
        connection's send buffer (soon, when it is not full), unless the
        connection closes first.
        """

    def took_output():
        """
        Whether the client took some of what was sent to it since the
        previous call (the first call only starts counting): it is reading,
        even while a ping waits behind a long backlog.
        """


class Session:
    """Everything the hub knows about one open connection."""

    __slots__ = (
        "conn", "address", "identity", "registered", "device_type",
        "device_info", "connected_at", "registered_seq", "rooms", "ack_mode",
        "alive", "replaced", "open", "grant", "limiter", "busy", "waiting",
        "error_log", "error_log_muted",
    )

    def __init__(self, conn: Any, address: str, now_ms: int,
                 limiter: RateLimiter | None = None) -> None:
        self.conn = conn
        #: the client's address, ``"ip:port"`` (for logs)
        self.address = address
        #: the bound peer/user id, once ``register`` or ``join-room`` bound one
        self.identity: str | None = None
        #: whether the identity is registered as a peer (directed messages, presence)
        self.registered = False
        self.device_type: Any = None
        self.device_info: Any = None
        self.connected_at = now_ms
        #: position in the registration order (``get-peers`` pages by it)
        self.registered_seq = 0
        #: ids of the rooms this session is in
        self.rooms: set[str] = set()
        #: offline messages stay stored until acknowledged
        self.ack_mode = False
        #: showed life since the last heartbeat sweep
        self.alive = True
        #: taken over by a newer connection for the same id
        self.replaced = False
        self.open = True
        #: what the connection's token allows, when it presented one
        self.grant: Grant | None = None
        self.limiter = limiter
        #: a request of this session is being answered asynchronously
        self.busy = False
        #: payloads received while busy, answered in order afterwards
        self.waiting: list[Any] = []  # a list: an empty deque costs 700 bytes more
        #: how many of its errors may still be logged (made at the first error)
        self.error_log: Any = None
        self.error_log_muted = False

    def send(self, data: bytes) -> bool:
        """
        The one send path: hand ``data`` (an encoded message) to the
        connection while it is open; returns whether it was open.
        """
        if self.open:
            self.conn.send(data)
            return True
        return False
