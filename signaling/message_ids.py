"""
Ids the server makes for messages whose sender gave none.

An id is a random prefix drawn once per process (and again in a forked
child, and after 2**32 ids) followed by a counter: unique across the
processes sharing a store, and cheap, since a clustered node makes one for
every message it routes to another node. Ids need not be secret: a peer
can only acknowledge or see messages stored for itself.
"""

from __future__ import annotations

import os
import secrets

__all__ = ["new_message_id"]

_COUNTER_LIMIT = 1 << 32

_prefix = ""
_count = _COUNTER_LIMIT


def _new_prefix() -> None:
    global _prefix, _count
    _prefix = secrets.token_hex(8)
    _count = 0


def new_message_id() -> str:
    """A new message id: 24 hex digits, never the same twice."""
    global _count
    if _count >= _COUNTER_LIMIT:
        _new_prefix()
    _count += 1
    return "%s%08x" % (_prefix, _count - 1)


os.register_at_fork(after_in_child=_new_prefix)
