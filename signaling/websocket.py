"""
The WebSocket layer: a thin Autobahn protocol that decodes frames, hands
them to the hub and is the hub's :class:`~signaling.hub.IConnection`.

Protocol rules live in :mod:`signaling.hub`; the wire protocol is described in
``docs/protocol.md``.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.logger import Logger
from zope.interface import implementer

from .hub import Hub, IConnection
from .messages import ProtocolError, decode

__all__ = ["SignalingProtocol", "SignalingFactory"]


@implementer(IConnection)
class SignalingProtocol(WebSocketServerProtocol):
    """One client connection."""

    # Autobahn owns ``self.log``.
    _log = Logger()
    session = None
    peer_address = "unknown"

    def onConnect(self, request: Any) -> None:
        self.peer_address = _address(self.transport)

    def onOpen(self) -> None:
        self.session = self.factory.hub.connect(self, self.peer_address)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        hub: Hub = self.factory.hub
        try:
            message = decode(payload)
        except ProtocolError as e:
            hub.reject(self.session, e)
            return
        try:
            hub.receive(self.session, message)
        except Exception:
            # A bug must cost one message, never the connection or the server.
            self._log.failure("unhandled error for message type {type!r}", type=message["type"])

    def onPong(self, payload: bytes) -> None:
        if self.session is not None:
            self.factory.hub.pong(self.session)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.factory.hub.disconnect(self.session)

    # -- IConnection ---------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one text frame if the connection is still open."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(data)

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


class SignalingFactory(WebSocketServerFactory):
    """Creates :class:`SignalingProtocol` instances that share one hub."""

    protocol = SignalingProtocol

    def __init__(self, hub: Hub, max_message_size: int) -> None:
        super().__init__()
        self.hub = hub
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            # Send the promised close frame (1009, 1002...) instead of a bare TCP drop.
            failByDrop=False,
            autoPingInterval=0,
            closeHandshakeTimeout=1,
        )


def _address(transport: Any) -> str:
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    if host is None:
        return str(peer)
    return f"{host}:{peer.port}"
