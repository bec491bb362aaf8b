"""
HTTP on the WebSocket port: the upgrade on any path, ``/health``,
``/ready``, ``/stats``, ``/metrics``, ``/ice-servers``, CORS and ``OPTIONS``
preflight; plus the deadline for finishing the opening handshake.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any, Callable

from autobahn.twisted.resource import WebSocketResource
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from . import __version__
from .config import Config
from .auth import TokenVerifier, token_from_query
from .hub import Hub
from .ice import IceServers
from .messages import ProtocolError
from .metrics import Metrics, MetricsResource

__all__ = ["RootResource", "StatusEndpoints", "json_response", "make_site", "make_metrics_site"]

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
        websocket: WebSocketResource | None,
        endpoints: dict[bytes, Endpoint],
        cors_origin: str,
    ) -> None:
        super().__init__()
        self._websocket = websocket
        self._endpoints = endpoints
        self._cors_origin = cors_origin.encode("utf-8")

    def render(self, request: Request) -> Any:
        upgrade = request.getHeader("upgrade")
        if self._websocket is not None and upgrade is not None and upgrade.lower() == "websocket":
            # The WebSocket protocol takes the socket over. The HTTP channel's
            # idle timer and its registration as the socket's producer would
            # keep it and this request alive for hours, cost every write, and
            # leave no room for the connection's own producer.
            request.channel.setTimeout(None)
            request.transport.unregisterProducer()
            return self._websocket.render(request)
        request.setHeader(b"access-control-allow-origin", self._cors_origin)
        if self._cors_origin != b"*":
            request.setHeader(b"vary", b"Origin")
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader(b"access-control-allow-methods", b"GET, OPTIONS")
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


class HandshakeDeadlineChannel(HTTPChannel):
    """
    An HTTP channel that must receive a complete request head within the
    site's ``handshake_timeout``; a client that trickles its headers
    (slowloris) is cut off instead of holding a socket forever.
    """

    _deadline: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._deadline = self.callLater(self.factory.handshake_timeout, self._expired)

    def allHeadersReceived(self) -> None:
        self._cancel_deadline()
        super().allHeadersReceived()

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self.factory.metrics.connection_refused("handshake_timeout")
        self.transport.abortConnection()


class SignalingSite(Site):
    """
    A ``Site`` with the handshake deadline and without per-request access
    log lines (the hub logs events).
    """

    noisy = False
    protocol = HandshakeDeadlineChannel

    def __init__(self, root: Resource, metrics: Metrics, handshake_timeout: float, reactor: Any) -> None:
        super().__init__(root, reactor=reactor)
        self.metrics = metrics
        self.handshake_timeout = handshake_timeout

    def log(self, request: Request) -> None:
        pass


def make_site(
    config: Config,
    status: StatusEndpoints,
    metrics: Metrics,
    websocket: WebSocketResource,
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
    root = RootResource(websocket, endpoints, config.cors_origin)
    return SignalingSite(root, metrics, config.handshake_timeout, reactor)


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
    return SignalingSite(root, metrics, config.handshake_timeout, reactor)
