"""
HTTP on the WebSocket port: the upgrade on any path, ``/health``,
``/stats``, CORS and ``OPTIONS`` preflight.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from . import __version__
from .hub import Hub

__all__ = ["RootResource", "json_response", "make_site"]

SERVICE_NAME = "signaling"


class RootResource(Resource):
    """
    Sends WebSocket upgrades (on any path) to the WebSocket resource and
    plain HTTP requests to the JSON endpoints.
    """

    isLeaf = True

    def __init__(
        self,
        websocket: WebSocketResource,
        endpoints: dict[bytes, Callable[[Request], Any]],
        cors_origin: str,
        allows_origin: Callable[[str | None], bool],
    ) -> None:
        super().__init__()
        self._websocket = websocket
        self._endpoints = endpoints
        self._cors_origin = cors_origin.encode("utf-8")
        self._allows_origin = allows_origin

    def render(self, request: Request) -> Any:
        upgrade = request.getHeader("upgrade")
        if upgrade is not None and upgrade.lower() == "websocket":
            return self._upgrade(request)
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

    def _upgrade(self, request: Request) -> Any:
        if not self._allows_origin(request.getHeader("origin")):
            return json_response(request, {"error": "origin not allowed"}, 403)
        return self._websocket.render(request)


def json_response(request: Request, body: Any, code: int = 200) -> bytes:
    """Finish ``request`` with ``body`` as JSON."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8")


class StatusEndpoints:
    """The JSON bodies of ``/health`` and ``/stats``."""

    def __init__(self, hub: Hub, started_at: float) -> None:
        self._hub = hub
        self._started_at = started_at

    def health(self, request: Request) -> bytes:
        """Liveness and the headline counters."""
        hub = self._hub
        now = hub.clock.seconds()
        stats = hub.stats()
        return json_response(
            request,
            {
                "status": "healthy",
                "service": SERVICE_NAME,
                "version": __version__,
                "uptime": round(now - self._started_at, 3),
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

    def stats(self, request: Request) -> bytes:
        """Every counter, flat."""
        hub = self._hub
        body: dict[str, Any] = dict(hub.stats())
        body["uptime"] = round(hub.clock.seconds() - self._started_at, 3)
        return json_response(request, body)


def make_site(
    hub: Hub,
    websocket: WebSocketResource,
    cors_origin: str,
    allows_origin: Callable[[str | None], bool],
    started_at: float,
) -> Site:
    """The ``Site`` serving one port: WebSocket upgrades plus the endpoints."""
    status = StatusEndpoints(hub, started_at)
    root = RootResource(
        websocket,
        {b"/health": status.health, b"/stats": status.stats},
        cors_origin,
        allows_origin,
    )
    return QuietSite(root)


class QuietSite(Site):
    """A ``Site`` without per-request access log lines (the hub logs events)."""

    noisy = False

    def log(self, request: Request) -> None:
        pass
