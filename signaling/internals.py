"""
The one door to Autobahn's and Twisted's private internals.

Everything in this module reads or writes state that is not part of a public
API, for speed and memory (``docs/performance.md``):

- connections start in the WebSocket protocol, and a request head that is
  not a plain WebSocket upgrade (no upgrade, a body, too large, or not
  complete in time) is handed to the HTTP site, which answers or refuses it
  as it does on the public path (an upgrade is parsed once, not twice);
- complete small masked data frames are parsed here instead of by
  Autobahn's per-frame Python code, and server frames are written straight
  to the transport, framed once per fan-out;
- Autobahn's options live on the protocol class instead of being copied
  into every connection, and its handshake leftovers are dropped once open;
- Autobahn's eager debug formatting is made lazy;
- a frame for a plain TCP connection whose Twisted send buffer is empty is
  sent on the socket at once, instead of waiting in the buffer for the
  reactor's next write round (which costs two more system calls to watch
  the socket for writability, and a reactor turn).

:func:`available` checks, once per process, the installed versions and
every attribute used here. When anything is not as tested it logs one
warning and answers False, and the server runs on Autobahn's public API
(:mod:`signaling.websocket`) with the same behaviour on the wire. To widen
the tested range: run ``tests/test_internals.py`` (and the whole suite)
against the new version, then add it to :data:`TESTED_VERSIONS` and to the
pins in ``setup.cfg``.
"""

from __future__ import annotations

import re
from types import FunctionType
from typing import Any

import autobahn
import autobahn.twisted.websocket as _autobahn_twisted
import autobahn.websocket.protocol as _autobahn_protocol
import twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from .websocket import STATE_OPEN, SignalingFactory, SignalingProtocol, hand_over

__all__ = [
    "TESTED_VERSIONS",
    "FastSignalingFactory",
    "FastSignalingProtocol",
    "available",
    "problems",
    "text_frame",
    "unmask",
]

#: Versions (``major.minor``) whose internals this module was tested against.
TESTED_VERSIONS = {"autobahn": ("26.10",), "twisted": ("26.10",)}

_log = Logger()

#: An ``Upgrade`` header naming websocket, in a request head.
_UPGRADE_WEBSOCKET = re.compile(rb"\r\nupgrade:[^\r\n]*websocket", re.IGNORECASE)
#: A header announcing a body: a Content-Length above 0, or a Transfer-Encoding.
_BODY = re.compile(rb"\r\n(?:content-length:[ \t]*0*[1-9]|transfer-encoding:)", re.IGNORECASE)
_NO_MASK = b"\x00\x00\x00\x00"

#: Handshake leftovers Autobahn keeps on the protocol for its test suite;
#: dropped once the connection is open (about a kilobyte per connection).
_HANDSHAKE_LEFTOVERS = (
    "http_request_data", "http_headers", "http_request_uri", "http_request_path",
    "http_request_params", "http_request_host", "http_response_data",
    "http_status_line", "websocket_extensions", "websocket_protocols",
    "websocket_origin", "_wskey",
)

#: Private or unstable attributes of an open connection read or written here.
_OPEN_CONNECTION_ATTRIBUTES = (
    "state", "current_frame", "inside_message", "data", "_perMessageCompress",
    "send_queue", "openHandshakeTimeoutCall", "logOctets", "logFrames",
    "trackedTimings", "autoPingInterval", "autoFragmentSize", "maskServerFrames",
    "requireMaskedClientFrames", "utf8validateIncoming", "applyMask",
    "websocket_version", "maxMessagePayloadSize", "maxFramePayloadSize",
) + _HANDSHAKE_LEFTOVERS

_PROBE_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

_checked: list[bool] = []


def available(log: Logger = _log) -> bool:
    """
    Whether the internals may be used: checked once per process; when they
    may not, one warning says why. Also makes Autobahn's debug formatting
    lazy when they may.
    """
    if not _checked:
        found = problems()
        if found:
            log.warn(
                "the WebSocket fast path is off, running on Autobahn's public API: {problems}",
                problems="; ".join(found),
            )
        else:
            _defer_autobahn_debug_formatting()
        _checked.append(not found)
    return _checked[0]


def problems() -> list[str]:
    """What is not as tested: versions, module attributes, connection attributes."""
    found = []
    for name, module in (("autobahn", autobahn), ("twisted", twisted)):
        version = str(getattr(module, "__version__", "unknown"))
        tested = TESTED_VERSIONS[name]
        if not any(version == v or version.startswith(v + ".") for v in tested):
            found.append(f"{name} {version} is not a tested version ({', '.join(tested)})")
    for module, names in (
        (_autobahn_protocol, ("pformat", "hltype", "hlval")),
        (_autobahn_twisted, ("hltype", "hlval")),
    ):
        found.extend(
            f"{module.__name__}.{name} is missing" for name in names if not hasattr(module, name)
        )
    for name in ("_dataReceived", "CONFIG_ATTRS"):
        if not hasattr(WebSocketServerProtocol, name):
            found.append(f"WebSocketServerProtocol.{name} is missing")
    for name in ("dataBuffer", "offset", "disconnecting", "getHandle", "TLS"):
        if not hasattr(tcp.Server, name):
            found.append(f"twisted.internet.tcp.Server.{name} is missing")
    try:
        found.extend(_probe_connection())
    except Exception as e:
        found.append(f"a probe connection failed: {e!r}")
    return found


