"""
The WebSocket layer: a thin Autobahn protocol that checks the handshake,
decodes frames, hands them to the hub and is the hub's
:class:`~signaling.hub.IConnection`.

Protocol rules live in :mod:`signaling.hub`; the wire protocol is described in
``docs/protocol.md``.

Autobahn does the handshake, control frames, fragmented, oversize and
invalid frames. Two fast paths skip its per-frame Python work where the
outcome cannot differ (``docs/performance.md``): complete small masked data
frames are parsed here, and server frames are written straight to the
transport, framed once per fan-out.
"""

from __future__ import annotations

import re
from time import perf_counter
from types import FunctionType
from typing import Any

import autobahn.twisted.websocket as _autobahn_twisted
import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

from .auth import token_from_query
from .hub import Hub, IConnection
from .logs import log_event
from .messages import CONTROL_TYPES, ProtocolError, decode
from .metrics import Metrics
from .origins import OriginPolicy
from .proxies import ProxyPolicy
from .ratelimit import AddressCounter

__all__ = [
    "SignalingProtocol",
    "SignalingFactory",
    "ConnectionGate",
    "unsent_bytes",
    "text_frame",
    "unmask",
]

#: Close code for a client that cannot keep up with its messages.
CLOSE_SLOW_CONSUMER = 1013

_log = Logger()

_STATE_OPEN = WebSocketProtocol.STATE_OPEN
_STATE_CONNECTING = WebSocketProtocol.STATE_CONNECTING

#: An ``Upgrade`` header naming websocket, in a request head.
_UPGRADE_WEBSOCKET = re.compile(rb"\r\nupgrade:[^\r\n]*websocket", re.IGNORECASE)
#: Longest request head looked at before Autobahn is left to refuse it.
_MAX_HEAD = 16 * 1024
_NO_MASK = b"\x00\x00\x00\x00"

#: Handshake leftovers Autobahn keeps on the protocol for its test suite;
#: dropped once the connection is open (about a kilobyte per connection).
_HANDSHAKE_LEFTOVERS = (
    "http_request_data", "http_headers", "http_request_uri", "http_request_path",
    "http_request_params", "http_request_host", "http_response_data",
    "http_status_line", "websocket_extensions", "websocket_protocols",
    "websocket_origin", "_wskey",
)


