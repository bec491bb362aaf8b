"""
Where the Redis server is: a ``--redis`` URL (forms and checks in
:mod:`signaling.redis_url`) as the connections use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..redis_url import DEFAULT_REDIS_PORT as DEFAULT_PORT, redis_target

__all__ = ["RedisAddress", "parse_redis_url"]


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

    def describe(self) -> str:
        """A printable form without the password (for logs and errors)."""
        if self.path is not None:
            return f"unix://{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str, password_file: str | None = None) -> RedisAddress:
    """
    The address of a ``--redis`` URL, checked by
    :func:`signaling.redis_url.redis_target` (the one parser of such URLs),
    with the password of ``password_file`` when given.

    :raises ValueError: an unusable URL or password file.
    """
    target = redis_target(url, password_file)
    return RedisAddress(
        host=target.host,
        port=DEFAULT_PORT if target.port is None else target.port,
        path=target.path,
        db=target.db,
        username=target.username,
        password=target.password,
        tls=target.tls,
        ca_file=target.ca_file,
    )
