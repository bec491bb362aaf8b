"""
The cluster-mode options: ``--redis`` URLs, ``--redis-password-file`` and
the other Redis settings, and ``--workers``; from the command line, the
environment and code (``Config``).
"""

import os

from twisted.python import usage
from twisted.trial import unittest

from processes import SystemTempMixin
from signaling.config import Config
from signaling.redis_url import (
    MAX_PASSWORD_BYTES,
    RedisTarget,
    parse_redis_url,
    read_password_file,
    redact_redis_url,
    redis_target,
)
from signaling.tap import Options

SOCKET_URL = "unix:///run/redis/redis.sock"


class RedisUrlTests(unittest.SynchronousTestCase):
    def test_accepted_forms(self):
        cases = {
            "redis://localhost": RedisTarget("redis", "localhost", 6379, None, 0),
            "redis://10.0.0.5:6380/2": RedisTarget("redis", "10.0.0.5", 6380, None, 2),
            "redis://[::1]:7000/": RedisTarget("redis", "::1", 7000, None, 0),
            "rediss://cache.example.org/3": RedisTarget("rediss", "cache.example.org", 6379, None, 3),
            "unix:///run/redis/redis.sock": RedisTarget("unix", None, None, "/run/redis/redis.sock", 0),
            "unix:///run/redis/redis.sock?db=4": RedisTarget("unix", None, None, "/run/redis/redis.sock", 4),
        }
        for url, expected in cases.items():
            self.assertEqual(parse_redis_url(url), expected, url)
        self.assertTrue(parse_redis_url("rediss://h").tls)
        self.assertFalse(parse_redis_url("redis://h").tls)

    def test_credentials(self):
        target = parse_redis_url("redis://:s%40cret@h:1/0")
        self.assertEqual((target.username, target.password), (None, "s@cret"))
        target = parse_redis_url("rediss://app:pw@h")
        self.assertEqual((target.username, target.password), ("app", "pw"))

    def test_password_never_shown(self):
        target = parse_redis_url("redis://app:hunter2@h:1/5")
        self.assertNotIn("hunter2", repr(target))
        self.assertEqual(target.describe(), "redis://app@h:1/5")
        self.assertNotIn("hunter2", repr(Config(redis_url="redis://:hunter2@h")))

    def test_refused_forms_name_the_option_and_hide_the_password(self):
        refused = [
            "http://h", "redis:/h", "h:6379", "", "redis://", "redis://:pw@", "redis://h:99999",
            "redis://h:0", "redis://h/x", "redis://h/1/2", "redis://h?db=1", "redis://h#x",
            "redis://user@h", "redis://:@h", "redis://bad_host", "redis://[zz]:1",
            "unix://relative/path", "unix:///sock?password=hunter2", "unix:///sock?db=x",
            "unix:///sock?db=1&x=2", "unix://:hunter2@/sock", "redis://:hun\nter2@h",
            " redis://h", "redis://:hunter2@h/abc",
        ]
        for url in refused:
            with self.assertRaises(ValueError, msg=url) as raised:
                parse_redis_url(url)
            message = str(raised.exception)
            self.assertTrue(message.startswith("--redis"), message)
            self.assertNotIn("hunter2", message)

    def test_redact(self):
        self.assertEqual(redact_redis_url("redis://u:p@h/1"), "redis://***@h/1")
        self.assertEqual(redact_redis_url("unix:///s?password=p"), "unix:///s?password=***")


