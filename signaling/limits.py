"""
Enforcing limits: rate limits and connection caps, pure bookkeeping with an
injected clock. (The limits' values have their one home in
:class:`signaling.config.Config`.)

- :class:`TokenBucket` paces one connection's messages.
- :class:`AbuseTracker` decides when a connection that ignores
  ``RATE_LIMITED`` must be closed (1008).
- :class:`RateLimiter` combines both into one decision per message.
- :class:`AddressCounter` caps open connections per source address.
- :class:`ConnectionGate` counts every connection from accept against the
  total and per-address caps (one :class:`ConnectionSlot` each), and holds
  the handshake's policies (origin allow-list, trusted proxies).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from .config import RATE_STRIKE_WINDOW, RATE_STRIKES

__all__ = [
    "AbuseTracker",
    "AddressCounter",
    "ConnectionGate",
    "ConnectionSlot",
    "Clock",
    "RateDecision",
    "RateLimiter",
    "TokenBucket",
]


class Clock(Protocol):
    """Anything with ``seconds()``: a reactor or ``twisted.internet.task.Clock``."""

    def seconds(self) -> float:
        """The current time in seconds."""


class TokenBucket:
    """
    A token bucket: ``rate`` tokens per second, holding at most ``burst``.

    It starts full, so a new connection may send ``burst`` messages at once.
    """

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        """:raises ValueError: ``rate`` is not positive or ``burst`` < 1."""
        if not rate > 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock.seconds()

    def _refill(self) -> None:
        now = self._clock.seconds()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now

    def take(self, n: int = 1) -> float:
        """
        Take ``n`` tokens if available.

        :return: ``0.0`` when taken, else the seconds until ``n`` tokens will
            be available (nothing is taken then).
        :raises ValueError: ``n`` is below 1 or above ``burst`` (never
            satisfiable).
        """
        if not 1 <= n <= self.burst:
            raise ValueError(f"can take between 1 and {self.burst} tokens, not {n}")
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate

    @property
    def available(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens


class AbuseTracker:
    """
    Decides when ignored ``RATE_LIMITED`` warnings must close the connection.

    Policy: the connection is closed once it has ignored more than
    ``max_refusals`` warnings within any ``window`` seconds. :class:`RateLimiter`
    records a strike only for a refused message that arrived before the
    retry time announced by the previous warning, so a client that honours
    ``retryAfterMs`` is never closed, however fast it sends; one that keeps
    sending regardless collects strikes at its own sending rate and crosses
    the threshold quickly. The default (more than 20 within 10 s) leaves room
    for messages already in flight when the first warning was sent.

    Memory is bounded: at most ``max_refusals + 1`` timestamps are kept.
    """

    def __init__(self, clock: Clock, max_refusals: int = RATE_STRIKES,
                 window: float = RATE_STRIKE_WINDOW) -> None:
        """:raises ValueError: ``max_refusals`` < 0 or ``window`` not positive."""
        if max_refusals < 0:
            raise ValueError("max_refusals must not be negative")
        if not window > 0:
            raise ValueError("window must be positive")
        self.max_refusals = max_refusals
        self.window = float(window)
        self._clock = clock
        self._refusals: deque[float] = deque(maxlen=max_refusals + 1)

    def refused(self) -> bool:
        """
        Record one strike (an ignored warning).

        :return: ``True`` when the connection must now be closed.
        """
        now = self._clock.seconds()
        self._refusals.append(now)
        horizon = now - self.window
        while self._refusals and self._refusals[0] <= horizon:
            self._refusals.popleft()
        return len(self._refusals) > self.max_refusals


@dataclass(frozen=True)
class RateDecision:
    """
    The verdict on one incoming message.

    :ivar allowed: handle the message.
    :ivar retry_after: seconds until a message would be allowed (``0.0``
        when allowed); send ``RATE_LIMITED`` with
        ``retryAfterMs = ceil(retry_after * 1000)``.
    :ivar close: the connection has abused the limit: close it with 1008.
    """

    allowed: bool
    retry_after: float = 0.0
    close: bool = False

    @property
    def retry_after_ms(self) -> int:
        """``retry_after`` in whole milliseconds, rounded up (at least 1 when refused)."""
        if self.allowed:
            return 0
        return max(1, -(-int(self.retry_after * 1_000_000) // 1000))


_ALLOWED = RateDecision(True)


class RateLimiter:
    """
    One connection's message limit: a :class:`TokenBucket` for pacing and an
    :class:`AbuseTracker` for the strikes of a client that ignores warnings.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Clock,
        max_refusals: int = RATE_STRIKES,
        window: float = RATE_STRIKE_WINDOW,
    ) -> None:
        """See :class:`TokenBucket` and :class:`AbuseTracker` for the arguments."""
        self._clock = clock
        self.bucket = TokenBucket(rate, burst, clock)
        self.abuse = AbuseTracker(clock, max_refusals, window)
        self._retry_at = float("-inf")

    def check(self) -> RateDecision:
        """Account for one incoming message and say what to do with it."""
        wait = self.bucket.take()
        if wait == 0.0:
            return _ALLOWED
        now = self._clock.seconds()
        ignored_warning = now < self._retry_at
        self._retry_at = now + wait
        return RateDecision(False, wait, ignored_warning and self.abuse.refused())


