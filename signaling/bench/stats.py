"""Latency samples and their percentiles (nearest-rank, as in the reference load generator)."""

from __future__ import annotations

import math
import random
from typing import Optional


def r3(x: Optional[float]) -> Optional[float]:
    """Round to three decimals; ``None``, NaN and infinities become ``None``."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, 3)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0..100) of an ascending, non-empty list.

    The value at rank ``ceil(p/100 * n)`` (1-based), clamped to the list.
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of an empty list")
    rank = math.ceil(p / 100.0 * n) - 1
    return sorted_values[min(n - 1, max(0, rank))]


class Samples:
    """A set of measurements: exact up to ``cap`` values, a uniform reservoir beyond.

    ``seen``, ``mean`` and ``max`` always cover every value added.
    """

    def __init__(self, cap: int = 1 << 22, rng: Optional[random.Random] = None) -> None:
        self.values: list[float] = []
        self.cap = cap
        self.seen = 0
        self.total = 0.0
        self.max = -math.inf
        self._rng = rng or random.Random(0)

    def add(self, v: float) -> None:
        """Record one measurement."""
        self.seen += 1
        self.total += v
        if v > self.max:
            self.max = v
        if len(self.values) < self.cap:
            self.values.append(v)
            return
        j = self._rng.randrange(self.seen)
        if j < self.cap:
            self.values[j] = v

    def summary(self) -> dict:
        """``{"n", "mean", "p50", "p90", "p99", "p999", "max"}``, or ``{"n": 0}`` when empty."""
        if not self.values:
            return {"n": 0}
        s = sorted(self.values)
        return {
            "n": self.seen,
            "mean": r3(self.total / self.seen),
            "p50": r3(percentile(s, 50)),
            "p90": r3(percentile(s, 90)),
            "p99": r3(percentile(s, 99)),
            "p999": r3(percentile(s, 99.9)),
            "max": r3(self.max),
        }
