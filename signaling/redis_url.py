"""
The ``--redis`` URL: where the cluster's Redis server is, parsed and checked.

Accepted forms (anything else is refused with a message naming ``--redis``)::

    redis://[[user]:password@]host[:port][/db]     plain TCP (port 6379, db 0 by default)
    rediss://[[user]:password@]host[:port][/db][?ca=/path/ca.pem]
                                                   TLS (the system's trusted CAs, or those of ca)
    unix:///path/to/redis.sock[?db=N]              a Unix socket

``host`` is a name, an IPv4 address or an IPv6 address in brackets. The
password may instead come from a file (``--redis-password-file``, e.g. a
systemd credential), which keeps it out of the command line and the
environment; giving both is refused. ``user`` is a Redis 6 ACL user.

Nothing here connects to Redis: :func:`parse_redis_url` only reads the text
and :func:`redis_target` adds the password from its file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from .files import read_setting_file

#: Largest CA file read for ``rediss://...?ca=``.
MAX_CA_BYTES = 1024 * 1024

__all__ = [
    "DEFAULT_REDIS_PORT",
    "MAX_PASSWORD_BYTES",
    "RedisTarget",
    "parse_redis_url",
    "read_password_file",
    "redact_redis_url",
    "redis_target",
]

DEFAULT_REDIS_PORT = 6379
#: Largest password accepted, in bytes (Redis itself has no limit; this only
#: keeps a wrong file, such as a key or a log, from being sent as one).
MAX_PASSWORD_BYTES = 4096
#: Largest database number (Redis's ``databases`` setting is a C int).
MAX_DB = 2**31 - 1

_FORMS = (
    "expected redis://[[user]:password@]host[:port][/db], rediss://... (TLS)"
    " or unix:///path/to/socket[?db=N]"
)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class RedisTarget:
    """
    A checked Redis address.

    :ivar scheme: ``"redis"``, ``"rediss"`` (TLS) or ``"unix"``.
    :ivar host: server name or address (``None`` for a Unix socket).
    :ivar port: TCP port (``None`` for a Unix socket).
    :ivar path: socket path (``None`` for TCP).
    :ivar db: database number.
    :ivar username: ACL user, or ``None`` for the default user.
    :ivar password: the password, or ``None``; never shown by ``repr``.
    :ivar ca_file: PEM file of the CA certificates to trust for ``rediss://``
        (``None``: the system's).
    """

    scheme: str
    host: str | None
    port: int | None
    path: str | None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    @property
    def tls(self) -> bool:
        """Whether the connection must use TLS (``rediss://``)."""
        return self.scheme == "rediss"

    def describe(self) -> str:
        """The address for logs and messages, without the password."""
        if self.scheme == "unix":
            return f"unix://{self.path}?db={self.db}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{host}:{self.port}/{self.db}"


def redact_redis_url(url: str) -> str:
    """``url`` with any credentials replaced by ``***``, safe to print or log."""
    url = re.sub(r"(?<=//)[^/?#]*@", "***@", url)
    return re.sub(r"(?i)(password=)[^&#]*", r"\1***", url)


def parse_redis_url(url: str) -> RedisTarget:
    """
    Read a ``--redis`` URL.

    :raises ValueError: the URL is not one of the accepted forms; the
        message names ``--redis`` and never repeats a password.
    """
    if not isinstance(url, str):
        raise ValueError(f"--redis must be a URL, {_FORMS}")
    shown = repr(redact_redis_url(url))
    if _CONTROL.search(url) or url != url.strip():
        raise ValueError(f"--redis {shown}: control characters or spaces in the URL")
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss", "unix"):
        raise ValueError(f"--redis {shown}: {_FORMS}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"--redis {shown}: {e}") from None
    if parts.fragment or "#" in url:
        raise ValueError(f"--redis {shown}: a fragment (#...) has no meaning here")
    if parts.scheme == "unix":
        return _unix_target(parts, shown)
    ca_file = _ca_file(parts, shown)
    host = parts.hostname
    if not host:
        raise ValueError(f"--redis {shown}: the host is missing")
    if ":" not in host and not _HOST.match(host):
        raise ValueError(f"--redis {shown}: {host!r} is not a host name or address")
    if port == 0:
        raise ValueError(f"--redis {shown}: port 0 is not a port")
    username, password = _credentials(parts, shown)
    return RedisTarget(
        scheme=parts.scheme,
        host=host,
        port=DEFAULT_REDIS_PORT if port is None else port,
        path=None,
        db=_db(parts.path.lstrip("/"), shown, "path"),
        username=username,
        password=password,
        ca_file=ca_file,
    )


def _ca_file(parts: Any, shown: str) -> str | None:
    """The ``?ca=`` of a ``rediss://`` URL: an absolute path (None without it)."""
    if not parts.query:
        return None
    name, sep, value = parts.query.partition("=")
    if parts.scheme != "rediss" or name != "ca" or not sep or "&" in value:
        raise ValueError(
            f"--redis {shown}: the only query accepted is ?ca=/path/ca.pem, on a rediss:// URL"
        )
    path = unquote(value)
    if not path.startswith("/"):
        raise ValueError(f"--redis {shown}: the CA file must be an absolute path")
    return path


def _check_ca_file(path: str) -> None:
    """:raises ValueError: ``path`` is not a readable PEM certificate."""
    from twisted.internet.ssl import Certificate

    data = read_setting_file(path, "the CA file of --redis", limit=MAX_CA_BYTES)
    try:
        Certificate.loadPEM(data)
    except Exception:
        raise ValueError(f"the CA file of --redis {path!r} holds no PEM certificate") from None


def _unix_target(parts: Any, shown: str) -> RedisTarget:
    if parts.netloc:
        raise ValueError(
            f"--redis {shown}: a unix URL has no host or password: unix:///path/to/socket[?db=N]"
            " (give a password with --redis-password-file)"
        )
    if not parts.path.startswith("/") or parts.path.endswith("/"):
        raise ValueError(f"--redis {shown}: the socket path must be absolute: unix:///path/to/socket")
    db = 0
    if parts.query:
        name, sep, value = parts.query.partition("=")
        if name != "db" or not sep or "&" in value:
            raise ValueError(f"--redis {shown}: the only query accepted is ?db=N")
        db = _db(value, shown, "db")
    return RedisTarget(scheme="unix", host=None, port=None, path=unquote(parts.path), db=db)


def _db(text: str, shown: str, where: str) -> int:
    if text == "":
        return 0
    if not text.isdigit() or not text.isascii() or int(text) > MAX_DB:
        raise ValueError(
            f"--redis {shown}: the database ({where}) must be a number from 0 to {MAX_DB}"
        )
    return int(text)


def _credentials(parts: Any, shown: str) -> tuple[str | None, str | None]:
    if "@" not in parts.netloc:
        return None, None
    if parts.password is None:
        raise ValueError(
            f"--redis {shown}: a user needs a password (redis://user:password@host);"
            " for a password alone write redis://:password@host"
        )
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password)
    if not password:
        raise ValueError(f"--redis {shown}: the password is empty")
    if _CONTROL.search(password) or (username and _CONTROL.search(username)):
        raise ValueError(f"--redis {shown}: control characters in the user or password")
    return username, password


def read_password_file(path: str) -> str:
    """
    The Redis password stored in ``path``: the whole file without one
    trailing line break.

    :raises ValueError: the file is missing, unreadable, empty, too large or
        holds more than one line; the message names
        ``--redis-password-file`` and never repeats the content.
    """
    option = "--redis-password-file"
    data = read_setting_file(path, option, limit=MAX_PASSWORD_BYTES + 3)
    for ending in (b"\r\n", b"\n"):
        if data.endswith(ending):
            data = data[: -len(ending)]
            break
    if not data:
        raise ValueError(f"{option} {path!r} is empty")
    if len(data) > MAX_PASSWORD_BYTES:
        raise ValueError(f"{option} {path!r} is larger than {MAX_PASSWORD_BYTES} bytes")
    try:
        password = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{option} {path!r} is not UTF-8 text") from None
    if _CONTROL.search(password):
        raise ValueError(
            f"{option} {path!r} must hold the password alone on one line"
            " (it holds line breaks or control characters)"
        )
    return password


def redis_target(redis_url: str | None, password_file: str | None = None) -> RedisTarget | None:
    """
    The Redis server of ``--redis``, with the password of
    ``--redis-password-file`` when one is given; ``None`` without ``--redis``
    (single-process mode).

    :raises ValueError: an unusable URL or password file, or a password given
        both ways.
    """
    if redis_url is None:
        if password_file is not None:
            raise ValueError("--redis-password-file needs --redis")
        return None
    target = parse_redis_url(redis_url)
    if target.ca_file is not None:
        _check_ca_file(target.ca_file)
    if password_file is None:
        return target
    if target.password is not None:
        raise ValueError(
            "give the Redis password in --redis or in --redis-password-file, not both"
        )
    return replace(target, password=read_password_file(password_file))
