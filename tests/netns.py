"""
Test support: a private network namespace holding only the loopback
interface, for WebRTC between headless Chromium pages.

Chromium gathers ICE candidates on every interface it sees; with only ``lo``
(and ``--allow-loopback-in-peer-connection``) two pages connect over
127.0.0.1 and no traffic can leave the machine. :func:`isolate` moves the
calling process into a fresh namespace (root only; Linux ``unshare``) and
brings ``lo`` up; everything started afterwards (servers, browsers, their
threads) shares it. Every test of this suite talks to 127.0.0.1 only, so
the whole run can live there.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

__all__ = ["DISABLE_ENV", "isolate", "only_loopback", "why_not_isolated"]

#: Set to 0 to keep the test run in the machine's own network namespace.
DISABLE_ENV = "SIGNALING_TEST_NETNS"

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_why_not: str | None = "isolate() was not called"


def only_loopback() -> bool:
    """Whether this process sees no network interface but ``lo``."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def why_not_isolated() -> str | None:
    """None when this process is alone on loopback, else the reason it is not."""
    if only_loopback():
        return None
    return _why_not


def isolate() -> None:
    """
    Move this process into a new network namespace with ``lo`` up, unless
    it already sees only ``lo``, isolation is switched off (``DISABLE_ENV=0``)
    or it is not permitted (not root). Never raises; :func:`why_not_isolated`
    tells what happened. Call it before any thread is started.
    """
    global _why_not
    if only_loopback():
        _why_not = None
        return
    if os.environ.get(DISABLE_ENV, "").strip() == "0":
        _why_not = f"{DISABLE_ENV}=0 keeps the tests in the machine's network namespace"
        return
    if os.geteuid() != 0:
        _why_not = ("a private network namespace needs root: run the tests as root, or as"
                    " 'unshare -rn sh -c \"ip link set lo up && python -m pytest\"'")
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        _why_not = f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
        return
    try:
        _loopback_up()
    except OSError as e:
        _why_not = f"could not bring lo up in the new network namespace: {e}"
        return
    _why_not = None if only_loopback() else "the new network namespace has other interfaces"


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
