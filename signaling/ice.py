"""
ICE server configuration for ``GET /ice-servers`` with TURN REST credentials.

TURN credentials follow the TURN REST API scheme that coturn checks with
``use-auth-secret`` / ``static-auth-secret``: the username is
``"<expiry>:<user id>"`` (expiry in Unix seconds) and the password is
``base64(HMAC-SHA1(secret, username))``. The TURN server recomputes the
password from the username and refuses it after the expiry, so the
signaling server and the TURN server share only the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["IceServers", "ice_servers_document", "turn_credentials", "validate_ice_url"]

_ICE_URL = re.compile(r"(stun|stuns|turn|turns):[^\s]+", re.ASCII)


def validate_ice_url(url: str) -> str:
    """
    Check a ``stun:``, ``stuns:``, ``turn:`` or ``turns:`` URL and return it.

    :raises ValueError: with a message naming the URL.
    """
    if not isinstance(url, str) or not _ICE_URL.fullmatch(url):
        raise ValueError(
            f"invalid ICE server URL {url!r}: expected stun:, stuns:, turn: or turns:"
        )
    return url


def turn_credentials(
    secret: str | bytes, user_id: str | None, now: float, ttl: int
) -> tuple[str, str]:
    """
    Time-limited TURN credentials for ``user_id``, valid for ``ttl`` seconds
    from ``now``.

    :return: ``(username, password)``; the username is ``"<expiry>:<user_id>"``,
        or just ``"<expiry>"`` when ``user_id`` is ``None`` or empty.
    :raises ValueError: ``ttl`` is not positive or the secret is empty.
    """
    if ttl <= 0:
        raise ValueError("the TURN credential ttl must be positive")
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the TURN secret must not be empty")
    expiry = int(now) + int(ttl)
    username = f"{expiry}:{user_id}" if user_id else str(expiry)
    digest = hmac.new(key, username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers_document(
    stun_urls: Sequence[str],
    turn_urls: Sequence[str],
    turn_secret: str | bytes | None,
    ttl: int,
    user_id: str | None,
    now: float,
) -> dict[str, Any]:
    """
    The ``GET /ice-servers`` body, shaped for ``new RTCPeerConnection(...)``:
    ``{"iceServers": [{"urls": [stun...]}, {"urls": [turn...], "username":
    ..., "credential": ...}], "ttl": ttl}``; an entry is left out when it has
    no URLs. (A server builds :class:`IceServers` once instead.)

    :raises ValueError: a URL is invalid, or TURN URLs are given without a
        secret.
    """
    return IceServers(stun_urls, turn_urls, turn_secret, ttl).document(user_id, now)


class IceServers:
    """
    The configured ICE servers, checked once: :meth:`document` builds the
    ``GET /ice-servers`` body for each request.

    :raises ValueError: a URL is invalid, or TURN URLs are given without a
        secret.
    """

    def __init__(self, stun_urls: Sequence[str], turn_urls: Sequence[str],
                 turn_secret: str | bytes | None, ttl: int) -> None:
        for url in (*stun_urls, *turn_urls):
            validate_ice_url(url)
        if turn_urls and not turn_secret:
            raise ValueError("TURN URLs need a TURN shared secret")
        self._stun_urls = tuple(stun_urls)
        self._turn_urls = tuple(turn_urls)
        self._turn_secret = turn_secret
        self._ttl = int(ttl)

    def document(self, user_id: str | None, now: float) -> dict[str, Any]:
        """The body for ``user_id`` (TURN credentials name it) at time ``now``."""
        servers: list[dict[str, Any]] = []
        if self._stun_urls:
            servers.append({"urls": list(self._stun_urls)})
        if self._turn_urls:
            assert self._turn_secret
            username, password = turn_credentials(self._turn_secret, user_id, now, self._ttl)
            servers.append(
                {"urls": list(self._turn_urls), "username": username, "credential": password}
            )
        return {"iceServers": servers, "ttl": self._ttl}
