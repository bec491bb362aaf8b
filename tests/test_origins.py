"""Tests for signaling.origins: the handshake Origin allow-list."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from signaling.origins import OriginPolicy, normalize_origin


class AnyOriginTests(SynchronousTestCase):
    """Without an allow-list every origin passes."""

    def test_empty(self):
        policy = OriginPolicy([])
        self.assertTrue(policy.allows_any)
        for origin in ("https://evil.example", "null", "garbage", None):
            self.assertTrue(policy.allows(origin))

    def test_star(self):
        policy = OriginPolicy(["*"])
        self.assertTrue(policy.allows_any)
        self.assertTrue(policy.allows("https://anything.test"))


class ExactOriginTests(SynchronousTestCase):
    """Exact origins, normalised."""

    def setUp(self):
        self.policy = OriginPolicy(["https://app.example.com", "http://localhost:8080"])

    def test_listed(self):
        self.assertFalse(self.policy.allows_any)
        self.assertTrue(self.policy.allows("https://app.example.com"))
        self.assertTrue(self.policy.allows("http://localhost:8080"))

    def test_case_insensitive(self):
        self.assertTrue(self.policy.allows("HTTPS://App.Example.COM"))

    def test_default_port_normalised(self):
        self.assertTrue(self.policy.allows("https://app.example.com:443"))
        self.assertTrue(OriginPolicy(["https://a.test:443"]).allows("https://a.test"))
        self.assertTrue(OriginPolicy(["http://a.test:80"]).allows("http://a.test"))

    def test_other_port_scheme_or_host_refused(self):
        for origin in (
            "https://app.example.com:8443",
            "http://app.example.com",
            "https://example.com",
            "https://app.example.com.evil.test",
            "https://xapp.example.com",
            "http://localhost",
            "http://localhost:8081",
        ):
            self.assertFalse(self.policy.allows(origin), origin)

    def test_null_refused(self):
        self.assertFalse(self.policy.allows("null"))

    def test_missing_header_allowed(self):
        self.assertTrue(self.policy.allows(None))

    def test_garbage_refused(self):
        for origin in ("", " ", "app.example.com", "https://", "https://app.example.com/x",
                       "https://a b", "https://app.example.com:99999",
                       "https://app.example.com, https://evil.test"):
            self.assertFalse(self.policy.allows(origin), origin)

    def test_ipv6(self):
        policy = OriginPolicy(["http://[::1]:3000"])
        self.assertTrue(policy.allows("http://[::1]:3000"))
        self.assertFalse(policy.allows("http://[::2]:3000"))


class WildcardTests(SynchronousTestCase):
    """``scheme://*.domain`` patterns."""

    def setUp(self):
        self.policy = OriginPolicy(["https://*.example.com"])

    def test_subdomains(self):
        self.assertTrue(self.policy.allows("https://a.example.com"))
        self.assertTrue(self.policy.allows("https://a.b.example.com"))
        self.assertTrue(self.policy.allows("https://A.Example.com:443"))

    def test_refused(self):
        for origin in (
            "https://example.com",
            "https://evil-example.com",
            "https://aexample.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.evil.test",
            "null",
        ):
            self.assertFalse(self.policy.allows(origin), origin)

    def test_wildcard_with_port(self):
        policy = OriginPolicy(["http://*.dev.test:8080"])
        self.assertTrue(policy.allows("http://x.dev.test:8080"))
        self.assertFalse(policy.allows("http://x.dev.test"))

    def test_mixed(self):
        policy = OriginPolicy(["https://example.com", "https://*.example.com"])
        self.assertTrue(policy.allows("https://example.com"))
        self.assertTrue(policy.allows("https://www.example.com"))


class InvalidPatternTests(SynchronousTestCase):
    """Configuration mistakes fail loudly at construction."""

    def test_invalid(self):
        for pattern in (
            "example.com",
            "https://example.com/",
            "https://example.com/path",
            "https://*example.com",
            "https://a.*.example.com",
            "https://*.*.example.com",
            "*.example.com",
            "https://",
            "https://example.com:0",
            "https://example.com:70000",
            "https://*.[::1]",
            "null",
            "",
        ):
            with self.assertRaises(ValueError, msg=pattern) as caught:
                OriginPolicy([pattern])
            self.assertIn(repr(pattern), str(caught.exception))

    def test_not_a_string(self):
        self.assertRaises(ValueError, OriginPolicy, [None])


class NormalizeTests(SynchronousTestCase):
    """The canonical form used for comparisons."""

    def test_normalize(self):
        self.assertEqual(normalize_origin("HTTPS://A.test:443"), "https://a.test")
        self.assertEqual(normalize_origin("wss://a.test:444"), "wss://a.test:444")
        self.assertIsNone(normalize_origin("null"))


class ConfigRefusesTests(SynchronousTestCase):
    """Config refuses bad patterns itself, before any service is built (README: Embedding)."""

    def test_bad_patterns_refused_by_config(self):
        from signaling.config import Config

        for fields, option in (({"allowed_origins": ("https://*",)}, "--allowed-origin"),
                               ({"allowed_origins": ("example.com",)}, "--allowed-origin"),
                               ({"trusted_proxies": ("proxy.example",)}, "--trusted-proxy"),
                               ({"stun_urls": ("http://stun.example",)}, "--stun-url")):
            with self.assertRaises(ValueError) as raised:
                Config(db=":memory:", **fields)
            self.assertIn(option, str(raised.exception), fields)
        Config(db=":memory:", allowed_origins=("https://*.example.com",))
