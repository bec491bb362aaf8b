"""
A ``--redis`` URL as the cluster's connections use it: one parser
(:mod:`signaling.redis_url`, whose refusals ``test_cluster_options`` checks)
and the address built from what it read.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from certs import PKI
from signaling.cluster import RedisAddress, parse_redis_url

VALID = [
    ("redis://localhost", RedisAddress(host="localhost")),
    ("redis://10.0.0.5:6380/2", RedisAddress(host="10.0.0.5", port=6380, db=2)),
    ("redis://[::1]:7000", RedisAddress(host="::1", port=7000)),
    ("redis://:p%40ss@h/1", RedisAddress(host="h", db=1, password="p@ss")),
    ("redis://user:pw@h", RedisAddress(host="h", username="user", password="pw")),
    ("rediss://h", RedisAddress(host="h", tls=True)),
    ("unix:///run/redis.sock", RedisAddress(path="/run/redis.sock")),
    ("unix:///run/redis.sock?db=3", RedisAddress(path="/run/redis.sock", db=3)),
]


class URLTests(SynchronousTestCase):
    def test_valid(self):
        for url, expected in VALID:
            with self.subTest(url=url):
                self.assertEqual(parse_redis_url(url), expected)

    def test_a_ca_file_for_rediss(self):
        root = str(PKI.create().write(os.path.abspath(self.mktemp())).root)
        self.assertEqual(
            parse_redis_url(f"rediss://h:6390/1?ca={root}"),
            RedisAddress(host="h", port=6390, db=1, tls=True, ca_file=root),
        )
        for url, text in (
            (f"redis://h?ca={root}", "rediss://"),
            ("rediss://h?ca=relative.pem", "absolute"),
            ("rediss://h?ca=/nonexistent/ca.pem", "does not exist"),
            ("rediss://h?timeout=3", "?ca="),
            (f"rediss://h?ca={os.path.abspath(__file__)}", "no PEM certificate"),
        ):
            with self.subTest(url=url):
                with self.assertRaises(ValueError) as e:
                    parse_redis_url(url)
                self.assertIn(text, str(e.exception))

    def test_describe_hides_the_password(self):
        address = parse_redis_url("redis://:secret@h:1/2")
        self.assertNotIn("secret", address.describe() + repr(address))
        self.assertEqual(address.describe(), "redis://h:1/2")
        self.assertEqual(parse_redis_url("unix:///s?db=1").describe(), "unix:///s?db=1")

    def test_password_file(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("s3cret\n")
        self.assertEqual(parse_redis_url("redis://h", password_file=path).password, "s3cret")
        self.assertEqual(parse_redis_url("unix:///s", password_file=path).password, "s3cret")
        with self.assertRaises(ValueError) as e:
            parse_redis_url("redis://:pw@h", password_file=path)
        self.assertIn("not both", str(e.exception))
