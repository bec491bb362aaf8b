"""
A connection before it is a WebSocket or an answered HTTP request: counted
against the connection caps from the moment it is accepted, refused
cheaply over a cap, and held to the request limits.

- :class:`GatedFactory` stands in front of every listening factory (the
  main port, ``--listen``, ``--metrics-listen``): each accepted connection
  takes a :class:`~signaling.limits.ConnectionSlot` of the
  :class:`~signaling.limits.ConnectionGate`, which whatever protocol ends
  up owning the connection releases when it closes. Over a cap the
  connection gets a :class:`Refuser` instead.
- :class:`RequestLimits` are the limits of one HTTP request (head size,
  body size, time), enforced by :class:`signaling.web.SignalingChannel` on
  both paths (the fast path of :mod:`signaling.internals` hands it every
  request head that is not a plain WebSocket upgrade).
- :func:`refusal` builds the raw responses of these refusals (408, 413,
  431, 503), the same bytes on both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import (
    ILoggingContext,
    INegotiated,
    IProtocolNegotiationFactory,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import datetimeToString
from zope.interface import implementer

from .config import RETRY_AFTER, Config
from .events import IServerEvents
from .limits import ConnectionGate
from .logs import log_event

__all__ = ["GatedFactory", "Refuser", "RequestLimits", "refusal", "REFUSALS"]

_log = Logger()

#: Status -> (reason phrase, the error text of the JSON body).
REFUSALS: dict[int, tuple[str, str]] = {
    408: ("Request Timeout", "the request did not arrive in time"),
    413: ("Content Too Large", "request body too large"),
    431: ("Request Header Fields Too Large", "request head too large"),
    503: ("Service Unavailable", "server is at its connection limit"),
}

#: Seconds between two log lines about connections refused at accept for
#: one reason (every refusal is counted in the metrics).
REFUSAL_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class RequestLimits:
    """
    The limits of one HTTP request (their values live in
    :class:`~signaling.config.Config`).

    :ivar max_head: largest request head (request line, headers and the
        empty line that ends them), in bytes; a larger one gets 431.
    :ivar max_body: largest request body, in bytes; a larger one gets 413
        before it is read.
    :ivar timeout: seconds for the head to arrive (from the connection's
        start, or from the previous response), and again for the body
        (from the end of the head); else 408.
    """

    max_head: int
    max_body: int
    timeout: float

    @classmethod
    def from_config(cls, config: Config) -> "RequestLimits":
        """The request limits ``config`` sets."""
        return cls(config.max_request_head, config.max_request_body, config.handshake_timeout)


def refusal(status: int) -> bytes:
    """
    The whole response refusing a request with ``status`` (one of
    :data:`REFUSALS`): a small JSON body like the endpoints' errors, no
    ``Server`` header, ``Connection: close``; a 503 says when to retry.
    """
    phrase, text = REFUSALS[status]
    body = b'{"error": "' + text.encode("ascii") + b'"}'
    retry = b"Retry-After: %d\r\n" % RETRY_AFTER if status == 503 else b""
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))
        + b"Date: " + datetimeToString() + b"\r\n"
        + b"Content-Type: application/json; charset=utf-8\r\n"
        + b"Cache-Control: no-store\r\n"
        + retry
        + b"Connection: close\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def _is_tls(transport: Any) -> bool:
    """Whether ``transport`` speaks TLS (``ssl:``/``--tls-cert`` listeners, or an adopted TLS socket)."""
    return ISSLTransport.providedBy(transport) or INegotiated.providedBy(transport)


class Refuser(Protocol):
    """
    A connection refused at accept, over a connection cap. A plain TCP
    connection gets the 503 of :func:`refusal` at once (nothing is read) and
    is closed; a TLS connection is closed without a handshake (a response
    would first cost one).
    """

    def connectionMade(self) -> None:
        transport = self.transport
        if _is_tls(transport):
            transport.abortConnection()
        else:
            transport.write(refusal(503))
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass


@implementer(IProtocolNegotiationFactory, ILoggingContext)
class GatedFactory:
    """
    Listens for ``factory``: every accepted connection counts against the
    caps of ``gate`` from accept on. The protocol built for it gets the
    connection's slot as ``protocol.slot`` and releases it when the
    connection closes (or hands it on with the connection). Over a cap a
    :class:`Refuser` is built instead, the refusal counted in ``events``
    and logged at most once per :data:`REFUSAL_LOG_INTERVAL` per reason.
    """

    def __init__(self, factory: Any, gate: ConnectionGate, events: IServerEvents, clock: Any) -> None:
        self._factory = factory
        self._gate = gate
        self._events = events
        self._clock = clock
        #: reason -> [refusals not logged yet, time of the last line]
        self._unlogged: dict[str, list[float]] = {}

    def buildProtocol(self, addr: Any) -> Any:
        """The wrapped factory's protocol with its slot, or a :class:`Refuser`."""
        host = getattr(addr, "host", None) or str(addr)
        slot = self._gate.admit(host)
        if isinstance(slot, str):
            self._refused(slot, f"{host}:{getattr(addr, 'port', 0)}")
            return Refuser()
        protocol = self._factory.buildProtocol(addr)
        if protocol is None:
            slot.release()
            return None
        protocol.slot = slot
        slot.protocol = protocol
        return protocol

    def _refused(self, reason: str, peer: str) -> None:
        self._events.connection_refused(reason)
        now = self._clock.seconds()
        entry = self._unlogged.setdefault(reason, [0, float("-inf")])
        entry[0] += 1
        if now - entry[1] >= REFUSAL_LOG_INTERVAL:
            log_event(
                _log, "limit",
                format="{peer} hit limit {limit} ({refused} connections refused at accept"
                       " since the last such line)",
                peer=peer, limit=reason, refused=int(entry[0]),
            )
            entry[:] = [0, now]

    def doStart(self) -> None:
        """Start the wrapped factory (once per listening port, as Twisted counts)."""
        self._factory.doStart()

    def doStop(self) -> None:
        """Stop the wrapped factory."""
        self._factory.doStop()

    def logPrefix(self) -> str:
        """The wrapped factory's log prefix ("... starting on PORT")."""
        prefix = getattr(self._factory, "logPrefix", None)
        return prefix() if prefix is not None else self._factory.__class__.__name__

    def acceptableProtocols(self) -> list[bytes]:
        """The wrapped factory's ALPN protocols, if it names any (TLS behaves as without the gate)."""
        if IProtocolNegotiationFactory.providedBy(self._factory):
            return list(self._factory.acceptableProtocols())
        return []