def _probe_connection() -> list[str]:
    """Open one connection in memory and check the attributes used on it."""
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0)
    address = IPv4Address("TCP", "127.0.0.1", 1)
    protocol = factory.buildProtocol(address)
    protocol.makeConnection(StringTransport(peerAddress=address))
    try:
        protocol.dataReceived(_PROBE_HANDSHAKE)
        if protocol.state != STATE_OPEN:
            return ["a probe connection did not open"]
        found = [
            f"an open connection has no attribute {name!r}"
            for name in _OPEN_CONNECTION_ATTRIBUTES if not hasattr(protocol, name)
        ]
        if not hasattr(factory, "countConnections"):
            found.append("WebSocketServerFactory.countConnections is missing")
        return found
    finally:
        protocol.connectionLost(Failure(ConnectionDone()))


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
            eager = getattr(module, name)
            if getattr(eager, "_signaling_lazy", False):
                continue

            def lazy(value: Any, eager: Any = eager) -> _Lazy:
                return _Lazy(eager, value)

            lazy._signaling_lazy = True  # type: ignore[attr-defined]
            setattr(module, name, lazy)


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


def direct_transport(transport: Any) -> tcp.Connection | None:
    """``transport`` if :func:`write_now` may write to its socket (plain TCP or UNIX), else None."""
    if (isinstance(transport, tcp.Connection) and not transport.TLS
            and hasattr(transport, "_tempDataLen")):
        return transport
    return None


def write_now(connection: tcp.Connection, data: bytes) -> None:
    """
    Write ``data`` to ``connection`` (from :func:`direct_transport`): to its
    socket at once when nothing waits in Twisted's write buffer, which
    otherwise sends on the reactor's next turn, after asking epoll twice to
    watch the socket. What the socket does not take goes through Twisted's
    buffer, in order.
    """
    if (not connection._tempDataLen
            and connection.offset == len(connection.dataBuffer)
            and not connection.disconnecting):
        try:
            sent = connection.getHandle().send(data)
        except OSError:  # full, or broken: Twisted's write path finds out
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    connection.write(data)


class _SendBatch:
    """
    While one connection's bytes are handled, the frames sent to each
    connection wait in that connection's queue; when the handling ends, each
    connection with frames gets them in one write. A read holding several
    messages for one peer then costs one system call, not one per message.
    """

    __slots__ = ("open", "pending")

    def __init__(self) -> None:
        self.open = False
        self.pending: list[FastSignalingProtocol] = []

    def flush(self) -> None:
        """Write every connection's queued frames."""
        pending, self.pending = self.pending, []
        for protocol in pending:
            protocol._flush_queued()


_batch = _SendBatch()