class PasswordFileTests(SystemTempMixin, unittest.SynchronousTestCase):
    def write(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_one_line_with_or_without_newline(self):
        for content in (b"s3cret\n", b"s3cret", b"s3cret\r\n"):
            self.assertEqual(read_password_file(self.write(content)), "s3cret")

    def test_refused_files(self):
        cases = [
            (self.mktemp(), "does not exist"),
            (self.mkdtemp(), "directory"),
            (self.write(b""), "empty"),
            (self.write(b"\n"), "empty"),
            (self.write(b"two\nlines\n"), "one line"),
            (self.write(b"x" * (MAX_PASSWORD_BYTES + 1)), "larger"),
            (self.write(b"\xff\xfe"), "UTF-8"),
        ]
        for path, reason in cases:
            with self.assertRaises(ValueError) as raised:
                read_password_file(path)
            self.assertIn("--redis-password-file", str(raised.exception))
            self.assertIn(reason, str(raised.exception))
        secret = self.write(b"first line\nsecond-line-secret\n")
        with self.assertRaises(ValueError) as raised:
            read_password_file(secret)
        self.assertNotIn("second-line-secret", str(raised.exception))

    def test_target_takes_the_password_from_the_file(self):
        path = self.write(b"from-file\n")
        target = redis_target("redis://h:1/2", path)
        self.assertEqual((target.host, target.db, target.password), ("h", 2, "from-file"))
        self.assertIsNone(redis_target(None))
        self.assertRaises(ValueError, redis_target, "redis://:x@h", path)
        self.assertRaises(ValueError, redis_target, None, path)


class ConfigTests(unittest.SynchronousTestCase):
    def test_defaults_are_one_process_without_redis(self):
        config = Config()
        self.assertEqual((config.redis_url, config.workers), (None, 1))
        self.assertEqual((config.redis_prefix, config.redis_timeout, config.node_timeout),
                         ("signaling:", 2.0, 15.0))

    def test_refused(self):
        cases = [
            ({"workers": 2}, "--redis"),
            ({"workers": 0, "redis_url": SOCKET_URL}, "--workers"),
            ({"workers": 257, "redis_url": SOCKET_URL}, "--workers"),
            ({"workers": True, "redis_url": SOCKET_URL}, "--workers"),
            ({"redis_url": "tcp://h"}, "--redis"),
            ({"redis_password_file": "/run/pw"}, "--redis-password-file needs --redis"),
            ({"redis_url": "redis://:x@h", "redis_password_file": "/run/pw"}, "not both"),
            ({"redis_url": SOCKET_URL, "redis_password_file": ""}, "--redis-password-file"),
            ({"redis_prefix": ""}, "--redis-prefix"),
            ({"redis_prefix": "a b"}, "--redis-prefix"),
            ({"redis_prefix": "x*"}, "--redis-prefix"),
            ({"redis_timeout": 0.05}, "--redis-timeout"),
            ({"redis_timeout": 61}, "--redis-timeout"),
            ({"node_timeout": 2}, "--node-timeout"),
            ({"node_timeout": 601}, "--node-timeout"),
            ({"redis_timeout": 10.0, "node_timeout": 15.0}, "twice --redis-timeout"),
        ]
        for values, words in cases:
            with self.assertRaises(ValueError, msg=values) as raised:
                Config(**values)
            self.assertIn(words, str(raised.exception))

    def test_workers_with_redis(self):
        config = Config(workers=4, redis_url=SOCKET_URL, node_timeout=3, redis_timeout=1.5)
        self.assertEqual(config.workers, 4)


class OptionTests(SystemTempMixin, unittest.SynchronousTestCase):
    def parse(self, *argv: str, environ: dict | None = None) -> Config:
        options = Options(environ=environ or {})
        options.parseOptions(["--db", ":memory:", *argv])
        return options.config

    def assertUsageError(self, words: str, *argv: str, environ: dict | None = None) -> str:
        with self.assertRaises(usage.UsageError) as raised:
            self.parse(*argv, environ=environ)
        self.assertIn(words, str(raised.exception))
        return str(raised.exception)

    def test_command_line(self):
        config = self.parse("--redis", "rediss://:pw@h:6380/1", "--redis-prefix", "app1:",
                            "--redis-timeout", "0.5", "--node-timeout", "5", "--workers", "3")
        self.assertEqual(
            (config.redis_url, config.redis_prefix, config.redis_timeout, config.node_timeout,
             config.workers),
            ("rediss://:pw@h:6380/1", "app1:", 0.5, 5.0, 3),
        )

    def test_environment(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("pw\n")
        config = self.parse(environ={
            "SIGNALING_REDIS": SOCKET_URL, "SIGNALING_REDIS_PASSWORD_FILE": path,
            "SIGNALING_WORKERS": "2", "SIGNALING_NODE_TIMEOUT": "20",
        })
        self.assertEqual((config.redis_url, config.redis_password_file, config.workers,
                          config.node_timeout), (SOCKET_URL, path, 2, 20.0))
        config = self.parse("--workers", "1", environ={"SIGNALING_WORKERS": "2"})
        self.assertEqual(config.workers, 1)

    def test_usage_errors(self):
        self.assertUsageError("--workers 2 needs --redis", "--workers", "2")
        self.assertUsageError("--workers", "--workers", "two", "--redis", SOCKET_URL)
        self.assertUsageError("SIGNALING_REDIS", environ={"SIGNALING_REDIS": "http://h"})
        message = self.assertUsageError("--redis", "--redis", "redis://:hunter2@h/x")
        self.assertNotIn("hunter2", message)
        self.assertUsageError("does not exist", "--redis", SOCKET_URL,
                              "--redis-password-file", self.mktemp())
        self.assertUsageError("CA file of --redis", "--redis", "rediss://h?ca=/nonexistent.pem")

    def test_a_ca_file_for_rediss(self):
        import os

        from certs import PKI

        root = str(PKI.create().write(os.path.abspath(self.mktemp())).root)
        self.assertEqual(self.parse("--redis", f"rediss://h?ca={root}").redis_url,
                         f"rediss://h?ca={root}")

    def test_workers_refuse_unix_listeners_and_unmovable_metrics(self):
        base = ["--workers", "2", "--redis", SOCKET_URL]
        socket_path = os.path.join(self.mkdtemp(), "ws.sock")
        self.assertUsageError("Unix sockets", *base, "--listen", f"unix:{socket_path}")
        self.assertUsageError("Unix sockets", *base, "--listen", "systemd:domain=UNIX:index=0")
        self.assertUsageError("--metrics-listen", *base, "--metrics-listen", f"unix:{socket_path}")
        self.assertUsageError("65535", *base, "--metrics-listen", "tcp:65535")
        # Without workers the same endpoints are fine.
        self.parse("--listen", f"unix:{socket_path}", "--metrics-listen", "tcp:65535")
