"""X-Forwarded-For is believed only from trusted proxies."""

from twisted.trial import unittest

from signaling.proxies import ProxyPolicy


class ProxyPolicyTests(unittest.SynchronousTestCase):
    def test_no_trusted_proxies_ignores_header(self):
        policy = ProxyPolicy()
        self.assertEqual(policy.client_address("203.0.113.9", "1.2.3.4"), "203.0.113.9")

    def test_untrusted_peer_ignores_header(self):
        policy = ProxyPolicy(["10.0.0.0/8"])
        self.assertEqual(policy.client_address("203.0.113.9", "1.2.3.4"), "203.0.113.9")

    def test_rightmost_untrusted_hop_is_client(self):
        policy = ProxyPolicy(["10.0.0.0/8", "192.0.2.1"])
        self.assertEqual(
            policy.client_address("10.1.1.1", "6.6.6.6, 198.51.100.7, 192.0.2.1, 10.2.2.2"),
            "198.51.100.7",
        )

    def test_garbage_hop_falls_back_to_peer(self):
        policy = ProxyPolicy(["10.0.0.1"])
        self.assertEqual(policy.client_address("10.0.0.1", "not-an-ip"), "10.0.0.1")
        self.assertEqual(policy.client_address("10.0.0.1", "2001:db8::1"), "2001:db8::1")

    def test_bad_entry_refused(self):
        with self.assertRaises(ValueError) as e:
            ProxyPolicy(["example.com"])
        self.assertIn("example.com", str(e.exception))
