"""
Where the Redis server is: parsing of ``--redis`` URLs.

Accepted forms::

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db][?ca=/path/to/ca.pem]
    unix://[[user]:password@]/path/to/redis.sock[?db=N]

The password may instead come from a file (``password_file``, the contents
with one trailing newline removed), which keeps it out of process listings;
giving it both ways is refused, so there is never a doubt which one is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisAddress", "RedisURLError", "parse_redis_url"]

DEFAULT_PORT = 6379


class RedisURLError(ValueError):
    """A Redis URL or password file that cannot be used; the text says why."""


@dataclass(frozen=True)
class RedisAddress:
    """A parsed Redis URL: how to reach the server and log in."""

    host: str | None = None
    port: int = DEFAULT_PORT
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None

    @property
    def is_unix(self) -> bool:
        """True for a unix socket, False for TCP."""
        return self.path is not None

    def describe(self) -> str:
        """A printable form without the password (for logs and errors)."""
        if self.path is not None:
            return f"unix://{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


def _db(text: str, url: str) -> int:
    if not text.isdigit() or len(text) > 5:
        raise RedisURLError(f"Redis URL {url!r}: database must be a number, not {text!r}")
    return int(text)


def _read_password_file(path: str) -> str:
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise RedisURLError(f"cannot read the Redis password file {path!r}: {e.strerror}")
    except UnicodeDecodeError:
        raise RedisURLError(f"the Redis password file {path!r} is not UTF-8 text")
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise RedisURLError(f"the Redis password file {path!r} is empty")
    return text


def parse_redis_url(url: str, password_file: str | None = None) -> RedisAddress:
    """
    Parse ``url`` (see the module docstring) into a :class:`RedisAddress`.

    :raises RedisURLError: the URL is malformed, has an unknown scheme or
        query field, a bad port or database, or the password is given both
        in the URL and in ``password_file`` (or that file cannot be read).
    """
    if not isinstance(url, str) or not url:
        raise RedisURLError("the Redis URL is empty")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise RedisURLError(f"Redis URL {url!r} is malformed: {e}")
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise RedisURLError(
            f"Redis URL {url!r}: the scheme must be redis://, rediss:// or unix://"
        )
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    known = {"db", "ca"} if scheme != "redis" else {"db"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise RedisURLError(f"Redis URL {url!r}: unknown option {unknown[0]!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password == "":
        password = None
    if password_file is not None:
        if password is not None:
            raise RedisURLError(
                "the Redis password is given both in the URL and in a password file; give it once"
            )
        password = _read_password_file(password_file)
    db = 0
    if "db" in query:
        db = _db(query["db"][-1], url)
    if scheme == "unix":
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise RedisURLError(f"Redis URL {url!r}: a unix socket needs an absolute path")
        if parts.hostname:
            raise RedisURLError(
                f"Redis URL {url!r}: write unix:///path (three slashes) for a socket path"
            )
        return RedisAddress(path=path, db=db, username=username, password=password)
    if not parts.hostname:
        raise RedisURLError(f"Redis URL {url!r} names no host")
    path = parts.path.strip("/")
    if path:
        if "db" in query:
            raise RedisURLError(f"Redis URL {url!r}: the database is given twice")
        db = _db(path, url)
    ca = query["ca"][-1] if "ca" in query else None
    return RedisAddress(
        host=parts.hostname,
        port=DEFAULT_PORT if port is None else port,
        db=db,
        username=username,
        password=password,
        tls=scheme == "rediss",
        ca_file=ca,
    )
