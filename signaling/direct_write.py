"""
Writing to a socket at once, past Twisted's write buffer, when nothing waits
in it.

Twisted's ``transport.write`` always buffers and sends on the reactor's next
turn, after asking epoll to watch the socket for room (two ``epoll_ctl``
calls and one more poll for every write). A server that writes once per
turn to each connection saves those by sending at once; whatever the socket
does not take goes through Twisted's buffer, in order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

__all__ = ["direct_transport", "write_now"]


def direct_transport(transport: Any) -> tcp.Connection | None:
    """``transport`` if :func:`write_now` may write to its socket (plain TCP or UNIX), else None."""
    if (isinstance(transport, tcp.Connection) and not transport.TLS
            and hasattr(transport, "_tempDataLen")):
        return transport
    return None


def write_now(connection: tcp.Connection, data: bytes) -> None:
    """Write ``data`` to ``connection`` (from :func:`direct_transport`): at once if it can."""
    if (not connection._tempDataLen
            and connection.offset == len(connection.dataBuffer)
            and not connection.disconnecting):
        try:
            sent = connection.socket.send(data)
        except OSError:  # full, or broken: Twisted's write path finds out
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    connection.write(data)
