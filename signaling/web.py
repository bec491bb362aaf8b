"""
HTTP on the WebSocket port: the upgrade on any path, ``/health``,
``/ready``, ``/stats``, ``/metrics``, ``/ice-servers``, the browser files of
:mod:`signaling.static` (``/client/``, ``/demo/``), CORS and ``OPTIONS``
preflight; plus the limits of every request (:class:`SignalingChannel`:
head and body size and time, 431/413/408) and no ``Server`` header.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from io import BytesIO
from typing import Any, Callable

from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from . import __version__
from .admission import RequestLimits, refusal
from .config import Config
from .auth import TokenVerifier, token_from_query
from .hub import Hub
from .ice import IceServers
from .messages import ProtocolError
from .metrics import Metrics, MetricsResource
from .static import static_endpoints

__all__ = [
    "RootResource", "SignalingChannel", "SignalingRequest", "SignalingSite", "StatusEndpoints",
    "json_response", "make_site", "make_metrics_site",
]

SERVICE_NAME = "signaling"

Endpoint = Callable[[Request], bytes]


class RootResource(Resource):
    """
    Sends WebSocket upgrades (on any path) to the WebSocket resource and
    plain HTTP requests to the JSON endpoints.
    """

    isLeaf = True

    def __init__(
        self,
        websocket: Resource | None,
        endpoints: dict[bytes, Endpoint],
        cors_origin: str,
    ) -> None:
        """
        :param websocket: renders an upgrade request by handing the
            connection to a WebSocket protocol (see
            :class:`signaling.websocket.UpgradeResource`); None: no upgrades.
        """
        super().__init__()
        self._websocket = websocket
        self._endpoints = endpoints
        self._cors_origin = cors_origin.encode("utf-8")

    def render(self, request: Request) -> Any:
        upgrade = request.getHeader("upgrade")
        if self._websocket is not None and upgrade is not None and upgrade.lower() == "websocket":
            if _has_body(request):
                # Refused like Autobahn's other refusals of a handshake: then closed.
                request.channel.persistent = False
                request.setHeader(b"connection", b"close")
                return json_response(request, {"error": "a WebSocket upgrade has no body"}, 400)
            return self._websocket.render(request)
        request.setHeader(b"access-control-allow-origin", self._cors_origin)
        if self._cors_origin != b"*":
            request.setHeader(b"vary", b"Origin")
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader(b"access-control-allow-methods", b"GET, HEAD, OPTIONS")
            request.setHeader(
                b"access-control-allow-headers",
                request.getHeader(b"access-control-request-headers") or b"Content-Type",
            )
            request.setHeader(b"access-control-max-age", b"86400")
            return b""
        endpoint = self._endpoints.get(request.path)
        if endpoint is None:
            return json_response(request, {"error": "not found"}, 404)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD, OPTIONS")
            return json_response(request, {"error": "method not allowed"}, 405)
        return endpoint(request)


def _has_body(request: Request) -> bool:
    """
    Whether the head announced a body: a Content-Length above 0, or any
    Transfer-Encoding (the fast path's sniffer sends such upgrades here).
    """
    length = request.getHeader(b"content-length")
    return (length is not None and int(length) > 0) or request.getHeader(b"transfer-encoding") is not None


def json_response(request: Request, body: Any, code: int = 200) -> bytes:
    """Finish ``request`` with ``body`` as JSON."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8")


