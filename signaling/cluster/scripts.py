"""
The Lua scripts of cluster mode, read from ``signaling/cluster/scripts``.

Each ``<name>.lua`` is one atomic operation; ``lib.lua`` holds the helpers
they share and is put in front of every one of them. Every script takes the
key prefix as ``ARGV[1]`` and no KEYS (so the scripts suit one Redis or a
Sentinel setup, not Redis Cluster). The header comment of each file says
what it takes and returns; :class:`signaling.cluster.backend.RedisBackend`
turns the replies into Python values.
"""

from __future__ import annotations

from importlib import resources

from .connection import Script

__all__ = ["NAMES", "load_scripts"]

#: Every script, by file name without ``.lua``.
NAMES = (
    "heartbeat", "claim", "register", "release", "join", "leave", "peers",
    "route", "enqueue", "remove", "expire", "reap",
)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("scripts", f"{name}.lua").read_text("utf-8")


def load_scripts() -> dict[str, Script]:
    """Every script of :data:`NAMES`, with ``lib.lua`` in front, by name."""
    lib = _read("lib")
    return {name: Script(name, f"{lib}\n{_read(name)}") for name in NAMES}
