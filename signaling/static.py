"""
The files the server hands to browsers: the JavaScript client library
(``/client/signaling-client.js`` and its typings) and the demo page
(``/demo/``).

Only a fixed list of files, read from the package once at start, is ever
served: a request path is looked up in a dictionary and never touches the
file system, so no path can escape. Every file carries its content type,
``X-Content-Type-Options: nosniff``, an ``ETag`` (answered with 304 when the
browser already has it) and ``Cache-Control: no-cache`` (a browser keeps its
copy and revalidates it on every use, so an upgraded server is picked up at
once). The demo page adds a Content-Security-Policy that allows only its own
scripts, styles and connections, and camera and microphone for itself only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

from twisted.web.server import Request

__all__ = ["StaticFile", "static_endpoints", "demo_urls", "CLIENT_FILES", "DEMO_FILES"]

#: URL path -> (package directory, file name, content type) of the library.
CLIENT_FILES: dict[str, tuple[str, str, str]] = {
    "/client/signaling-client.js": ("client", "signaling-client.js", "text/javascript; charset=utf-8"),
    "/client/signaling-client.d.ts": ("client", "signaling-client.d.ts", "application/typescript; charset=utf-8"),
}

#: URL path -> (package directory, file name, content type) of the demo page.
DEMO_FILES: dict[str, tuple[str, str, str]] = {
    "/demo/": ("demo", "index.html", "text/html; charset=utf-8"),
    "/demo/demo.js": ("demo", "demo.js", "text/javascript; charset=utf-8"),
    "/demo/demo.css": ("demo", "demo.css", "text/css; charset=utf-8"),
}

_COMMON_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"cache-control": b"no-cache",
}

#: Headers of the library files: importable from pages on other origins
#: (the CORS header itself is set for every endpoint by the site).
_CLIENT_HEADERS = {
    b"cross-origin-resource-policy": b"cross-origin",
}

#: Headers of the demo: its own scripts, styles and WebSocket only; camera
#: and microphone for this origin; never framed; no referrer leaks.
_DEMO_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        b" media-src 'self' blob: mediastream:; connect-src 'self';"
        b" base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"permissions-policy": b"camera=(self), microphone=(self), display-capture=(), geolocation=()",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cross-origin-opener-policy": b"same-origin",
}


@dataclass(frozen=True)
class StaticFile:
    """One file served from memory, with its validator and headers."""

    body: bytes
    headers: dict[bytes, bytes]

    @property
    def etag(self) -> bytes:
        """A strong validator: a hash of the content."""
        return self.headers[b"etag"]

    @classmethod
    def load(cls, directory: str, name: str, content_type: str,
             extra_headers: dict[bytes, bytes]) -> "StaticFile":
        """Read ``signaling/<directory>/<name>`` from the installed package."""
        body = resources.files(__package__).joinpath(directory, name).read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'
        headers = {b"content-type": content_type.encode("ascii"), b"etag": etag}
        headers.update(_COMMON_HEADERS)
        headers.update(extra_headers)
        return cls(body, headers)

    def render(self, request: Request) -> bytes:
        """Answer ``request`` with this file, or 304 when its copy is current."""
        for name, value in self.headers.items():
            request.setHeader(name, value)
        if _matches(request.getHeader(b"if-none-match"), self.etag):
            request.setResponseCode(304)
            return b""
        return self.body


def _matches(if_none_match: bytes | None, etag: bytes) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, RFC 9110)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(b","):
        candidate = candidate.strip()
        if candidate == b"*" or candidate.removeprefix(b"W/") == etag:
            return True
    return False


def _redirect(location: bytes) -> Callable[[Request], bytes]:
    def render(request: Request) -> bytes:
        request.setResponseCode(301)
        request.setHeader(b"location", location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"moved to " + location + b"\n"

    return render


def static_endpoints(demo: bool) -> dict[bytes, Callable[[Request], bytes]]:
    """
    The endpoints serving the library and, when ``demo`` is true, the demo
    page (``/demo`` redirects to ``/demo/``). Raises if a file is missing from
    the installed package.
    """
    endpoints: dict[bytes, Callable[[Request], bytes]] = {}
    files = [(CLIENT_FILES, _CLIENT_HEADERS)]
    if demo:
        files.append((DEMO_FILES, _DEMO_HEADERS))
        endpoints[b"/demo"] = _redirect(b"/demo/")
    for table, extra in files:
        for path, (directory, name, content_type) in table.items():
            endpoints[path.encode("ascii")] = StaticFile.load(
                directory, name, content_type, extra
            ).render
    return endpoints


def demo_urls(config: Any, ports: list[Any]) -> list[str]:
    """
    Where a browser on this machine finds the demo page: one URL for each
    TCP listener carrying the server (``ports`` as ``service.ports()``
    returns them, in the order the listeners were added).
    """
    schemes: list[str | None] = []
    if config.port is not None:
        schemes.append("https" if config.tls_cert else "http")
    for description in config.listen:
        kind = description.split(":", 1)[0].lower()
        schemes.append({"ssl": "https", "tcp": "http", "tcp6": "http"}.get(kind))
    urls = []
    for scheme, port in zip(schemes, ports):
        host = getattr(port.getHost(), "host", None)
        if scheme is None or host is None:
            continue
        if host in ("0.0.0.0", "::", ""):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        urls.append(f"{scheme}://{host}:{port.getHost().port}/demo/")
    return urls