class StatusEndpoints:
    """The bodies of the HTTP endpoints, read from the hub's live counters."""

    def __init__(
        self,
        hub: Hub,
        clock: Any,
        started_at: float,
        is_ready: Callable[[], bool],
        ice: IceServers,
        verifier: TokenVerifier | None,
        cluster: Any = None,
    ) -> None:
        self._hub = hub
        #: In cluster mode, the :class:`~signaling.cluster.node.ClusterNode`.
        self._cluster = cluster
        self._clock = clock
        self._started_at = started_at
        self._is_ready = is_ready
        self._ice = ice
        self._verifier = verifier

    def health(self, request: Request) -> bytes:
        """Liveness and the headline counters."""
        now = self._clock.seconds()
        stats = self._hub.stats()
        return json_response(
            request,
            {
                "status": "healthy",
                "service": SERVICE_NAME,
                "version": __version__,
                "uptime": round(now - self._started_at, 3),
                "pid": os.getpid(),
                "connections": {
                    "current": stats["connections"],
                    "total": stats["connectionsTotal"],
                },
                "messages": {
                    "forwarded": stats["forwarded"],
                    "offlineQueued": stats["offlineQueued"],
                },
                "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat(),
            },
        )

    def ready(self, request: Request) -> bytes:
        """
        200 while accepting clients; 503 while draining for shutdown, and in
        cluster mode while Redis cannot be reached.
        """
        if not self._is_ready():
            return json_response(request, {"status": "draining"}, 503)
        if self._cluster is not None and not self._cluster.ready:
            return json_response(request, {"status": "unavailable"}, 503)
        return json_response(request, {"status": "ready"})

    def stats(self, request: Request) -> Any:
        """Every counter of this process, flat; in cluster mode also ``cluster``, the totals."""
        body: dict[str, Any] = dict(self._hub.stats())
        body["uptime"] = round(self._clock.seconds() - self._started_at, 3)
        body["pid"] = os.getpid()
        if self._cluster is None:
            return json_response(request, body)
        gone: list[Any] = []
        request.notifyFinish().addErrback(gone.append)

        def respond(totals: dict[str, Any]) -> None:
            if not gone:
                body["cluster"] = totals
                request.write(json_response(request, body))
                request.finish()

        self._cluster.stats().addCallback(respond)
        return NOT_DONE_YET

    def ice_servers(self, request: Request) -> bytes:
        """
        STUN/TURN servers with short-lived TURN credentials. With
        authentication on, a token (``Authorization: Bearer`` or ``?token=``)
        is required and its ``sub`` names the credentials.
        """
        user_id = None
        now = self._clock.seconds()
        if self._verifier is not None:
            try:
                token = _bearer(request) or token_from_query(request.args)
                if token is None:
                    raise ProtocolError("UNAUTHORIZED", "a token is required")
                user_id = self._verifier.verify(token, now).subject
            except ProtocolError as e:
                request.setHeader(b"www-authenticate", b"Bearer")
                return json_response(request, {"error": e.text, "code": e.code}, 401)
        return json_response(request, self._ice.document(user_id, now))


def _bearer(request: Request) -> str | None:
    header = request.getHeader("authorization")
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


class SignalingRequest(Request):
    """
    A request whose body is held in memory (it is at most
    ``--max-request-body`` bytes; Twisted would spill a body of unknown or
    large size to a temporary file) and counted against that limit as it
    arrives.
    """

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.body_received(len(data)):
            self.content.write(data)


