"""Tests for signaling.ice: TURN REST credentials and the ICE document."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from credentials import turn_password
from signaling.ice import ice_servers_document, turn_credentials, validate_ice_url

SECRET = "north-wind-turn-secret"
NOW = 1_700_000_000.7


class TurnCredentialsTests(SynchronousTestCase):
    """The TURN REST API credential scheme."""

    def test_known_vector(self):
        username, password = turn_credentials(SECRET, "alice", NOW, 3600)
        self.assertEqual(username, "1700003600:alice")
        self.assertEqual(password, turn_password(SECRET, "1700003600:alice"))

    def test_fixed_vector(self):
        """A constant computed once with openssl dgst -sha1 -hmac, guarding the encoding."""
        username, password = turn_credentials(b"secret", "u", 0, 86400)
        self.assertEqual(username, "86400:u")
        self.assertEqual(password, "FTF+ePKZWEFvMpXACzDMDSJWgiw=")

    def test_password_depends_on_secret_user_and_time(self):
        base = turn_credentials(SECRET, "alice", NOW, 60)
        self.assertNotEqual(base, turn_credentials("other", "alice", NOW, 60))
        self.assertNotEqual(base, turn_credentials(SECRET, "bob", NOW, 60))
        self.assertNotEqual(base, turn_credentials(SECRET, "alice", NOW + 1, 60))

    def test_anonymous(self):
        username, password = turn_credentials(SECRET, None, 100, 50)
        self.assertEqual(username, "150")
        self.assertEqual(password, turn_password(SECRET, "150"))

    def test_unicode_user(self):
        username, password = turn_credentials(SECRET, "zoë", 0, 1)
        self.assertEqual(username, "1:zoë")
        self.assertEqual(password, turn_password(SECRET, "1:zoë"))

    def test_invalid(self):
        self.assertRaises(ValueError, turn_credentials, SECRET, "a", NOW, 0)
        self.assertRaises(ValueError, turn_credentials, "", "a", NOW, 60)


class DocumentTests(SynchronousTestCase):
    """The body of GET /ice-servers."""

    def test_full(self):
        document = ice_servers_document(
            ["stun:stun.example.com:3478"],
            ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"],
            SECRET,
            600,
            "alice",
            NOW,
        )
        self.assertEqual(
            document,
            {
                "iceServers": [
                    {"urls": ["stun:stun.example.com:3478"]},
                    {
                        "urls": [
                            "turn:turn.example.com:3478?transport=udp",
                            "turns:turn.example.com:5349",
                        ],
                        "username": "1700000600:alice",
                        "credential": turn_password(SECRET, "1700000600:alice"),
                    },
                ],
                "ttl": 600,
            },
        )
        json.dumps(document)

    def test_stun_only(self):
        document = ice_servers_document(["stun:s.test"], [], None, 60, None, NOW)
        self.assertEqual(document, {"iceServers": [{"urls": ["stun:s.test"]}], "ttl": 60})

    def test_nothing(self):
        self.assertEqual(
            ice_servers_document([], [], None, 60, "a", NOW), {"iceServers": [], "ttl": 60}
        )

    def test_turn_without_secret(self):
        with self.assertRaises(ValueError) as caught:
            ice_servers_document([], ["turn:t.test"], None, 60, "a", NOW)
        self.assertIn("secret", str(caught.exception))

    def test_invalid_url(self):
        with self.assertRaises(ValueError) as caught:
            ice_servers_document(["http://stun.test"], [], None, 60, "a", NOW)
        self.assertIn("http://stun.test", str(caught.exception))


class UrlTests(SynchronousTestCase):
    """ICE URL validation for configuration."""

    def test_valid(self):
        for url in ("stun:a.test", "stuns:a.test:5349", "turn:[::1]:3478", "turns:a?transport=tcp"):
            self.assertEqual(validate_ice_url(url), url)

    def test_invalid(self):
        for url in ("", "stun:", "a.test", "https://a.test", "turn: a", None):
            self.assertRaises(ValueError, validate_ice_url, url)
