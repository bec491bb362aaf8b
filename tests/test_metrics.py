"""Tests for signaling.metrics: values as a scraper reads them."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from helpers import Samples, http_get, parse_metrics, sample
from signaling import __version__
from signaling.metrics import Metrics, MetricsResource


def samples(metrics: Metrics) -> Samples:
    """What a scrape of ``metrics`` would read."""
    body, _ = metrics.render()
    return parse_metrics(body)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample's value; KeyError when it is not exported."""
    return sample(samples(metrics), name, **labels)


class CounterTests(unittest.TestCase):
    """The recording methods move the exported counters."""

    def setUp(self) -> None:
        self.metrics = Metrics(process=False)

    def test_connections(self) -> None:
        m = self.metrics
        m.connection_opened()
        m.connection_opened()
        m.connection_closed()
        self.assertEqual(value(m, "signaling_connections_opened_total"), 2)
        self.assertEqual(value(m, "signaling_connections_closed_total"), 1)

    def test_refusals_by_reason(self) -> None:
        m = self.metrics
        m.connection_refused("per_ip")
        m.connection_refused("per_ip")
        m.connection_refused("origin")
        m.connection_refused("something new")
        name = "signaling_connections_refused_total"
        self.assertEqual(value(m, name, reason="per_ip"), 2)
        self.assertEqual(value(m, name, reason="origin"), 1)
        self.assertEqual(value(m, name, reason="other"), 1)
        self.assertEqual(value(m, name, reason="auth"), 0)
        self.assertNotIn((name, (("reason", "something new"),)), samples(m))

    def test_known_message_types(self) -> None:
        m = self.metrics
        m.message_received("offer")
        m.message_received("ice-candidate")
        m.message_received("ice-candidate")
        m.message_relayed("chat", count=3)
        m.message_relayed("answer")
        self.assertEqual(
            value(m, "signaling_messages_received_total", type="offer"), 1
        )
        self.assertEqual(
            value(m, "signaling_messages_received_total", type="ice-candidate"), 2
        )
        self.assertEqual(value(m, "signaling_messages_relayed_total", type="chat"), 3)
        self.assertEqual(
            value(m, "signaling_messages_relayed_total", type="answer"), 1
        )

    def test_unknown_message_type_is_other(self) -> None:
        m = self.metrics
        for i in range(50):
            m.message_received(f"made-up-{i}")
        m.message_relayed("made-up", count=2)
        found = samples(m)
        self.assertEqual(
            found[("signaling_messages_received_total", (("type", "other"),))], 50
        )
        self.assertEqual(
            found[("signaling_messages_relayed_total", (("type", "other"),))], 2
        )
        types = {
            dict(labels)["type"]
            for name, labels in found
            if name == "signaling_messages_received_total"
        }
        self.assertNotIn("made-up-0", types)
        self.assertLess(len(types), 20)

    def test_errors_by_code(self) -> None:
        m = self.metrics
        m.error("QUEUE_FULL")
        m.error("NOT_A_CODE")
        self.assertEqual(value(m, "signaling_errors_total", code="QUEUE_FULL"), 1)
        self.assertEqual(value(m, "signaling_errors_total", code="other"), 1)

    def test_heartbeat_and_offline(self) -> None:
        m = self.metrics
        m.heartbeat_drop()
        m.offline_queued()
        m.offline_queued()
        self.assertEqual(value(m, "signaling_heartbeat_drops_total"), 1)
        self.assertEqual(value(m, "signaling_offline_queued_total"), 2)

    def test_relay_latency_histogram(self) -> None:
        m = self.metrics
        m.observe_relay_latency(0.00004)
        m.observe_relay_latency(0.002)
        m.observe_relay_latency(3.0)
        name = "signaling_relay_latency_seconds_bucket"
        self.assertEqual(value(m, name, le="5e-05"), 1)
        self.assertEqual(value(m, name, le="0.0025"), 2)
        self.assertEqual(value(m, name, le="1.0"), 2)
        self.assertEqual(value(m, name, le="+Inf"), 3)
        self.assertEqual(value(m, "signaling_relay_latency_seconds_count"), 3)

    def test_no_created_series(self) -> None:
        self.metrics.connection_opened()
        self.assertFalse(
            [name for name, _ in samples(self.metrics) if name.endswith("_created")]
        )

    def test_content_type(self) -> None:
        _, content_type = self.metrics.render()
        self.assertTrue(content_type.startswith("text/plain"))


