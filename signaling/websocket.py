"""
The WebSocket layer on Autobahn's public API: checks the opening handshake
(origin, URL token, the per-address cap of a client behind a trusted proxy),
hands every message to :meth:`signaling.hub.Hub.receive_payload`, and is
the hub's :class:`~signaling.session.IConnection`. :class:`UpgradeResource`
takes a connection over from the HTTP site; :func:`hand_over` is the one way
a connection changes protocol.

Protocol rules live in the hub; the wire protocol is described in
``docs/protocol.md``. :mod:`signaling.internals` may swap in a faster
subclass that reads Autobahn's private state; this module uses none.
"""

from __future__ import annotations

import fcntl
import sys
import termios
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from .admission import RequestLimits
from .auth import token_from_query
from .config import RETRY_AFTER
from .events import IServerEvents
from .hub import Hub
from .limits import ConnectionGate, ConnectionSlot
from .logs import log_event
from .messages import CLOSE_SLOW_CONSUMER, CLOSE_TOO_LARGE, ProtocolError
from .session import IConnection

__all__ = ["SignalingProtocol", "SignalingFactory", "OutputWatch", "UpgradeResource", "hand_over"]

_log = Logger()

STATE_OPEN = WebSocketProtocol.STATE_OPEN
#: The ioctl for a socket's send queue (``SIOCOUTQ``, the same number as
#: ``TIOCOUTQ``); None where the system has none.
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)
STATE_CONNECTING = WebSocketProtocol.STATE_CONNECTING


@implementer(IPushProducer)
class OutputWatch:
    """
    Counts what a connection writes while its transport's buffer is full.

    Registered as the transport's streaming producer: the transport pauses it
    when its send buffer fills and resumes it once the buffer is empty, so
    :attr:`held` is (within one buffer size) what the client has not taken
    yet. Over ``limit`` the connection is a slow consumer.

    :ivar resumed: the buffer drained since :meth:`took_output` last asked.
    :ivar queued: the socket's send queue when it last asked (None: unknown).
    """

    __slots__ = ("paused", "held", "limit", "_drained", "_clock", "resumed", "queued")

    def __init__(self, limit: int, clock: Any) -> None:
        self.paused = False
        self.held = 0
        self.limit = limit
        self._drained: list[Any] = []
        self._clock = clock
        self.resumed = False
        self.queued: int | None = None

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
        self.resumed = True
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
    #: The connection's place under the connection caps, taken at accept
    #: (None: built outside a listener); released once when it closes.
    slot: ConnectionSlot | None = None
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
        if self.slot is not None:
            reason = self.slot.count_client(client_host)
            if reason is not None:
                self._refuse(reason, 503, "server is at its connection limit")

    def _refuse(self, reason: str, code: int, text: str) -> None:
        self.factory.events.connection_refused(reason)
        log_event(_log, "limit", peer=self.peer_address, limit=reason)
        raise ConnectionDeny(code, text)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Autobahn's refusal of a handshake; a 503 also says when to retry."""
        if code == 503:
            responseHeaders = [*(responseHeaders or ()), ("Retry-After", str(RETRY_AFTER))]
        super().failHandshake(reason, code, responseHeaders)

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
        if self.state != STATE_OPEN:
            return  # the server is closing the connection: the rest is not read
        if 0 < self.factory.max_message_size < len(payload):
            # A message of several frames, each within the frame limit, that
            # is larger together (Autobahn's own limit is the outgoing one).
            self.sendCloseFrame(CLOSE_TOO_LARGE, b"message too large", isReply=False)
            return
        self.factory.hub.receive_payload(self.session, payload)

    def onPong(self, payload: bytes) -> None:
        if self.session is not None:
            self.factory.hub.pong(self.session)

    def onPing(self, payload: bytes) -> None:
        # A client that does not read what it is sent gets no pong: pongs
        # must not pile up in memory behind the send buffer limit.
        if (self.state == STATE_OPEN and self.session is not None
                and self.factory.hub.receive_ping(self.session) and self.writable()):
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.factory.hub.disconnect(self.session)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self._output is not None:
            self._output.release()
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.release()

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

    def took_output(self) -> bool:
        """
        Whether the client took output since the last call: the server's
        buffer drained, or the kernel's send queue went down (the kernel's
        buffer grows to megabytes, so a whole backlog can wait there).
        """
        output = self._output
        if output is None:
            return False
        queued = self.unacknowledged()
        before, output.queued = output.queued, queued
        resumed, output.resumed = output.resumed, False
        return resumed or (before is not None and queued is not None and queued < before)

    def unacknowledged(self) -> int | None:
        """The socket's send queue (Linux ``SIOCOUTQ``): sent or held, not yet acknowledged."""
        try:
            fileno = self.transport.getHandle().fileno()
            queued = fcntl.ioctl(fileno, _SIOCOUTQ, b"\0\0\0\0")
        except (AttributeError, OSError, TypeError, ValueError):
            return None
        return int.from_bytes(queued, sys.byteorder, signed=True)


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
        requests: RequestLimits,
        reactor: Any,
    ) -> None:
        """
        ``max_message_size`` bounds what clients send (larger: close 1009),
        ``max_outgoing_size`` what the server sends (the hub keeps to it),
        ``requests`` the request heads the fast path reads itself.
        """
        # No Server header (Autobahn's default names itself and its version).
        super().__init__(server=None, reactor=reactor)
        #: The ``Site`` that answers plain HTTP requests on the same port
        #: (set by the service once it is built; used by the fast path).
        self.http_site: Any = None
        self.hub = hub
        self.gate = gate
        self.events = events
        self.max_send_buffer = max_send_buffer
        self.max_message_size = max_message_size
        #: The limits of a request head (the fast path reads heads itself).
        self.requests = requests
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
            openHandshakeTimeout=requests.timeout,
            # Origins (including "null") are judged by OriginPolicy in onConnect.
            allowNullOrigin=True,
            # A head without an upgrade never reaches Autobahn; were one to,
            # it would get a plain 426, not Autobahn's page naming itself.
            webStatus=False,
        )


def hand_over(transport: Any, protocol: Any) -> None:
    """
    Give an open connection to ``protocol``: the transport (plain or TLS,
    with whatever it buffered) delivers to it from now on.
    """
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)


class UpgradeResource:
    """
    Renders a WebSocket upgrade request the HTTP site has read: the
    connection and its slot go to a new protocol of ``factory``, which is
    given the request head again (as Autobahn's ``WebSocketResource`` does,
    without its status page for requests it cannot take over).
    """

    isLeaf = True

    def __init__(self, factory: SignalingFactory) -> None:
        self._factory = factory

    def render(self, request: Any) -> Any:
        channel = request.channel
        transport = channel.transport
        # The WebSocket protocol takes the socket over. The HTTP channel's
        # idle timer and its registration as the socket's producer would
        # keep it and this request alive for hours, cost every write, and
        # leave no room for the connection's own producer.
        channel.setTimeout(None)
        transport.unregisterProducer()
        protocol = self._factory.buildProtocol(transport.getPeer())
        protocol.slot, channel.slot = channel.slot, None
        channel.transport = None
        hand_over(transport, protocol)
        # The channel paused reading while it handled the request.
        transport.resumeProducing()
        head = [request.method, b" ", request.uri, b" HTTP/1.1\r\n"]
        for name, values in request.requestHeaders.getAllRawHeaders():
            head += [name, b": ", b",".join(values), b"\r\n"]
        head.append(b"\r\n")
        protocol.dataReceived(b"".join(head))
        return NOT_DONE_YET
