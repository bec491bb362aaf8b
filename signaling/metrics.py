"""
Prometheus metrics for one server instance.

Every :class:`Metrics` owns its own ``CollectorRegistry``, so two services
embedded in one process never clash and the global registry is never
touched. The recording methods sit on the hot path: the per-message counters and the
latency histogram are plain integers in dicts (no lock: the reactor thread is
the only writer), turned into metric families by :class:`_HotCollector` at
scrape time; the rare counters are ordinary ``prometheus_client`` counters.

Label values are bounded: client-chosen message types outside
:data:`KNOWN_MESSAGE_TYPES`, unknown error codes and unknown refusal reasons
are all counted as ``"other"``. The types and codes come from the one table
in :mod:`signaling.messages`.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from twisted.logger import Logger
from twisted.web.resource import Resource
from zope.interface import implementer

from . import __version__, messages
from .events import IServerEvents

__all__ = [
    "KNOWN_MESSAGE_TYPES",
    "KNOWN_ERROR_CODES",
    "REFUSAL_REASONS",
    "RELAY_LATENCY_BUCKETS",
    "Metrics",
    "MetricsResource",
]

#: Message types that get their own ``type`` label value; the rest is "other".
KNOWN_MESSAGE_TYPES = messages.RELAYED_TYPES | messages.CONTROL_TYPES

#: Error codes that get their own ``code`` label value; the rest is "other".
KNOWN_ERROR_CODES = messages.ERROR_CODES

#: Reasons a connection is refused before it is a WebSocket (at accept, at
#: the handshake, or for its HTTP request); the rest is "other".
REFUSAL_REASONS = frozenset(
    {"max_connections", "per_ip", "origin", "auth", "handshake_timeout",
     "head_too_large", "body_too_large", "body_timeout"}
)

#: Relay latency buckets in seconds, from 50 microseconds to one second.
RELAY_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

OTHER = "other"
NAMESPACE = "signaling"

#: Live gauges read at scrape time: name -> (key in the server's stats, help text).
_LIVE_GAUGES = {
    "connections": ("connections", "Open WebSocket connections now, registered or not."),
    "sockets": (
        "sockets",
        "Open connections now, WebSocket, HTTP or neither yet: what --max-connections counts.",
    ),
    "rooms": ("rooms", "Rooms that exist now."),
    "peers": ("peers", "Registered peers now."),
    "offline_messages": ("offlineStored", "Messages in the offline store now."),
    "offline_bytes": ("offlineBytes", "Bytes of message data in the offline store now."),
    "offline_quarantined": (
        "offlineQuarantined",
        "Rows of the offline store set aside at start because they could not be read.",
    ),
}

_log = Logger()


def _children(metric, label: str, values: Iterable[str]) -> dict:
    """Bind one label child per value, plus the ``other`` child."""
    bound = {value: metric.labels(**{label: value}) for value in values}
    bound[OTHER] = metric.labels(**{label: OTHER})
    return bound


class _LiveCollector:
    """
    Reads the gauges from the server's stats (a callable returning a dict),
    once per scrape. Stats that cannot be read are logged and the gauges
    left out of that scrape, so a broken source never fails the whole scrape.
    """

    def __init__(self) -> None:
        self.stats: Callable[[], Mapping[str, Any]] | None = None

    def describe(self) -> list[Metric]:
        """Name the families this collector may yield (for clash checks)."""
        families: list[Metric] = [
            GaugeMetricFamily(f"{NAMESPACE}_{name}", text)
            for name, (_, text) in _LIVE_GAUGES.items()
        ]
        families.append(InfoMetricFamily(f"{NAMESPACE}_build", "Server version."))
        return families

    def collect(self) -> Iterable[Metric]:
        """Yield the build info and one gauge per stat present."""
        yield InfoMetricFamily(
            f"{NAMESPACE}_build", "Server version.", value={"version": __version__}
        )
        if self.stats is None:
            return
        try:
            stats = self.stats()
        except Exception:
            _log.failure("metrics gauges could not be read")
            return
        for name, (key, text) in _LIVE_GAUGES.items():
            if key in stats:
                yield GaugeMetricFamily(f"{NAMESPACE}_{name}", text, value=float(stats[key]))


class _HotCollector:
    """
    The per-message counters and the relay latency histogram as plain
    numbers, exported under the same names a ``prometheus_client`` counter
    and histogram would use.
    """

    def __init__(self) -> None:
        known = sorted(KNOWN_MESSAGE_TYPES) + [OTHER]
        self.received: dict[str, int] = dict.fromkeys(known, 0)
        self.relayed: dict[str, int] = dict.fromkeys(known, 0)
        #: observations per bucket (not cumulative); the last one is +Inf
        self.buckets = [0] * (len(RELAY_LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def describe(self) -> list[Metric]:
        """Name the families this collector yields (for clash checks)."""
        return list(self.collect())

    def collect(self) -> Iterable[Metric]:
        """Yield the counters and the histogram as they are now."""
        for name, text, values in (
            ("messages_received", "Messages received from clients, by type.", self.received),
            (
                "messages_relayed",
                "Messages delivered to a recipient (one per delivery), by type.",
                self.relayed,
            ),
        ):
            family = CounterMetricFamily(f"{NAMESPACE}_{name}", text, labels=["type"])
            for label, count in list(values.items()):
                family.add_metric([label], count)
            yield family
        cumulative = []
        total = 0
        for bound, count in zip(RELAY_LATENCY_BUCKETS + (float("inf"),), self.buckets):
            total += count
            cumulative.append((_bucket_label(bound), total))
        yield HistogramMetricFamily(
            f"{NAMESPACE}_relay_latency_seconds",
            "Time from receiving a message to writing it to its recipients.",
            buckets=cumulative,
            sum_value=self.latency_sum,
        )


def _bucket_label(bound: float) -> str:
    """The ``le`` label ``prometheus_client`` gives a bucket bound."""
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


class _WithoutCreated:
    """
    A view of a registry without the ``*_created`` samples of counters and
    histograms: they double the series count and say nothing a restart
    counter reset does not, and switching them off globally would touch
    process-wide state.
    """

    _TYPES = frozenset({"counter", "histogram", "summary"})

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        """Yield the registry's families, filtered."""
        for family in self._registry.collect():
            if family.type in self._TYPES:
                family.samples = [
                    s for s in family.samples if not s.name.endswith("_created")
                ]
            yield family


