"""
The offline store seen from the protocol (PROTOCOL section 5): messages for
peers that are not connected are stored, with ``peer-offline`` to the
sender; stored messages are delivered after ``registered``, as fast as the
recipient reads them (:class:`Backlog`); ``ack`` removes them in ack mode.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from .. import messages as m
from ..config import MAX_MESSAGE_ID_LENGTH
from ..maybe import then
from ..message_ids import new_message_id
from ..messages import ProtocolError
from ..session import Session
from ..store import QueueFull
from .context import Context

__all__ = ["Backlog", "OfflineHandlers"]

#: Bytes of an ``offline-message`` envelope besides its message id and body.
_DELIVERY_ENVELOPE = 128


class OfflineHandlers:
    """Storing, delivering and acknowledging offline messages."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def handlers(self) -> dict[str, Callable[[Session, dict[str, Any]], Any]]:
        """The control types this family answers."""
        return {"ack": self.ack}

    def route(self, session: Session, to: str, data: bytes, request: dict[str, Any]) -> None:
        """
        Deliver ``data`` (the message as ``to`` receives it) to ``to``, which
        has no session on this server: where it is held, or into the offline
        store (``peer-offline`` to the sender once it is durable,
        ``QUEUE_FULL`` when a limit refuses it). The outcome is answered
        here, when the registry has it: nothing is returned to wait on
        (a cross-node message then costs few callbacks).
        """
        ctx = self._ctx
        client_id = m.client_message_id(request)
        if client_id is not None and len(client_id) > MAX_MESSAGE_ID_LENGTH:
            raise ProtocolError(
                m.INVALID_FIELD,
                f"'messageId' must be at most {MAX_MESSAGE_ID_LENGTH} characters",
            )
        message_id = new_message_id() if client_id is None else client_id
        # Stored messages are delivered inside an envelope: it must fit too.
        ctx.relayed_bytes(data, _DELIVERY_ENVELOPE + 4 * len(message_id))
        # While the registry answers, keep only what a refusal echoes and
        # logs, not the request (it may hold kilobytes of SDP).
        summary = {"type": request["type"], "to": to}
        if client_id is not None:
            summary["messageId"] = client_id
        result = ctx.registry.route(to, message_id, data, session.identity, ctx.clock.seconds())
        result.addCallbacks(
            self._routed, self._refused,
            callbackArgs=(session, to, request["type"], message_id),
            errbackArgs=(session, summary),
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

    def _refused(self, failure: Failure, session: Session, summary: dict[str, Any]) -> None:
        to = summary["to"]
        # A ProtocolError (UNAVAILABLE from a clustered registry) is answered as it is.
        if failure.check(QueueFull):
            failure = Failure(ProtocolError(m.QUEUE_FULL, str(failure.value), peerId=to))
        elif not failure.check(ProtocolError):
            self._ctx.log.failure("offline store failed", failure)
            failure = Failure(ProtocolError(
                m.INTERNAL_ERROR, "the message could not be stored", peerId=to
            ))
        self._ctx.failed(failure, session, summary)

    def deliver(self, session: Session) -> Any:
        """
        Send ``session``'s peer its stored messages, oldest first, as fast as
        it reads them; None when there are none, else a Deferred that fires
        once all are written (or the connection is gone).
        """
        ctx = self._ctx
        return then(ctx.store.pending(session.identity, ctx.clock.seconds()), self._start, session)

    def _start(self, entries: list[Any], session: Session) -> Any:
        if not entries or not session.open:
            return None  # closed while the store answered: the entries stay stored
        return Backlog(self._ctx, session, entries).start()

    def ack(self, session: Session, message: dict[str, Any]) -> Any:
        """Forget acknowledged messages (ack mode)."""
        if not session.registered:
            raise ProtocolError(m.REGISTRATION_REQUIRED, "register before acknowledging")
        ids = message.get("messageIds")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError(m.INVALID_FIELD, "'messageIds' must be a list of strings")
        return self._ctx.store.remove(session.identity, ids)


class Backlog:
    """
    The stored messages of one peer on their way to it, with flow control:
    they are written while the connection takes them, then the delivery
    waits until the connection's buffer has drained. Without ack mode an
    entry is removed from the store only once its bytes have left that
    buffer; a connection lost midway keeps the rest (and those not yet
    drained) stored. Our own backlog never counts against the client as a
    slow consumer: nothing is written while the buffer is full.
    """

    def __init__(self, ctx: Context, session: Session, entries: list[Any]) -> None:
        self._ctx = ctx
        self._session = session
        self._entries = deque(entries)
        self._written: list[str] = []
        self._done: Deferred = Deferred()
        self._delivered_at = ctx.now_ms()

    def start(self) -> Deferred:
        """Begin; the Deferred fires with None once every entry is written or the connection is gone."""
        self._pump()
        return self._done

    def _pump(self) -> None:
        session = self._session
        conn = session.conn
        entries = self._entries
        while entries and session.open and conn.writable():
            entry = entries.popleft()
            session.send(m.offline_delivery(
                entry.message_id, entry.body, int(entry.stored_at * 1000), self._delivered_at
            ))
            self._written.append(entry.message_id)
        if not session.open:
            self._done.callback(None)
        else:
            conn.when_drained(self._drained)

    def _drained(self) -> None:
        session = self._session
        if not session.open:
            self._done.callback(None)
            return
        written, self._written = self._written, []
        if written and not session.ack_mode:
            self._ctx.store.remove(session.identity, written)
        if self._entries:
            self._pump()
        else:
            self._done.callback(None)
