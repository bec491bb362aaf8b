"""Readings from /proc: a process's RSS and CPU ticks, and per-core busy time."""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Sequence, Union

from signaling.bench.stats import r3

try:
    CLK_TCK = os.sysconf("SC_CLK_TCK")
except (ValueError, OSError, AttributeError):  # pragma: no cover - non-Linux
    CLK_TCK = 100


def _summed(function, pids: Sequence[int]) -> Optional[int]:
    values = [function(pid) for pid in pids]
    return None if not values or any(v is None for v in values) else sum(values)


def rss_kib(pid: Union[int, Sequence[int], None]) -> Optional[int]:
    """VmRSS of ``pid`` in KiB (summed over a list of pids), or ``None``."""
    if pid is None:
        return None
    if not isinstance(pid, int):
        return _summed(rss_kib, pid)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def proc_ticks(pid: Union[int, Sequence[int], None]) -> Optional[int]:
    """utime + stime of ``pid`` (all threads; summed over a list of pids) in clock ticks, or ``None``."""
    if pid is None:
        return None
    if not isinstance(pid, int):
        return _summed(proc_ticks, pid)
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rindex(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def core_times() -> Optional[list[list[int]]]:
    """Per core: user nice system idle iowait irq softirq steal, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            return [
                [int(x) for x in line.split()[1:9]]
                for line in f
                if line.startswith("cpu") and line[3].isdigit()
            ]
    except (OSError, ValueError, IndexError):
        return None


def core_busy(a: Optional[list[list[int]]], b: Optional[list[list[int]]]) -> Optional[list[dict]]:
    """Busy, softirq and steal percent per core between two :func:`core_times` readings."""
    if not a or not b or len(a) != len(b):
        return None
    out = []
    for x, y in zip(a, b):
        d = [q - p for p, q in zip(x, y)]
        tot = sum(d) or 1
        out.append(
            {
                "busy": r3(100.0 * (tot - d[3] - d[4]) / tot),
                "softirq": r3(100.0 * d[6] / tot),
                "steal": r3(100.0 * d[7] / tot),
            }
        )
    return out


class Meter:
    """CPU use of this process, of the server and of each core over a window."""

    def __init__(self, server_pid: Union[int, Sequence[int], None], redis: Any = None) -> None:
        self.server_pid = server_pid
        #: A :class:`signaling.bench.cluster.RedisProcess` whose command calls are counted too.
        self.redis = redis
        self.calls = redis.commandstats() if redis is not None else None
        self.t = time.perf_counter()
        self.cpu = time.process_time()
        self.srv = proc_ticks(server_pid)
        self.cores = core_times()

    def end(self) -> dict:
        """The figures since construction: seconds, lg_cpu_pct, server_cpu_pct, cores, foreign_cpu_pct."""
        dt = max(1e-9, time.perf_counter() - self.t)
        srv = proc_ticks(self.server_pid)
        out: dict = {
            "seconds": r3(dt),
            "lg_cpu_pct": r3(100.0 * (time.process_time() - self.cpu) / dt),
            "server_cpu_pct": (
                r3(100.0 * (srv - self.srv) / CLK_TCK / dt)
                if srv is not None and self.srv is not None
                else None
            ),
            "cores": core_busy(self.cores, core_times()),
        }
        if out["cores"]:
            busy = sum(c["busy"] - c["softirq"] for c in out["cores"])
            out["foreign_cpu_pct"] = r3(
                max(0.0, busy - (out["lg_cpu_pct"] or 0) - (out["server_cpu_pct"] or 0))
            )
            out["contaminated"] = out["foreign_cpu_pct"] > 10
        if self.redis is not None and self.calls is not None:
            after = self.redis.commandstats()
            out["redis_calls"] = {
                name: calls - self.calls.get(name, 0)
                for name, calls in sorted(after.items()) if calls != self.calls.get(name, 0)
            }
        return out