@implementer(IServerEvents)
class Metrics:
    """
    The counters, histogram and live gauges of one server.

    :ivar registry: this instance's own ``CollectorRegistry``.
    """

    def __init__(self, process: bool = True) -> None:
        """
        :param process: also export ``process_*`` metrics (CPU, memory, open
            file descriptors) of this process in this registry.
        """
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._opened = Counter(
            "connections_opened",
            "WebSocket connections accepted since start.",
            namespace=NAMESPACE,
            registry=reg,
        )
        self._closed = Counter(
            "connections_closed",
            "WebSocket connections closed since start, for any reason.",
            namespace=NAMESPACE,
            registry=reg,
        )
        refused = Counter(
            "connections_refused",
            "Connections refused before they were WebSocket connections, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=reg,
        )
        errors = Counter(
            "errors",
            "Error messages sent to clients, by code.",
            ["code"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self._heartbeat_drops = Counter(
            "heartbeat_drops",
            "Connections dropped for missing the heartbeat.",
            namespace=NAMESPACE,
            registry=reg,
        )
        self._offline_queued = Counter(
            "offline_queued",
            "Messages stored for an offline recipient since start.",
            namespace=NAMESPACE,
            registry=reg,
        )
        self._hot = _HotCollector()
        reg.register(self._hot)
        self._received = self._hot.received
        self._relayed = self._hot.relayed
        self._buckets = self._hot.buckets
        self._refused = _children(refused, "reason", REFUSAL_REASONS)
        self._errors = _children(errors, "code", KNOWN_ERROR_CODES)
        self._refused_other = self._refused[OTHER]
        self._errors_other = self._errors[OTHER]
        self._live = _LiveCollector()
        reg.register(self._live)
        self._view = _WithoutCreated(reg)
        if process:
            ProcessCollector(registry=reg)

    def connection_opened(self) -> None:
        """Count one accepted WebSocket connection."""
        self._opened.inc()

    def connection_closed(self) -> None:
        """Count one closed WebSocket connection."""
        self._closed.inc()

    def connection_refused(self, reason: str) -> None:
        """Count one refused connection; see :data:`REFUSAL_REASONS`."""
        self._refused.get(reason, self._refused_other).inc()

    def message_received(self, type: str) -> None:
        """Count one message received from a client."""
        received = self._received
        if type in received:
            received[type] += 1
        else:
            received[OTHER] += 1

    def message_relayed(self, type: str, count: int = 1) -> None:
        """Count ``count`` deliveries of one message to recipients."""
        relayed = self._relayed
        if type in relayed:
            relayed[type] += count
        else:
            relayed[OTHER] += count

    def error(self, code: str) -> None:
        """Count one error message sent to a client."""
        self._errors.get(code, self._errors_other).inc()

    def heartbeat_drop(self) -> None:
        """Count one connection dropped for missing the heartbeat."""
        self._heartbeat_drops.inc()

    def offline_queued(self) -> None:
        """Count one message stored for an offline recipient."""
        self._offline_queued.inc()

    def observe_relay_latency(self, seconds: float) -> None:
        """Record the time one message took from receipt to delivery."""
        self._buckets[bisect_left(RELAY_LATENCY_BUCKETS, seconds)] += 1
        self._hot.latency_sum += seconds

    def bind_stats(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """
        Give the live gauges their source: ``stats()`` returns the server's
        counters (``connections``, ``rooms``, ``peers``, ``offlineStored``,
        ``offlineBytes``) and the open sockets (``sockets``), read once per
        scrape; a gauge whose key is absent is not exported.
        """
        self._live.stats = stats

    def render(self) -> tuple[bytes, str]:
        """All metrics in the Prometheus text format, with its content type."""
        return generate_latest(self._view), CONTENT_TYPE_LATEST  # type: ignore[arg-type]


class MetricsResource(Resource):
    """``GET /metrics``: the Prometheus text exposition of one :class:`Metrics`."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request) -> bytes:
        """Serve :meth:`Metrics.render`, never cached."""
        body, content_type = self.metrics.render()
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body