def text_frame(payload: bytes) -> bytes:
    """
    One unmasked FIN text frame holding ``payload``: byte for byte what
    Autobahn's ``sendMessage`` writes for a server without compression.
    """
    n = len(payload)
    if n <= 125:
        return bytes((0x81, n)) + payload
    if n <= 0xFFFF:
        return bytes((0x81, 126, n >> 8, n & 0xFF)) + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte WebSocket ``mask``."""
    if mask == _NO_MASK:
        return data
    n = len(data)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )


class _FrameCache:
    """
    The frame of the last payload sent: a fan-out hands the same ``bytes``
    object to every recipient, so it is framed once. Identity, not equality,
    is compared; holding the payload keeps its id from being reused.
    """

    __slots__ = ("payload", "frame")

    def __init__(self) -> None:
        self.payload: bytes | None = None
        self.frame = b""

    def frame_of(self, payload: bytes) -> bytes:
        """The text frame for ``payload``, built once per distinct payload object."""
        if payload is not self.payload:
            self.frame = text_frame(payload)
            self.payload = payload
        return self.frame


_frames = _FrameCache()


class _Lazy:
    """A text computed only when it is needed: ``str(function(value))``."""

    __slots__ = ("function", "value")

    def __init__(self, function: Any, value: Any) -> None:
        self.function = function
        self.value = value

    def __str__(self) -> str:
        return str(self.function(self.value))

    __repr__ = __str__


def _defer_autobahn_debug_formatting() -> None:
    """
    Autobahn builds the arguments of its debug log lines eagerly on every
    connection: pretty-printed options and highlighted names (through
    ``click`` when it is installed), a third of a connection's set-up cost
    while debug logging is off. Its helpers are swapped for lazy ones that
    give the same text when a line is really written. Idempotent.
    """
    for module, names in (
        (_autobahn_protocol, ("pformat", "hltype", "hlval")),
        (_autobahn_twisted, ("hltype", "hlval")),
    ):
        for name in names:
            eager = getattr(module, name, None)
            if eager is None or getattr(eager, "_signaling_lazy", False):
                continue

            def lazy(value: Any, eager: Any = eager) -> _Lazy:
                return _Lazy(eager, value)

            lazy._signaling_lazy = True  # type: ignore[attr-defined]
            setattr(module, name, lazy)


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
    _fast = False
    _fast_limit = 0
    _sinks: tuple[Any, ...] | None = None
    _sniffing = True
    _head = b""

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
        state = self.__dict__
        for name in _HANDSHAKE_LEFTOVERS:
            state.pop(name, None)
        # Autobahn queues only synchronous or chopped writes, which this
        # server never asks for; an empty tuple instead of a deque saves
        # 760 bytes per connection and would fail loudly if one were queued.
        if not self.send_queue:
            state["send_queue"] = ()
        # A dict never shrinks by deleting keys: rebuild it at its new size.
        self.__dict__ = dict(state)
        self._fast = _fast_path_possible(self)
        self._sinks = _write_buffers(self.transport)
        hub = self.factory.hub
        self.session = hub.connect(self, self.peer_address)
        if self._query_token is not None:
            hub.authenticate(self.session, self._query_token)

    def onOpenHandshakeTimeout(self) -> None:
        if self.state == _STATE_CONNECTING:
            self.factory.metrics.connection_refused("handshake_timeout")
        super().onOpenHandshakeTimeout()

    def _sniff(self, data: bytes) -> bytes | None:
        """
        Wait for the request head; a WebSocket upgrade stays here (Autobahn
        parses it once), anything else is handed to the HTTP site. Returns
        the bytes for Autobahn, or None while waiting or once handed over.
        """
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0 and len(head) <= _MAX_HEAD:
            self._head = head
            return None
        self._sniffing = False
        self._head = b""
        if end >= 0 and _UPGRADE_WEBSOCKET.search(head, 0, end + 2) is None:
            self._become_http(head)
            return None
        return head

    def _become_http(self, head: bytes) -> None:
        """Give the connection, and the bytes read so far, to an HTTP channel."""
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
            self.openHandshakeTimeoutCall = None
        self.factory.countConnections -= 1
        transport = self.transport
        channel = self.factory.http_site.buildProtocol(transport.getPeer())
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = channel
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = channel
        else:
            transport.protocol = channel
        channel.makeConnection(transport)
        channel.dataReceived(head)

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the transport. Until the request head is complete it is
        only collected (see :meth:`_sniff`). While the connection is open and Autobahn's
        parser stands between frames, complete small masked FIN text/binary
        frames are handled here; anything else (control frames, fragments,
        oversize or unmasked frames, invalid UTF-8 text, partial frames) goes
        to Autobahn, from the first such frame on, with the same outcome.
        """
        if self._sniffing:
            data = self._sniff(data)
            if data is None:
                return
        elif (
            self._fast
            and self.state == _STATE_OPEN
            and self.current_frame is None
            and not self.inside_message
            and not self.data
        ):
            data = self._fast_frames(data)
            if not data:
                return
        self._dataReceived(data)

    def _fast_frames(self, buf: bytes) -> bytes:
        """Handle the leading simple frames of ``buf``; return the rest."""
        n = len(buf)
        pos = 0
        limit = self._fast_limit
        on_message = self.onMessage
        while n - pos >= 6:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if (b0 != 0x81 and b0 != 0x82) or b1 < 0x80:
                break
            length = b1 & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 8:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if length < 126:
                    break
                start = pos + 4
            else:
                break
            end = start + 4 + length
            if length > limit or end > n:
                break
            payload = unmask(buf[start + 4:end], buf[start:start + 4])
            if b0 == 0x81:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    break
                pos = end
                on_message(text, False)
            else:
                pos = end
                on_message(payload, True)
            if self.state != _STATE_OPEN:
                break
        return buf[pos:] if pos else buf

    def onMessage(self, payload: bytes | str, isBinary: bool) -> None:
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
        if self.state != _STATE_OPEN:
            return
        if self._fast and len(data) <= self._fast_limit:
            frames = _frames
            self.transport.write(frames.frame if data is frames.payload else frames.frame_of(data))
        else:
            self.sendMessage(data)
        sinks = self._sinks
        if sinks is None:
            unsent = unsent_bytes(self.transport)
        else:
            unsent = 0
            for sink in sinks:
                unsent += len(sink.dataBuffer) - sink.offset + sink._tempDataLen
        if unsent > self.factory.max_send_buffer:
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


