"""
The WebSocket layer: a thin Autobahn protocol that checks the handshake,
decodes frames, hands them to the hub and is the hub's
:class:`~signaling.hub.IConnection`.

Protocol rules live in :mod:`signaling.hub`; the wire protocol is described in
``docs/protocol.md``.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from zope.interface import implementer

from .auth import token_from_query
from .hub import Hub, IConnection
from .logs import log_event
from .messages import CONTROL_TYPES, ProtocolError, decode
from .metrics import Metrics
from .origins import OriginPolicy
from .proxies import ProxyPolicy
from .ratelimit import AddressCounter

__all__ = ["SignalingProtocol", "SignalingFactory", "ConnectionGate", "unsent_bytes"]

#: Close code for a client that cannot keep up with its messages.
CLOSE_SLOW_CONSUMER = 1013

_log = Logger()


class ConnectionGate:
    """
    Decides at the handshake whether a connection may open: origin
    allow-list, total and per-address connection caps.
    """

    def __init__(
        self,
        origins: OriginPolicy,
        proxies: ProxyPolicy,
        max_connections: int,
        max_per_address: int,
    ) -> None:
        self.origins = origins
        self.proxies = proxies
        self._max_connections = max_connections or None
        self._max_per_address = max_per_address or None
        self._addresses = AddressCounter()
        self.open = 0

    def acquire(self, address: str) -> str | None:
        """Count a connection from ``address``; the refusal reason if it may not open."""
        if self._max_connections is not None and self.open >= self._max_connections:
            return "max_connections"
        if not self._addresses.acquire(address, self._max_per_address):
            return "per_ip"
        self.open += 1
        return None

    def release(self, address: str) -> None:
        """Forget a connection counted by :meth:`acquire`."""
        self.open -= 1
        self._addresses.release(address)


@implementer(IConnection)
class SignalingProtocol(WebSocketServerProtocol):
    """One client connection."""

    # Autobahn owns ``self.log``.
    _log = _log
    session = None
    peer_address = "unknown"
    _client_host: str | None = None
    _query_token: str | None = None

    def onConnect(self, request: Any) -> None:
        factory: SignalingFactory = self.factory
        gate = factory.gate
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None) or str(peer)
        client_host = gate.proxies.client_address(host, request.headers.get("x-forwarded-for"))
        self.peer_address = f"{client_host}:{getattr(peer, 'port', 0)}"
        if not gate.origins.allows(request.headers.get("origin")):
            self._refuse("origin", 403, "origin not allowed")
        try:
            self._query_token = token_from_query(request.params)
        except ProtocolError as e:
            self._refuse("auth", 401, e.text)
        reason = gate.acquire(client_host)
        if reason is not None:
            self._refuse(reason, 503, "server is at its connection limit")
        self._client_host = client_host

    def _refuse(self, reason: str, code: int, text: str) -> None:
        self.factory.metrics.connection_refused(reason)
        log_event(_log, "limit", peer=self.peer_address, limit=reason)
        raise ConnectionDeny(code, text)

    def onOpen(self) -> None:
        hub = self.factory.hub
        self.session = hub.connect(self, self.peer_address)
        if self._query_token is not None:
            hub.authenticate(self.session, self._query_token)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        started = perf_counter()
        hub: Hub = self.factory.hub
        session = self.session
        if not hub.admit(session):
            return
        try:
            message = decode(payload)
        except ProtocolError as e:
            hub.reject(session, e)
            return
        try:
            hub.receive(session, message)
        except Exception:
            # A bug must cost one message, never the connection or the server.
            _log.failure("unhandled error for message type {type!r}", type=message["type"])
            return
        if message["type"] not in CONTROL_TYPES:
            self.factory.metrics.observe_relay_latency(perf_counter() - started)

    def onPong(self, payload: bytes) -> None:
        if self.session is not None:
            self.factory.hub.pong(self.session)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.factory.hub.disconnect(self.session)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self._client_host is not None:
            self.factory.gate.release(self._client_host)
            self._client_host = None

    # -- IConnection ---------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one text frame; close a client that lets too much pile up."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        self.sendMessage(data)
        if unsent_bytes(self.transport) > self.factory.max_send_buffer:
            log_event(_log, "limit", peer=self.peer_address, limit="slow_consumer")
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with any close code (1001, 1008, 4001...)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8"), isReply=False)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        self.dropConnection(abort=True)

    def ping(self) -> None:
        """Send a heartbeat ping."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendPing()


def unsent_bytes(transport: Any) -> int:
    """
    Bytes written to ``transport`` (and the transports it wraps, such as TLS
    over TCP) that the kernel has not taken yet.
    """
    total = 0
    while transport is not None:
        buffer = getattr(transport, "dataBuffer", None)
        if buffer is not None:
            total += len(buffer) - getattr(transport, "offset", 0)
            total += getattr(transport, "_tempDataLen", 0)
        transport = getattr(transport, "transport", None)
    return total


class SignalingFactory(WebSocketServerFactory):
    """Creates :class:`SignalingProtocol` instances that share one hub."""

    protocol = SignalingProtocol

    def __init__(
        self,
        hub: Hub,
        gate: ConnectionGate,
        metrics: Metrics,
        max_message_size: int,
        max_send_buffer: int,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.gate = gate
        self.metrics = metrics
        self.max_send_buffer = max_send_buffer
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            # Send the promised close frame (1009, 1002...) instead of a bare TCP drop.
            failByDrop=False,
            autoPingInterval=0,
            closeHandshakeTimeout=1,
            # Origins (including "null") are judged by OriginPolicy in onConnect.
            allowNullOrigin=True,
        )
