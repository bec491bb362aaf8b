"""
The binary envelopes of the Redis channels.

Length-prefixed fields (``<byte length>:<bytes>``) after a kind byte; the
payload (the rest of the message, or a field of a delivery) is the exact
bytes a client receives, never decoded or encoded again on the receiving
node. The Lua scripts build the same envelopes (``field`` in ``lib.lua``).

==========  ============================  =====================================
channel     envelope                      meaning
==========  ============================  =====================================
node:{N}    ``D`` (to data)...            deliver each data to the local holder
                                          of its to, in order
node:{N}    ``K`` id conn (rest)          close id's connection conn (takeover)
presence    ``P`` origin exclude data     peer-status for local registered peers
room:{R}    ``R`` origin exclude data     event or relay for local members of R
==========  ============================  =====================================

``origin`` is the publishing node (a node skips its own events: it already
delivered them locally); ``exclude`` is an id that must not get the data
(the one the event is about or the sender of a relay).
"""

from __future__ import annotations

__all__ = [
    "DELIVER", "KICK", "PRESENCE", "ROOM", "EnvelopeError",
    "deliver", "deliveries", "kick", "event", "split_fields",
]

DELIVER = ord("D")
KICK = ord("K")
PRESENCE = ord("P")
ROOM = ord("R")


class EnvelopeError(ValueError):
    """A channel message that is not a well-formed envelope."""


def _field(value: bytes) -> bytes:
    return b"%d:%s" % (len(value), value)


def deliver(*pairs: tuple[bytes, bytes]) -> bytes:
    """The deliveries of each ``(to, data)`` of ``pairs`` (as the ROUTE script publishes them)."""
    return b"D" + b"".join(_field(to) + _field(data) for to, data in pairs)


def deliveries(message: bytes) -> list[tuple[bytes, bytes]]:
    """
    The ``(to, data)`` pairs of a ``D`` envelope, in order.

    :raises EnvelopeError: a field is malformed or a pair incomplete.
    """
    pairs = []
    at = 1
    end = len(message)
    while at < end:
        to, at = _take(message, at)
        if at >= end:
            raise EnvelopeError("delivery without data")
        data, at = _take(message, at)
        pairs.append((to, data))
    return pairs


def _take(message: bytes, at: int) -> tuple[bytes, int]:
    """The length-prefixed field at ``at`` and the offset after it."""
    colon = message.find(b":", at, at + 12)
    if colon < 0:
        raise EnvelopeError("envelope field without a length")
    length = message[at:colon]
    if not length.isdigit():
        raise EnvelopeError("envelope field length is not a number")
    end = colon + 1 + int(length)
    if end > len(message):
        raise EnvelopeError("envelope field is longer than the message")
    return message[colon + 1:end], end


def kick(identity: bytes, conn: bytes) -> bytes:
    """A takeover notice: close ``identity``'s connection ``conn`` (published by CLAIM)."""
    return b"K%d:%s%s" % (len(identity), identity, conn)


def event(kind: bytes, origin: bytes, exclude: bytes, data: bytes) -> bytes:
    """A presence (``b"P"``) or room (``b"R"``) event from node ``origin``."""
    return kind + _field(origin) + _field(exclude) + data


def split_fields(message: bytes, count: int) -> list[bytes]:
    """
    The ``count`` length-prefixed fields after the kind byte, then the rest.

    :raises EnvelopeError: a length is missing, not a number or too long.
    """
    parts = []
    at = 1
    for _ in range(count):
        part, at = _take(message, at)
        parts.append(part)
    parts.append(message[at:])
    return parts
