"""
What every handler family shares: the settings, the clock, the registry, the
offline store, the token rules, the events sink, and the one way to answer a
client (:meth:`Context.reply`, :meth:`Context.refuse`, :meth:`Context.failed`).
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import messages as m
from ..auth import Authorizer
from ..config import ERROR_LOG_BURST, ERROR_LOG_RATE, Config
from ..events import IServerEvents
from ..limits import TokenBucket
from ..logs import log_event, payload_for_log
from ..maybe import is_deferred, then
from ..messages import ProtocolError, encode, error_message
from ..registry import IRegistry
from ..session import Session
from ..store import IOfflineStore

__all__ = ["Context"]

#: Every protocol event is logged under the namespace ``signaling.hub``.
_log = Logger(namespace="signaling.hub")


class Context:
    """The services handlers use; built once by the hub."""

    def __init__(
        self,
        config: Config,
        clock: Any,
        registry: IRegistry,
        store: IOfflineStore,
        authorizer: Authorizer,
        events: IServerEvents,
    ) -> None:
        self.log = _log
        self.config = config
        self.clock = clock
        self.registry = registry
        self.store = store
        self.authorizer = authorizer
        self.events = events
        #: messages relayed to a recipient since start
        self.forwarded = 0
        #: messages stored for an offline recipient since start
        self.offline_queued = 0

    def now_ms(self) -> int:
        """The clock's time in integer milliseconds (the protocol's unit)."""
        return int(self.clock.seconds() * 1000)

    def reply(self, session: Session, message: dict[str, Any]) -> None:
        """Send ``message`` (a dict) to ``session``."""
        session.send(encode(message))

    def relayed_bytes(self, data: bytes, extra: int = 0) -> bytes:
        """
        ``data``, an encoded message to relay, if the server may send it
        (with ``extra`` bytes of envelope around it).

        :raises ProtocolError: ``INVALID_MESSAGE`` when it would be larger than
            the server sends.
        """
        if len(data) + extra > self.config.max_outgoing_size:
            raise ProtocolError(
                m.INVALID_MESSAGE,
                f"message too large to deliver ({len(data) + extra} bytes with the server's"
                f" fields, at most {self.config.max_outgoing_size})",
            )
        return data

    def refuse(
        self, session: Session, error: ProtocolError, request: dict[str, Any] | None = None
    ) -> None:
        """Answer ``session`` with the error message for ``error`` (and log it)."""
        self.events.error(error.code)
        # Refused floods are counted, not logged line by line: the log must
        # not grow at the rate an abuser sends.
        if error.code != m.RATE_LIMITED and self._may_log_error(session):
            log_event(
                self.log, "error", peer=session.address, code=error.code, reason=error.text,
                request=None if request is None
                else payload_for_log(request, self.config.log_payloads),
            )
        session.send(
            encode(error_message(error.code, error.text, self.now_ms(), request, **error.extra))
        )

    def failed(self, failure: Failure, session: Session, request: dict[str, Any]) -> None:
        """
        Answer ``request`` of ``session``, which failed: with its error, or
        with ``INTERNAL_ERROR`` for a bug (logged); nothing when it was
        refused after the client left.
        """
        error = failure.value
        if not isinstance(error, ProtocolError):
            # A bug costs one request, never the connection or the server.
            self.log.failure(
                "unhandled error for message type {type!r}", failure, type=request.get("type")
            )
            error = ProtocolError(m.INTERNAL_ERROR, "the server could not handle this message")
        elif not session.open:
            return
        self.refuse(session, error, request)

    def _may_log_error(self, session: Session) -> bool:
        """
        Whether this error of ``session`` is logged: a connection may log
        :data:`ERROR_LOG_BURST` errors at once and :data:`ERROR_LOG_RATE` a
        second after that; the first one it may not log says so.
        """
        budget = session.error_log
        if budget is None:
            budget = session.error_log = TokenBucket(ERROR_LOG_RATE, ERROR_LOG_BURST, self.clock)
        if budget.take() == 0.0:
            session.error_log_muted = False
            return True
        if not session.error_log_muted:
            session.error_log_muted = True
            log_event(self.log, "limit", peer=session.address, limit="error_log")
        return False

    def leave_rooms_not_granted(self, session: Session) -> Any:
        """
        After a takeover: leave the rooms the id was in that ``session``'s
        token does not allow, telling their members (a takeover never
        carries an id into a room its token could not join).
        """
        grant = session.grant
        if grant is None:
            return None
        barred = [room_id for room_id in session.rooms if not grant.allows_room(room_id)]
        results = [then(self.registry.leave(session, room_id), self._left_barred,
                        session, room_id) for room_id in barred]
        pending = [result for result in results if is_deferred(result)]
        return gatherResults(pending, consumeErrors=True) if pending else None

    def _left_barred(self, _: Any, session: Session, room_id: str) -> None:
        self.announce_left(session, session.identity, [room_id])

    def announce_left(self, session: Session, identity: str | None,
                      room_ids: Iterable[str]) -> None:
        """Tell the members of each room that ``identity`` (of ``session``) left it."""
        for room_id in room_ids:
            log_event(self.log, "leave", peer=session.address, identity=identity, room=room_id)
            self.registry.send_room(
                room_id, encode({"type": "user-left", "userId": identity, "roomId": room_id}), None
            )

    def relayed(self, type_: str, count: int) -> None:
        """Count ``count`` deliveries of a relayed message."""
        self.forwarded += count
        self.events.message_relayed(type_, count)
