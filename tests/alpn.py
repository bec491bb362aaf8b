"""
Test support: TLS clients that offer ALPN the way browsers and curl do.

Python's ``ssl`` clients offer no ALPN unless told to; browsers offer
``h2`` and ``http/1.1``. These functions block (run them in a thread
with ``threads.deferToThread`` when the server is on this process's reactor).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from typing import Sequence

__all__ = ["ALPN_OFFERS", "tls_exchange", "curl_get", "CURL"]

#: The offers a server must handle: a browser's, HTTP/1.1 only, none at all.
ALPN_OFFERS: dict[str, list[str] | None] = {
    "browser": ["h2", "http/1.1"],
    "http/1.1 only": ["http/1.1"],
    "no ALPN": None,
}

#: The curl binary, if installed.
CURL = shutil.which("curl")


def tls_exchange(port: int, cafile: str, alpn: Sequence[str] | None, data: bytes,
                 until: bytes = b"\n", timeout: float = 10.0) -> tuple[str | None, bytes]:
    """
    Connect to 127.0.0.1:``port`` trusting only ``cafile``, offering ``alpn``
    (None: no ALPN extension at all), send ``data`` and read until ``until``
    has arrived or the server closes (``until=b"\\x00"``: read to the end). Returns (the protocol the server
    selected or None, the bytes read).

    :raises ssl.SSLError: the handshake failed (``.reason`` names the alert).
    """
    context = ssl.create_default_context(cafile=cafile)
    if alpn is not None:
        context.set_alpn_protocols(list(alpn))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            selected = conn.selected_alpn_protocol()
            conn.sendall(data)
            received = b""
            while until not in received:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
            return selected, received


def curl_get(url: str, cafile: str, *options: str, timeout: float = 20.0
             ) -> subprocess.CompletedProcess:
    """Run ``curl`` on ``url`` trusting only ``cafile`` (localhost resolved to 127.0.0.1)."""
    assert CURL is not None
    port = url.split(":")[2].split("/")[0]
    return subprocess.run(
        [CURL, "--silent", "--show-error", "--max-time", str(int(timeout)),
         "--noproxy", "*", "--resolve", f"localhost:{port}:127.0.0.1",
         "--cacert", cafile, *options, url],
        capture_output=True, text=True, timeout=timeout + 5, stdin=subprocess.DEVNULL,
    )
