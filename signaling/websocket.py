"""
The WebSocket layer on Autobahn's public API: checks the opening handshake
(origin, connection caps, URL token), hands every message to
:meth:`signaling.hub.Hub.receive_payload`, and is the hub's
:class:`~signaling.session.IConnection`.

Protocol rules live in the hub; the wire protocol is described in
``docs/protocol.md``. :mod:`signaling.internals` may swap in a faster
subclass that reads Autobahn's private state; this module uses none.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from .auth import token_from_query
from .events import IServerEvents
from .hub import Hub
from .limits import ConnectionGate
from .logs import log_event
from .messages import CLOSE_SLOW_CONSUMER, CLOSE_TOO_LARGE, ProtocolError
from .session import IConnection

__all__ = ["SignalingProtocol", "SignalingFactory", "OutputWatch"]

_log = Logger()

STATE_OPEN = WebSocketProtocol.STATE_OPEN
STATE_CONNECTING = WebSocketProtocol.STATE_CONNECTING


@implementer(IPushProducer)
class OutputWatch:
    """
    Counts what a connection writes while its transport's buffer is full.

    Registered as the transport's streaming producer: the transport pauses it
    when its send buffer fills and resumes it once the buffer is empty, so
    :attr:`held` is (within one buffer size) what the client has not taken
    yet. Over ``limit`` the connection is a slow consumer.
    """

    __slots__ = ("paused", "held", "limit", "_drained", "_clock")

    def __init__(self, limit: int, clock: Any) -> None:
        self.paused = False
        self.held = 0
        self.limit = limit
        self._drained: list[Any] = []
        self._clock = clock

    def wrote(self, size: int) -> bool:
        """Account ``size`` bytes written; True when the client fell too far behind."""
        if self.paused:
            self.held += size
            return self.held > self.limit
        return False

    def when_drained(self, callback: Any) -> None:
        """
        ``callback()`` once the buffer has been empty: at the next resume
        while it is full, else after this reactor turn (the transport writes
        what it holds when the reactor runs).
        """
        if self.paused:
            self._drained.append(callback)
        else:
            self._clock.callLater(0, callback)

    def release(self) -> None:
        """The connection is gone: call every waiting callback now."""
        self.paused = True
        self._call_drained()

    def _call_drained(self) -> None:
        callbacks, self._drained = self._drained, []
        for callback in callbacks:
            callback()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.held = 0
        self._call_drained()

    def stopProducing(self) -> None:
        self.release()


@implementer(IConnection)
class SignalingProtocol(WebSocketServerProtocol):
    """One client connection."""

    # Autobahn owns ``self.log``.
    _log = _log
    session = None
    peer_address = "unknown"
    _client_host: str | None = None
    _query_token: str | None = None
    _output: OutputWatch | None = None

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
        self.factory.events.connection_refused(reason)
        log_event(_log, "limit", peer=self.peer_address, limit=reason)
        raise ConnectionDeny(code, text)

    def onOpen(self) -> None:
        self._output = OutputWatch(self.factory.max_send_buffer, self.factory.reactor)
        self.transport.registerProducer(self._output, True)
        hub = self.factory.hub
        self.session = hub.connect(self, self.peer_address)
        if self._query_token is not None:
            hub.authenticate(self.session, self._query_token)

    def onOpenHandshakeTimeout(self) -> None:
        if self.state == STATE_CONNECTING:
            self.factory.events.connection_refused("handshake_timeout")
        super().onOpenHandshakeTimeout()

    def onMessage(self, payload: bytes | str, isBinary: bool) -> None:
        if 0 < self.factory.max_message_size < len(payload):
            # A message of several frames, each within the frame limit, that
            # is larger together (Autobahn's own limit is the outgoing one).
            self.sendCloseFrame(CLOSE_TOO_LARGE, b"message too large", isReply=False)
            return
        self.factory.hub.receive_payload(self.session, payload)

    def onPong(self, payload: bytes) -> None:
        if self.session is not None:
            self.factory.hub.pong(self.session)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.factory.hub.disconnect(self.session)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self._output is not None:
            self._output.release()
        if self._client_host is not None:
            self.factory.gate.release(self._client_host)
            self._client_host = None

    # -- IConnection ---------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one text frame; close a client that lets too much pile up."""
        if self.state != STATE_OPEN:
            return
        self.sendMessage(data)
        self._check_output(len(data))

    def _check_output(self, size: int) -> None:
        if self._output.wrote(size):  # type: ignore[union-attr]
            log_event(_log, "limit", peer=self.peer_address, limit="slow_consumer")
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with any close code (1001, 1008, 4001...)."""
        if self.state == STATE_OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8"), isReply=False)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        self.dropConnection(abort=True)

    def ping(self) -> None:
        """Send a heartbeat ping."""
        if self.state == STATE_OPEN:
            self.sendPing()

    def pause_reading(self) -> None:
        """Stop reading from the client (its requests are piling up)."""
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read from the client again."""
        self.transport.resumeProducing()

    def writable(self) -> bool:
        """Whether the transport's send buffer has room (it is not full)."""
        return self.state == STATE_OPEN and not self._output.paused  # type: ignore[union-attr]

    def when_drained(self, callback: Any) -> None:
        """``callback()`` once the send buffer has drained, or the connection is gone."""
        if self._output is None or self.state != STATE_OPEN:
            self.factory.reactor.callLater(0, callback)
        else:
            self._output.when_drained(callback)


class SignalingFactory(WebSocketServerFactory):
    """Creates :class:`SignalingProtocol` instances that share one hub."""

    protocol = SignalingProtocol

    def __init__(
        self,
        hub: Hub,
        gate: ConnectionGate,
        events: IServerEvents,
        max_message_size: int,
        max_outgoing_size: int,
        max_send_buffer: int,
        handshake_timeout: float,
        reactor: Any,
    ) -> None:
        """
        ``max_message_size`` bounds what clients send (larger: close 1009),
        ``max_outgoing_size`` what the server sends (the hub keeps to it).
        """
        super().__init__(reactor=reactor)
        #: The ``Site`` that answers plain HTTP requests on the same port
        #: (set by the service once it is built; used by the fast path).
        self.http_site: Any = None
        self.hub = hub
        self.gate = gate
        self.events = events
        self.max_send_buffer = max_send_buffer
        self.max_message_size = max_message_size
        self.setProtocolOptions(
            # Autobahn applies its message limit to both directions; frames
            # from clients are bounded by the frame limit, whole messages in
            # onMessage.
            maxMessagePayloadSize=max_outgoing_size,
            maxFramePayloadSize=max_message_size,
            # Send the promised close frame (1009, 1002...) instead of a bare TCP drop.
            failByDrop=False,
            autoPingInterval=0,
            # How long a client has to answer our close frame before the TCP
            # connection is cut. Autobahn's timers round the deadline down to
            # a whole second (txaio's batched timer), so 2 means one to two
            # seconds; 1 meant anything from 0 to 1 s, often a millisecond.
            closeHandshakeTimeout=2,
            openHandshakeTimeout=handshake_timeout,
            # Origins (including "null") are judged by OriginPolicy in onConnect.
            allowNullOrigin=True,
        )
