"""
The offline store seen from the protocol (PROTOCOL section 5): messages for
peers that are not connected are stored, with ``peer-offline`` to the
sender; stored messages are delivered after ``registered``; ``ack``
removes them in ack mode.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from twisted.python.failure import Failure

from .. import messages as m
from ..maybe import then
from ..messages import ProtocolError
from ..session import Session
from ..store import QueueFull
from .context import Context

__all__ = ["OfflineHandlers"]


class OfflineHandlers:
    """Storing, delivering and acknowledging offline messages."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def handlers(self) -> dict[str, Callable[[Session, dict[str, Any]], Any]]:
        """The control types this family answers."""
        return {"ack": self.ack}

    def route(self, session: Session, to: str, out: dict[str, Any],
              request: dict[str, Any]) -> Any:
        """
        Deliver ``out`` to ``to``, which has no session on this server: where
        it is held, or into the offline store (``peer-offline`` to the sender
        once it is durable, ``QUEUE_FULL`` when a limit refuses it).
        """
        ctx = self._ctx
        message_id = m.client_message_id(request) or secrets.token_hex(12)
        result = ctx.registry.route(to, message_id, out, session.identity, ctx.clock.seconds())
        return result.addCallbacks(
            self._routed, self._refused,
            callbackArgs=(session, to, out["type"], message_id),
            errbackArgs=(to,),
        )

    def _routed(self, delivered: bool, session: Session, to: str, type_: str,
                message_id: str) -> None:
        ctx = self._ctx
        if delivered:
            ctx.relayed(type_, 1)
            return
        ctx.offline_queued += 1
        ctx.events.offline_queued()
        ctx.reply(
            session, {"type": "peer-offline", "peerId": to, "messageId": message_id, "queued": True}
        )

    def _refused(self, failure: Failure, to: str) -> Any:
        if failure.check(ProtocolError):
            return failure  # e.g. UNAVAILABLE from a clustered registry
        if failure.check(QueueFull):
            raise ProtocolError(m.QUEUE_FULL, str(failure.value), peerId=to)
        self._ctx.log.failure("offline store failed", failure)
        raise ProtocolError(m.INTERNAL_ERROR, "the message could not be stored", peerId=to)

    def deliver(self, session: Session) -> Any:
        """Send ``session``'s peer its stored messages, oldest first."""
        ctx = self._ctx
        peer_id = session.identity
        return then(ctx.store.pending(peer_id, ctx.clock.seconds()), self._send_pending, session)

    def _send_pending(self, entries: list[Any], session: Session) -> Any:
        if not entries or not session.open:
            return None  # closed while the store answered: the entries stay stored
        delivered_at = self._ctx.now_ms()
        for entry in entries:
            session.send(
                m.offline_delivery(
                    entry.message_id, entry.body, int(entry.stored_at * 1000), delivered_at
                )
            )
        if session.ack_mode:
            return None
        return self._ctx.store.remove(session.identity, [entry.message_id for entry in entries])

    def ack(self, session: Session, message: dict[str, Any]) -> Any:
        """Forget acknowledged messages (ack mode)."""
        if not session.registered:
            raise ProtocolError(m.REGISTRATION_REQUIRED, "register before acknowledging")
        ids = message.get("messageIds")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError(m.INVALID_FIELD, "'messageIds' must be a list of strings")
        return self._ctx.store.remove(session.identity, ids)