class SignalingChannel(HTTPChannel):
    """
    An HTTP channel under the site's :class:`~signaling.admission.RequestLimits`:

    - a request head must be complete within ``timeout`` seconds of the
      connection's start (or of the previous response) and fit in
      ``max_head`` bytes: else 408 or 431;
    - a body announced larger than ``max_body`` (Content-Length) gets 413
      before any of it is read, a chunked one as soon as it passes the
      limit, and a body must be complete within ``timeout`` seconds of its
      head: else 408;

    each refusal is the raw response of :func:`~signaling.admission.refusal`,
    counted in ``connections_refused``, and ends the connection (aborted if
    the client does not take the response within ``abortTimeout``). A deadline
    that passes before any byte of a request arrived closes the connection
    without a response.

    The channel holds the connection's :class:`~signaling.limits.ConnectionSlot`
    (``slot``) and releases it when the connection closes, unless it handed
    the connection on (an upgrade). It writes no ``Server`` header.
    """

    slot: Any = None
    _limits: RequestLimits
    _deadline: Any = None
    _refused = False
    _in_head = True
    _head_received = 0
    _head_lines = 0
    _body_received = 0
    _served = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._limits = limits = self.factory.limits
        # A head line longer than the whole head may be is refused unread.
        self.MAX_LENGTH = limits.max_head
        self.totalHeadersSize = limits.max_head
        self._arm(self.request_timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_received += len(data)
        super().dataReceived(data)
        # Everything read since this head began is still head: too much of it
        # is refused now, before the line buffer grows any further.
        if self._in_head and not self._refused and self._head_received > self._limits.max_head:
            self._refuse(431, "head_too_large")

    def lineReceived(self, line: bytes) -> None:
        self._head_lines += len(line) + 2
        if self._head_lines > self._limits.max_head:
            self._refuse(431, "head_too_large")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(431, "head_too_large")

    def allHeadersReceived(self) -> None:
        self._in_head = False
        self._head_received = self._head_lines = self._body_received = 0
        self._cancel_deadline()
        if self.length is not None and self.length > self._limits.max_body:
            self._refuse(413, "body_too_large")
            return
        super().allHeadersReceived()
        if self.length != 0:
            self._arm(self._body_timed_out)

    def body_received(self, size: int) -> bool:
        """Count ``size`` bytes of the body; False (and 413) once past the limit."""
        if self._refused:
            return False
        self._body_received += size
        if self._body_received > self._limits.max_body:
            self._refuse(413, "body_too_large")
            return False
        return True

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # The next request (kept alive, or already pipelined) has the same
        # time for its head; a connection that closes now is closed sooner.
        self._in_head = True
        self._served = True
        self._arm(self.request_timed_out)
        super().requestDone(request)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if isinstance(headers, Headers):
            headers.removeHeader(b"server")
        super().writeHeaders(version, code, reason, headers)

    def request_timed_out(self) -> None:
        """
        The head of a request did not arrive in time: 408 if any of it
        came, else the connection is closed without a word. (Also called by
        the fast path when its own deadline passes while it waits for a
        head, once it handed over what it read.)
        """
        self._cancel_deadline()
        if self._refused:
            return
        # Part of a head came: whole lines, or the start of one still buffered.
        if self._head_lines or self.clearLineBuffer():
            self._refuse(408, "handshake_timeout")
            return
        self._refused = True
        if not self._served:  # an idle kept-alive connection was not refused
            self.factory.metrics.connection_refused("handshake_timeout")
        self._close()

    def _body_timed_out(self) -> None:
        self._cancel_deadline()
        self._refuse(408, "body_timeout")

    def _refuse(self, status: int, reason: str) -> None:
        if self._refused:
            return
        self._refused = True
        self.clearLineBuffer()
        self.factory.metrics.connection_refused(reason)
        self.transport.write(refusal(status))
        self._close()

    def _close(self) -> None:
        self._cancel_deadline()
        self.loseConnection()
        if self.transport is not None and self.transport.connected:
            # A client that does not take what is left to send is cut, as
            # Twisted's own idle timeout does.
            self._deadline = self.callLater(self.abortTimeout, self.transport.abortConnection)

    def _arm(self, expired: Callable[[], None]) -> None:
        self._cancel_deadline()
        self._deadline = self.callLater(self._limits.timeout, expired)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.release()
        super().connectionLost(reason)


class SignalingSite(Site):
    """
    A ``Site`` of :class:`SignalingChannel` connections under ``limits``,
    without per-request access log lines (the hub logs events).
    """

    noisy = False
    protocol = SignalingChannel
    requestFactory = SignalingRequest

    def __init__(self, root: Resource, metrics: Metrics, limits: RequestLimits, reactor: Any) -> None:
        super().__init__(root, reactor=reactor)
        self.metrics = metrics
        self.limits = limits

    def log(self, request: Request) -> None:
        pass


def make_site(
    config: Config,
    status: StatusEndpoints,
    metrics: Metrics,
    websocket: Resource,
    reactor: Any,
) -> SignalingSite:
    """The ``Site`` serving the main port: WebSocket upgrades plus the endpoints."""
    endpoints: dict[bytes, Endpoint] = {
        b"/health": status.health,
        b"/ready": status.ready,
        b"/stats": status.stats,
        b"/ice-servers": status.ice_servers,
    }
    if not config.metrics_listen:
        endpoints[b"/metrics"] = MetricsResource(metrics).render_GET
    endpoints.update(static_endpoints(config.demo))
    root = RootResource(websocket, endpoints, config.cors_origin)
    return SignalingSite(root, metrics, RequestLimits.from_config(config), reactor)


def make_metrics_site(
    config: Config, status: StatusEndpoints, metrics: Metrics, reactor: Any
) -> SignalingSite:
    """The ``Site`` of ``--metrics-listen``: ``/metrics``, ``/health`` and ``/ready`` only."""
    root = RootResource(
        None,
        {b"/metrics": MetricsResource(metrics).render_GET, b"/health": status.health,
         b"/ready": status.ready},
        config.cors_origin,
    )
    return SignalingSite(root, metrics, RequestLimits.from_config(config), reactor)