class FastSignalingProtocol(SignalingProtocol):
    """:class:`SignalingProtocol` with the fast paths of this module."""

    #: Largest incoming payload the fast path handles on this connection (0: off).
    _fast_limit = 0
    #: Largest outgoing payload written directly.
    _send_limit = 0
    #: The plain TCP transport, for sending at once (:func:`write_now`).
    _tcp: Any = None
    _sniffing = True
    _head = b""
    #: Frames waiting for the end of the current batch (:class:`_SendBatch`).
    _queued: list[bytes] | None = None
    _queued_size = 0

    def onOpen(self) -> None:
        state = self.__dict__
        for name in _HANDSHAKE_LEFTOVERS:
            state.pop(name, None)
        # Autobahn queues only synchronous or chopped writes, which this
        # server never asks for; an empty tuple instead of a deque saves
        # 760 bytes per connection and would fail loudly if one were queued.
        if not self.send_queue:
            state["send_queue"] = ()
        self._fast_limit = _fast_limit(self)
        if self._fast_limit:
            self._send_limit = self.maxMessagePayloadSize or 0xFFFFFFFF
            self._tcp = direct_transport(self.transport)
        super().onOpen()
        # A dict never shrinks by deleting keys: rebuild it at its new size.
        self.__dict__ = dict(self.__dict__)

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the transport. Until the request head is complete it is
        only collected (see :meth:`_sniff`). While the connection is open and
        Autobahn's parser stands between frames, complete small masked FIN
        text/binary frames are handled here; anything else (control frames,
        fragments, oversize or unmasked frames, invalid UTF-8 text, partial
        frames) goes to Autobahn, from the first such frame on, with the
        same outcome.
        """
        if self._sniffing:
            data = self._sniff(data)
            if data is None:
                return
        elif (
            self._fast_limit
            and self.state == STATE_OPEN
            and self.current_frame is None
            and not self.inside_message
            and not self.data
        ):
            batch = _batch
            if batch.open:
                data = self._fast_frames(data)
            else:
                batch.open = True
                try:
                    data = self._fast_frames(data)
                finally:
                    batch.open = False
                    batch.flush()
            if not data:
                return
        self._dataReceived(data)

    def _sniff(self, data: bytes) -> bytes | None:
        """
        Wait for the request head, up to ``--max-request-head`` bytes. A
        plain WebSocket upgrade (no body) stays here (Autobahn parses it
        once); anything else, an oversized head included, is handed to the
        HTTP site, which answers or refuses it. Returns the bytes for
        Autobahn, or None while waiting or once handed over.
        """
        seen = len(self._head)
        head = self._head + data
        end = head.find(b"\r\n\r\n", max(0, seen - 3))
        limit = self.factory.requests.max_head
        if end < 0 and len(head) <= limit:
            self._head = head
            return None
        self._sniffing = False
        self._head = b""
        if (
            0 <= end <= limit - 4
            and _UPGRADE_WEBSOCKET.search(head, 0, end + 2) is not None
            and _BODY.search(head, 0, end + 2) is None
        ):
            return head
        self._become_http(head)
        return None

    def onOpenHandshakeTimeout(self) -> None:
        if self._sniffing:
            # The head did not come in time: the HTTP site answers that too.
            self.openHandshakeTimeoutCall = None
            self._sniffing = False
            head, self._head = self._head, b""
            self._become_http(head).request_timed_out()
            return
        super().onOpenHandshakeTimeout()

    def _become_http(self, head: bytes) -> Any:
        """
        Give the connection, its slot and the bytes read so far to an HTTP
        channel of the site; returns the channel.
        """
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
            self.openHandshakeTimeoutCall = None
        self.factory.countConnections -= 1
        transport = self.transport
        channel = self.factory.http_site.buildProtocol(transport.getPeer())
        channel.slot, self.slot = self.slot, None
        hand_over(transport, channel)
        if head:
            channel.dataReceived(head)
        return channel

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
            if self.state != STATE_OPEN:
                break
        return buf[pos:] if pos else buf

    def send(self, data: bytes) -> None:
        """
        Send one text frame: a small one is written directly, or queued until
        the end of the current batch (:class:`_SendBatch`); close a slow
        consumer.
        """
        if self.state != STATE_OPEN:
            return
        if len(data) > self._send_limit:
            self.sendMessage(data)
            self._check_output(len(data))
            return
        frames = _frames
        frame = frames.frame if data is frames.payload else frames.frame_of(data)
        if _batch.open:
            if self._queued is None:
                self._queued = [frame]
                _batch.pending.append(self)
            else:
                self._queued.append(frame)
            self._queued_size += len(data)
            return
        self._write(frame)
        self._check_output(len(data))

    def _flush_queued(self) -> None:
        """Write the frames queued in a batch (dropped if the connection closed since)."""
        queued, size = self._queued, self._queued_size
        if queued is None:
            return
        self._queued, self._queued_size = None, 0
        if self.state != STATE_OPEN:
            return
        self._write(queued[0] if len(queued) == 1 else b"".join(queued))
        self._check_output(size)

    def writable(self) -> bool:
        """Whether the send buffer has room, counting the frames queued in a batch."""
        if self._queued is not None:
            self._flush_queued()
        return super().writable()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Autobahn's write of every other frame (close, ping, large): queued frames go first."""
        if self._queued is not None:
            self._flush_queued()
        super().sendData(data, sync, chopsize)

    def _write(self, frame: bytes) -> None:
        if self._tcp is not None:
            write_now(self._tcp, frame)
        else:
            self.transport.write(frame)


def _fast_limit(protocol: FastSignalingProtocol) -> int:
    """
    The largest payload incoming frames may have to bypass Autobahn on this
    connection (frames over it, and messages over the size limit, go to
    Autobahn, which closes with 1009); 0 when something Autobahn's frame path
    would do besides framing is switched on.
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
        return 0
    limits = [size for size in (protocol.maxMessagePayloadSize, protocol.maxFramePayloadSize,
                                protocol.factory.max_message_size) if size > 0]
    return min(limits) if limits else 0xFFFF


class FastSignalingFactory(SignalingFactory):
    """
    :class:`SignalingFactory` making :class:`FastSignalingProtocol`
    connections, with Autobahn's options stored on the protocol class.
    """

    protocol = FastSignalingProtocol
    _baked: type | None = None

    def setProtocolOptions(self, **options: Any) -> None:
        """
        Autobahn's protocol options, also set as class attributes of this
        factory's protocol class: Autobahn copies an option into a
        connection only when the connection does not have it, so some thirty
        of them stay out of every connection's ``__dict__``.
        """
        super().setProtocolOptions(**options)
        if "hub" not in self.__dict__:
            return  # still inside WebSocketServerFactory.__init__
        base = self.protocol
        if base is self._baked:
            base = base.__bases__[0]
        attributes = {}
        for name in base.CONFIG_ATTRS:
            value = getattr(self, name)
            # A function stored on a class would become a method and get the
            # connection as an extra argument (perMessageCompressionAccept).
            attributes[name] = staticmethod(value) if isinstance(value, FunctionType) else value
        self.protocol = self._baked = type(base.__name__, (base,), attributes)
