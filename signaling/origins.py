"""
The WebSocket ``Origin`` allow-list checked at the handshake.

Patterns are origins (``scheme://host[:port]``) or wildcard subdomain
patterns (``https://*.example.com``). Schemes and hosts compare
case-insensitively and default ports (80 for http/ws, 443 for https/wss) are
normalised away, so ``HTTPS://App.Example.com:443`` equals
``https://app.example.com``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["OriginPolicy", "normalize_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_ORIGIN = re.compile(
    r"""
    (?P<scheme>[a-z][a-z0-9+.\-]*)://
    (?P<host>\[[0-9a-f:.]+\]|[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)*)
    (?::(?P<port>[0-9]{1,5}))?
    """,
    re.VERBOSE | re.ASCII,
)


class _Origin(NamedTuple):
    scheme: str
    host: str
    port: int | None


def _parse(text: str) -> _Origin | None:
    match = _ORIGIN.fullmatch(text.lower())
    if match is None:
        return None
    scheme = match["scheme"]
    port = None if match["port"] is None else int(match["port"])
    if port is not None and not 0 < port < 65536:
        return None
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    return _Origin(scheme, match["host"], port)


def _format(origin: _Origin) -> str:
    port = "" if origin.port is None else f":{origin.port}"
    return f"{origin.scheme}://{origin.host}{port}"


def normalize_origin(text: str) -> str | None:
    """
    The canonical form of an origin (lower case, no default port), or
    ``None`` when ``text`` is not a ``scheme://host[:port]`` origin.
    """
    origin = _parse(text)
    return None if origin is None else _format(origin)


class OriginPolicy:
    """
    Decides whether a handshake's ``Origin`` header is allowed.

    An empty pattern list (or the single pattern ``*``) allows every origin.
    Otherwise only the listed origins are allowed and the literal ``null``
    origin (sandboxed frames, ``file:`` pages) is refused. A handshake
    without an ``Origin`` header comes from a non-browser client, which can
    send any header it likes anyway, and is always allowed.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        """
        :raises ValueError: a pattern is not an origin or wildcard pattern;
            the message names it.
        """
        self._any = False
        self._exact: set[_Origin] = set()
        self._wildcards: set[_Origin] = set()
        self.patterns = tuple(patterns)
        for pattern in self.patterns:
            self._add(pattern)
        if not self.patterns:
            self._any = True

    def _add(self, pattern: str) -> None:
        if not isinstance(pattern, str):
            raise ValueError(f"origin pattern must be a string, not {pattern!r}")
        if pattern.strip() == "*":
            self._any = True
            return
        wildcard = False
        text = pattern.strip()
        scheme, sep, rest = text.partition("://")
        if sep and rest.startswith("*."):
            wildcard = True
            text = f"{scheme}://{rest[2:]}"
        origin = _parse(text)
        if origin is None or "*" in text:
            raise ValueError(
                f"invalid origin pattern {pattern!r}: expected scheme://host[:port] "
                "or scheme://*.domain[:port], with no path"
            )
        if wildcard and origin.host.startswith("["):
            raise ValueError(
                f"invalid origin pattern {pattern!r}: wildcards need a domain name"
            )
        (self._wildcards if wildcard else self._exact).add(origin)

    @property
    def allows_any(self) -> bool:
        """Whether every origin is allowed (no allow-list in force)."""
        return self._any

    def allows(self, origin_header: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header may proceed."""
        if origin_header is None or self._any:
            return True
        origin = _parse(origin_header.strip())
        if origin is None:
            return False
        if origin in self._exact:
            return True
        return any(
            origin.scheme == pattern.scheme
            and origin.port == pattern.port
            and origin.host.endswith("." + pattern.host)
            for pattern in self._wildcards
        )

    def __repr__(self) -> str:
        return f"OriginPolicy({list(self.patterns)!r})"
