"""The summary table printed after the JSON lines."""

from __future__ import annotations

from typing import Iterable, Optional

COLUMNS = ("scenario", "ok", "figure", "unit", "p50 ms", "p99 ms", "max ms", "srv cpu%", "lg cpu%", "KiB/conn", "errors")

_FIGURE = {
    "relay": ("relayed_per_s", "msgs/s"),
    "rate": ("achieved_rate", "msgs/s"),
    "connect": ("conns_per_s", "conns/s"),
    "fanout": ("deliveries_per_s", "deliv/s"),
    "idle": ("alive", "conns"),
    "offline": ("offline_queued_per_s", "queued/s"),
    "cluster-relay-local": ("relayed_per_s", "msgs/s"),
    "cluster-relay": ("relayed_per_s", "msgs/s"),
    "cluster-rate-local": ("achieved_rate", "msgs/s"),
    "cluster-rate": ("achieved_rate", "msgs/s"),
    "workers-relay": ("relayed_per_s", "msgs/s"),
}


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def row(line: dict) -> list[str]:
    """The table cells of one result line."""
    name = line.get("scenario", "?")
    if name.endswith("rate") and line.get("target_rate") is not None:
        name = f"rate@{line['target_rate']:g}"
    key, unit = _FIGURE.get(line.get("scenario", ""), ("", ""))
    lat: Optional[dict] = line.get("lat_ms") or line.get("setup_lat_ms") or {}
    return [name, _fmt(line.get("ok")), _fmt(line.get(key)), unit, _fmt(lat.get("p50")), _fmt(lat.get("p99")),
            _fmt(lat.get("max")), _fmt(line.get("server_cpu_pct")), _fmt(line.get("lg_cpu_pct")),
            _fmt(line.get("kib_per_conn")), _fmt(line.get("errors"))]


def render(lines: Iterable[dict]) -> str:
    """A plain-text table, one row per result line."""
    rows = [list(COLUMNS)] + [row(x) for x in lines]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