def _fast_path_possible(protocol: SignalingProtocol) -> bool:
    """
    Whether frames may bypass Autobahn on this connection: nothing that
    Autobahn's frame path would do besides framing is switched on.
    """
    if (
        protocol._perMessageCompress is not None
        or protocol.logOctets
        or protocol.logFrames
        or protocol.trackedTimings
        or protocol.autoPingInterval
        or protocol.autoFragmentSize
        or protocol.maskServerFrames
        or not protocol.requireMaskedClientFrames
        or not protocol.utf8validateIncoming
        or not protocol.applyMask
        or protocol.websocket_version == 0
    ):
        return False
    limits = [size for size in (protocol.maxMessagePayloadSize, protocol.maxFramePayloadSize) if size > 0]
    protocol._fast_limit = min(limits) if limits else 0xFFFF
    return True


def _write_buffers(transport: Any) -> tuple[Any, ...] | None:
    """
    The transports under ``transport`` that buffer written bytes, when all of
    them are Twisted file descriptors; ``None`` when :func:`unsent_bytes`
    must be asked each time.
    """
    found = []
    while transport is not None:
        if hasattr(transport, "dataBuffer"):
            if not (hasattr(transport, "offset") and hasattr(transport, "_tempDataLen")):
                return None
            found.append(transport)
        transport = getattr(transport, "transport", None)
    return tuple(found)


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
        handshake_timeout: float,
    ) -> None:
        super().__init__()
        _defer_autobahn_debug_formatting()
        #: The ``Site`` that answers plain HTTP requests on the same port
        #: (set by the service once it is built).
        self.http_site: Any = None
        self.hub = hub
        self.gate = gate
        self.metrics = metrics
        self.max_send_buffer = max_send_buffer
        self._baked: type | None = None
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            # Send the promised close frame (1009, 1002...) instead of a bare TCP drop.
            failByDrop=False,
            autoPingInterval=0,
            closeHandshakeTimeout=1,
            openHandshakeTimeout=handshake_timeout,
            # Origins (including "null") are judged by OriginPolicy in onConnect.
            allowNullOrigin=True,
        )

    def setProtocolOptions(self, **options: Any) -> None:
        """
        Autobahn's protocol options, also set as class attributes of this
        factory's protocol class: Autobahn then leaves them there instead of
        copying some thirty of them into every connection's ``__dict__``.
        """
        super().setProtocolOptions(**options)
        if "hub" not in self.__dict__:
            return  # still inside WebSocketServerFactory.__init__
        base = self.protocol
        if base is self._baked:
            base = base.__bases__[0]
        options = {}
        for name in base.CONFIG_ATTRS:
            value = getattr(self, name)
            # A function stored on a class would become a method and get the
            # connection as an extra argument (perMessageCompressionAccept).
            options[name] = staticmethod(value) if isinstance(value, FunctionType) else value
        self.protocol = self._baked = type(base.__name__, (base,), options)