class IsolationTests(unittest.TestCase):
    """Instances keep to their own registry."""

    def test_two_instances(self) -> None:
        a = Metrics()
        b = Metrics()
        a.connection_opened()
        a.message_received("offer")
        self.assertEqual(value(a, "signaling_connections_opened_total"), 1)
        self.assertEqual(value(b, "signaling_connections_opened_total"), 0)
        self.assertEqual(
            value(b, "signaling_messages_received_total", type="offer"), 0
        )

    def test_global_registry_untouched(self) -> None:
        Metrics().connection_opened()
        self.assertIsNone(REGISTRY.get_sample_value("signaling_connections_opened_total"))

    def test_process_metrics(self) -> None:
        found = samples(Metrics())
        names = {name for name, _ in found}
        self.assertIn(("signaling_build_info", (("version", __version__),)), found)
        # ProcessCollector reads /proc; elsewhere it exports nothing.
        try:
            open("/proc/self/stat").close()
        except OSError:
            raise unittest.SkipTest("no /proc here")
        self.assertIn("process_cpu_seconds_total", names)
        bare = {name for name, _ in samples(Metrics(process=False))}
        self.assertNotIn("process_cpu_seconds_total", bare)


class GaugeTests(unittest.TestCase):
    """Live gauges read the bound callables at each scrape."""

    def test_bound_values(self) -> None:
        m = Metrics(process=False)
        live = {"connections": 3, "rooms": 2, "peers": 1, "offlineStored": 7,
                "offlineBytes": 900, "offlineQuarantined": 2, "forwarded": 5}
        m.bind_stats(lambda: live)
        self.assertEqual(value(m, "signaling_connections"), 3)
        self.assertEqual(value(m, "signaling_rooms"), 2)
        self.assertEqual(value(m, "signaling_peers"), 1)
        self.assertEqual(value(m, "signaling_offline_messages"), 7)
        self.assertEqual(value(m, "signaling_offline_bytes"), 900)
        self.assertEqual(value(m, "signaling_offline_quarantined"), 2)
        live["connections"] = 10
        self.assertEqual(value(m, "signaling_connections"), 10)

    def test_absent_stats_not_exported(self) -> None:
        m = Metrics(process=False)
        m.bind_stats(lambda: {"rooms": 4})
        found = samples(m)
        self.assertNotIn(("signaling_connections", ()), found)
        self.assertEqual(found[("signaling_rooms", ())], 4)

    def test_unbound_not_exported(self) -> None:
        found = samples(Metrics(process=False))
        self.assertNotIn(("signaling_rooms", ()), found)

    def test_failing_stats_skipped(self) -> None:
        m = Metrics(process=False)
        m.bind_stats(lambda: 1 // 0)
        m.message_relayed("offer", 2)
        found = samples(m)
        self.assertNotIn(("signaling_rooms", ()), found)
        self.assertEqual(found[("signaling_messages_relayed_total", (("type", "offer"),))], 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ResourceTests(unittest.TestCase):
    """MetricsResource over a real HTTP request on 127.0.0.1."""

    @defer.inlineCallbacks
    def test_get_metrics(self):
        metrics = Metrics(process=False)
        metrics.bind_stats(lambda: {"connections": 5})
        metrics.message_relayed("offer", count=4)
        root = Resource()
        root.putChild(b"metrics", MetricsResource(metrics))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root))
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        response, body = yield http_get(
            f"http://127.0.0.1:{port.getHost().port}/metrics", agent=Agent(reactor, pool=pool)
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [metrics.render()[1].encode("ascii")],
        )
        parsed = parse_metrics(body)
        self.assertEqual(sample(parsed, "signaling_connections"), 5)
        self.assertEqual(sample(parsed, "signaling_messages_relayed_total", type="offer"), 4)


class DocumentationTests(unittest.TestCase):
    """docs/operations.md lists exactly the metrics the server exports."""

    def test_every_metric_documented(self) -> None:
        import pathlib
        import re

        doc = pathlib.Path(__file__).parent.parent / "docs" / "operations.md"
        documented = set(re.findall(r"\| `(signaling_[a-z_]+)`", doc.read_text("utf-8")))
        metrics = Metrics(process=False)
        metrics.bind_stats(lambda: dict.fromkeys(
            ("connections", "rooms", "peers", "offlineStored", "offlineBytes",
             "offlineQuarantined", "sockets"), 0
        ))
        body, _ = metrics.render()
        exported = set()
        for family in text_string_to_metric_families(body.decode("utf-8")):
            suffix = "_total" if family.type == "counter" else ""
            exported.add(family.name + suffix)
        self.assertEqual(documented, exported)
