"""
What the hub reports as it works, for metrics: an interface, so the hub
imports no metrics library (:class:`signaling.metrics.Metrics` implements it).
"""

from __future__ import annotations

from zope.interface import Interface, implementer

__all__ = ["IServerEvents", "NoEvents"]


class IServerEvents(Interface):
    """Counters and timings the hub and the WebSocket layer report."""

    def connection_opened():
        """A WebSocket connection opened."""

    def connection_closed():
        """A WebSocket connection closed, for any reason."""

    def connection_refused(reason):
        """A connection was refused before it was a WebSocket (``reason``: a short name)."""

    def message_received(type):
        """A message of ``type`` arrived from a client."""

    def message_relayed(type, count):
        """A message of ``type`` was delivered to ``count`` recipients."""

    def error(code):
        """An error with ``code`` was sent to a client."""

    def heartbeat_drop():
        """A connection was dropped for missing the heartbeat."""

    def offline_queued():
        """A message was stored for an offline recipient."""

    def observe_relay_latency(seconds):
        """A relayed message took ``seconds`` from receipt to delivery."""


@implementer(IServerEvents)
class NoEvents:
    """Reports nothing (a hub without metrics, in tests or embedding)."""

    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def connection_refused(self, reason: str) -> None:
        pass

    def message_received(self, type: str) -> None:
        pass

    def message_relayed(self, type: str, count: int) -> None:
        pass

    def error(self, code: str) -> None:
        pass

    def heartbeat_drop(self) -> None:
        pass

    def offline_queued(self) -> None:
        pass

    def observe_relay_latency(self, seconds: float) -> None:
        pass