class AddressCounter:
    """
    Open connections per source address.

    Call :meth:`release` exactly once for every :meth:`acquire` that
    returned ``True``. An address whose count drops to zero is forgotten, so
    the table holds only addresses with open connections.
    """

    def __init__(self) -> None:
        """Start with no connections."""
        self._counts: dict[str, int] = {}

    def acquire(self, addr: str, limit: int | None) -> bool:
        """
        Count one more connection from ``addr`` unless it already has ``limit``.

        ``limit=None`` means no limit (still counted).

        :return: whether the connection may proceed (and was counted).
        :raises ValueError: ``limit`` is below 1.
        """
        if limit is not None and limit < 1:
            raise ValueError("a per-address connection limit must be at least 1")
        count = self._counts.get(addr, 0)
        if limit is not None and count >= limit:
            return False
        self._counts[addr] = count + 1
        return True

    def release(self, addr: str) -> None:
        """Forget one connection from ``addr``; an unknown address is ignored."""
        count = self._counts.get(addr)
        if count is None:
            return
        if count <= 1:
            del self._counts[addr]
        else:
            self._counts[addr] = count - 1

    def count(self, addr: str) -> int:
        """Open connections from ``addr``."""
        return self._counts.get(addr, 0)

    def __len__(self) -> int:
        """Number of addresses with open connections."""
        return len(self._counts)

    @property
    def total(self) -> int:
        """Open connections from all addresses."""
        return sum(self._counts.values())


class ConnectionGate:
    """
    Counts open connections against the total and per-address caps (0: no
    cap), from accept to close, whatever they turn out to be (WebSocket,
    HTTP, nothing yet); and holds the policies the WebSocket handshake
    applies (``origins``, ``proxies``).

    Per-address counting: a connection from an address that is not a
    trusted proxy counts against that address's cap from accept on. A
    connection from a trusted proxy counts only against the total at
    accept (its client is not known before the request head); at the
    WebSocket handshake it counts against the cap of the client address
    the proxy forwarded (:meth:`ConnectionSlot.count_client`).
    """

    def __init__(self, origins: Any, proxies: Any, max_connections: int,
                 max_per_address: int) -> None:
        """
        :param origins: a :class:`signaling.origins.OriginPolicy`
        :param proxies: a :class:`signaling.proxies.ProxyPolicy`
        """
        self.origins = origins
        self.proxies = proxies
        self._max_connections = max_connections or None
        self._max_per_address = max_per_address or None
        self._addresses = AddressCounter()
        self._slots: set[ConnectionSlot] = set()

    @property
    def open(self) -> int:
        """Connections counted now (every slot not yet released)."""
        return len(self._slots)

    def admit(self, host: str) -> "ConnectionSlot | str":
        """
        Count a connection just accepted from ``host``: its slot, or the
        reason it may not stay (``"max_connections"``, ``"per_ip"``).
        """
        if self._max_connections is not None and self.open >= self._max_connections:
            return "max_connections"
        address: str | None = None
        if not self.proxies.trusts(host):
            if not self._addresses.acquire(host, self._max_per_address):
                return "per_ip"
            address = host
        slot = ConnectionSlot(self, address)
        self._slots.add(slot)
        return slot

    def abort_all(self) -> None:
        """Abort every connection still counted (at the end of a shutdown)."""
        for slot in list(self._slots):
            transport = getattr(slot.protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()

    def count(self, address: str) -> int:
        """Open connections counted against ``address``."""
        return self._addresses.count(address)

    def _count_client(self, address: str) -> bool:
        return self._addresses.acquire(address, self._max_per_address)

    def _release(self, slot: "ConnectionSlot") -> None:
        self._slots.discard(slot)
        address = slot.address
        if address is not None:
            self._addresses.release(address)


class ConnectionSlot:
    """
    One connection as :class:`ConnectionGate` counts it, from accept until
    :meth:`release`, which only the first call does.

    :ivar address: the address whose cap the connection counts against
        (None: a trusted proxy's connection, before the handshake).
    :ivar protocol: the protocol first built for the connection (its
        ``transport`` is the connection's, whichever protocol owns it now).
    """

    __slots__ = ("_gate", "address", "released", "protocol")

    def __init__(self, gate: ConnectionGate, address: str | None) -> None:
        self._gate = gate
        self.address = address
        self.released = False
        self.protocol: Any = None

    def count_client(self, address: str) -> str | None:
        """
        At the WebSocket handshake: count the connection against the cap
        of its client ``address`` (the one a trusted proxy forwarded), unless
        it already counts against an address. The refusal reason
        (``"per_ip"``) when that cap is full, else None.
        """
        if self.address is not None or self.released:
            return None
        if not self._gate._count_client(address):
            return "per_ip"
        self.address = address
        return None

    def release(self) -> None:
        """The connection closed: stop counting it (only the first call counts)."""
        if not self.released:
            self.released = True
            self._gate._release(self)
