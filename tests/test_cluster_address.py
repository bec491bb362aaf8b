"""Parsing of --redis URLs and password files."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from signaling.cluster import RedisAddress, RedisURLError, parse_redis_url

VALID = [
    ("redis://localhost", RedisAddress(host="localhost")),
    ("redis://10.0.0.5:6380/2", RedisAddress(host="10.0.0.5", port=6380, db=2)),
    ("redis://[::1]:7000", RedisAddress(host="::1", port=7000)),
    ("redis://:p%40ss@h/1", RedisAddress(host="h", db=1, password="p@ss")),
    ("redis://user:pw@h", RedisAddress(host="h", username="user", password="pw")),
    ("redis://h?db=4", RedisAddress(host="h", db=4)),
    ("rediss://h", RedisAddress(host="h", tls=True)),
    (
        "rediss://h:6390/1?ca=/etc/ca.pem",
        RedisAddress(host="h", port=6390, db=1, tls=True, ca_file="/etc/ca.pem"),
    ),
    ("unix:///run/redis.sock", RedisAddress(path="/run/redis.sock")),
    ("unix:///run/redis.sock?db=3", RedisAddress(path="/run/redis.sock", db=3)),
    ("unix://:pw@/run/redis.sock", RedisAddress(path="/run/redis.sock", password="pw")),
]

INVALID = [
    ("", "empty"),
    ("http://h", "scheme"),
    ("redis://", "no host"),
    ("redis://h:99999", "malformed"),
    ("redis://h/x", "database must be a number"),
    ("redis://h/1?db=2", "given twice"),
    ("redis://h?timeout=3", "unknown option 'timeout'"),
    ("unix://run/redis.sock", "three slashes"),
    ("unix://", "absolute path"),
    ("unix:///s?db=-1", "database must be a number"),
]


class URLTests(SynchronousTestCase):
    def test_valid(self):
        for url, expected in VALID:
            with self.subTest(url=url):
                self.assertEqual(parse_redis_url(url), expected)

    def test_invalid(self):
        for url, text in INVALID:
            with self.subTest(url=url):
                with self.assertRaises(RedisURLError) as e:
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
        with open(path, "w") as f:
            f.write("with spaces \r\n")
        self.assertEqual(parse_redis_url("redis://h", password_file=path).password, "with spaces ")
        for url, content, text in (
            ("redis://:pw@h", "x", "give it once"),
            ("redis://h", "\n", "empty"),
        ):
            with open(path, "w") as f:
                f.write(content)
            with self.assertRaises(RedisURLError) as e:
                parse_redis_url(url, password_file=path)
            self.assertIn(text, str(e.exception))
        with self.assertRaises(RedisURLError) as e:
            parse_redis_url("redis://h", password_file=path + "-missing")
        self.assertIn("cannot read", str(e.exception))
