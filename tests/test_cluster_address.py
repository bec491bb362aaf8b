"""Parsing of --redis URLs and password files."""

from __future__ import annotations

import os

import pytest

from signaling.cluster import RedisAddress, RedisURLError, parse_redis_url


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://localhost", RedisAddress(host="localhost")),
        ("redis://10.0.0.5:6380/2", RedisAddress(host="10.0.0.5", port=6380, db=2)),
        ("redis://[::1]:7000", RedisAddress(host="::1", port=7000)),
        ("redis://:p%40ss@h/1", RedisAddress(host="h", db=1, password="p@ss")),
        ("redis://user:pw@h", RedisAddress(host="h", username="user", password="pw")),
        ("redis://h?db=4", RedisAddress(host="h", db=4)),
        ("rediss://h", RedisAddress(host="h", tls=True)),
        ("rediss://h:6390/1?ca=/etc/ca.pem", RedisAddress(host="h", port=6390, db=1, tls=True, ca_file="/etc/ca.pem")),
        ("unix:///run/redis.sock", RedisAddress(path="/run/redis.sock")),
        ("unix:///run/redis.sock?db=3", RedisAddress(path="/run/redis.sock", db=3)),
        ("unix://:pw@/run/redis.sock", RedisAddress(path="/run/redis.sock", password="pw")),
    ],
)
def test_valid(url, expected):
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    "url, text",
    [
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
    ],
)
def test_invalid(url, text):
    with pytest.raises(RedisURLError, match=text):
        parse_redis_url(url)


def test_describe_hides_the_password():
    address = parse_redis_url("redis://:secret@h:1/2")
    assert "secret" not in address.describe() and "secret" not in repr(address)
    assert address.describe() == "redis://h:1/2"
    assert parse_redis_url("unix:///s?db=1").describe() == "unix:///s?db=1"


def test_password_file(tmp_path):
    path = tmp_path / "pw"
    path.write_text("s3cret\n")
    assert parse_redis_url("redis://h", password_file=str(path)).password == "s3cret"
    path.write_text("with spaces \r\n")
    assert parse_redis_url("redis://h", password_file=str(path)).password == "with spaces "
    with pytest.raises(RedisURLError, match="give it once"):
        parse_redis_url("redis://:pw@h", password_file=str(path))
    path.write_text("\n")
    with pytest.raises(RedisURLError, match="empty"):
        parse_redis_url("redis://h", password_file=str(path))
    with pytest.raises(RedisURLError, match="cannot read"):
        parse_redis_url("redis://h", password_file=os.path.join(str(tmp_path), "missing"))
