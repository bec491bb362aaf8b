"""
What every handler family shares: the settings, the clock, the registry, the
offline store, the token rules, the events sink, and the one way to answer a
client (:meth:`Context.reply`, :meth:`Context.refuse`).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from .. import messages as m
from ..auth import Authorizer
from ..config import Config
from ..events import IServerEvents
from ..logs import log_event, payload_for_log
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

    def refuse(
        self, session: Session, error: ProtocolError, request: dict[str, Any] | None = None
    ) -> None:
        """Answer ``session`` with the error message for ``error`` (and log it)."""
        self.events.error(error.code)
        # Refused floods are counted, not logged line by line: the log must
        # not grow at the rate an abuser sends.
        if error.code != m.RATE_LIMITED:
            log_event(
                self.log, "error", peer=session.address, code=error.code, reason=error.text,
                request=None if request is None
                else payload_for_log(request, self.config.log_payloads),
            )
        session.send(
            encode(error_message(error.code, error.text, self.now_ms(), request, **error.extra))
        )

    def relayed(self, type_: str, count: int) -> None:
        """Count ``count`` deliveries of a relayed message."""
        self.forwarded += count
        self.events.message_relayed(type_, count)
