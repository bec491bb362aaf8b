"""
What a node hears from the cluster: :class:`INodeListener` (implemented by
the hub) and :class:`NodeSubscriber`, which turns channel messages into
calls on it.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import Interface

from . import envelope

__all__ = ["INodeListener", "NodeSubscriber", "text"]

_log = Logger()


def text(value: bytes) -> str:
    """An id, room or node name back from Redis (written by :func:`raw`)."""
    return value.decode("utf-8", "surrogatepass")


def raw(value: str) -> bytes:
    """The bytes Redis keeps for a name; any str round-trips through :func:`text`."""
    return value.encode("utf-8", "surrogatepass")


class INodeListener(Interface):
    """
    The calls a node receives from the cluster. Every call comes from the
    reactor thread; none returns anything. Events a node published itself
    (same ``origin``) are not passed on: the node delivered them locally
    already.
    """

    def deliver(to, data):
        """
        Send ``data`` (bytes, exactly as the client receives it) to the local
        connection bound to id ``to``. If no local connection holds ``to``
        any more (it just left), the listener may route the data again (it
        is then stored offline) or drop it.
        """

    def kick(identity, conn):
        """
        Another node took ``identity`` over: close the local connection with
        connection id ``conn`` (a str) with 4001 if it still holds
        ``identity``; announce nothing (no offline presence, no user-left).
        """

    def presence(data, origin, exclude_id):
        """
        Send ``data`` (a peer-status message) to every local registered peer
        except ``exclude_id``. ``origin`` is the node that published it.
        """

    def room_event(room, data, origin, exclude_id):
        """
        Send ``data`` (user-joined, user-left or a relayed room message) to
        every local member of ``room`` except ``exclude_id``.
        """

    def backend_lost():
        """
        Redis cannot be reached: answer ``UNAVAILABLE`` to anything that needs
        it and report not-ready, until :meth:`backend_restored`.
        """

    def backend_restored():
        """
        Redis is reachable again, and this node's entries in it may be gone
        (Redis restarted, or the node was reaped after a long stall):
        re-claim every local id (``reclaim=True``), register and join again
        (without announcing), and accept global operations again. Also
        called once when the node first becomes available.
        """


class NodeSubscriber:
    """
    Decodes the messages of this node's channels (see
    :mod:`signaling.cluster.envelope`) into calls on an
    :class:`INodeListener`. Call it with ``(channel, payload)``; malformed
    messages are logged and dropped.
    """

    def __init__(self, node_id: str, prefix: str, listener: Any) -> None:
        self.listener = listener
        self.node_channel = raw(f"{prefix}node:{node_id}")
        self.presence_channel = raw(f"{prefix}presence")
        self._room_prefix = raw(f"{prefix}room:")
        self._node = raw(node_id)

    def room_channel(self, room: str) -> bytes:
        """The channel of ``room``'s events and relays."""
        return self._room_prefix + raw(room)

    def __call__(self, channel: bytes, payload: bytes) -> None:
        try:
            self._dispatch(channel, payload)
        except envelope.EnvelopeError as e:
            _log.warn(
                "dropped a malformed message on Redis channel {channel!r}: {error}",
                channel=channel,
                error=str(e),
            )

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        kind = payload[0] if payload else None
        if kind == envelope.DELIVER:
            deliver = self.listener.deliver
            for to, data in envelope.deliveries(payload):
                deliver(text(to), data)
        elif kind == envelope.PRESENCE:
            origin, exclude, data = envelope.split_fields(payload, 2)
            if origin != self._node:
                self.listener.presence(data, text(origin), text(exclude))
        elif kind == envelope.ROOM:
            if not channel.startswith(self._room_prefix):
                raise envelope.EnvelopeError("room event outside a room channel")
            origin, exclude, data = envelope.split_fields(payload, 2)
            if origin != self._node:
                room = text(channel[len(self._room_prefix):])
                self.listener.room_event(room, data, text(origin), text(exclude))
        elif kind == envelope.KICK:
            identity, conn = envelope.split_fields(payload, 1)
            self.listener.kick(text(identity), text(conn))
        else:
            raise envelope.EnvelopeError("unknown envelope kind")
