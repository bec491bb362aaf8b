"""Command line: ``python -m signaling.bench [--scenario NAME ...] [options]``.

Prints one JSON line per scenario on stdout, then a table (unless ``--json-only``).
Exit status: 0 all scenarios clean, 1 a validation error or failure, 2 usage, 3 a hard deadline hit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Optional, Sequence, Union
from urllib.parse import urlsplit

from signaling.bench.cluster import CLUSTER_SCENARIOS, Deployment
from signaling.bench.procfs import core_busy, core_times, proc_ticks, rss_kib, CLK_TCK
from signaling.bench.scenarios import FILE_STORE, SCENARIOS, Context, Params
from signaling.bench.server import ServerProcess, pin
from signaling.bench.stats import r3
from signaling.bench.table import render


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    a = argparse.ArgumentParser(prog="python -m signaling.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--scenario", action="append", default=None,
                   help=f"one of {', '.join(SCENARIOS)} or all; or one of {', '.join(CLUSTER_SCENARIOS)}"
                   " or cluster, each with a private redis-server (repeatable; default all)")
    a.add_argument("--url", help="target an already running server at ws://127.0.0.1:PORT/ instead of starting one")
    a.add_argument("--server-pid", type=int, help="pid of the server at --url (for its RSS and CPU)")
    a.add_argument("--server-arg", action="append", default=[], help="extra argument for the started server (repeatable)")
    d = Params()
    a.add_argument("--pairs", type=int, default=d.pairs)
    a.add_argument("--window", type=int, default=d.window)
    a.add_argument("--duration", type=float, default=d.duration, help="measurement window, seconds")
    a.add_argument("--warmup", type=float, default=d.warmup)
    a.add_argument("--rate", type=float, action="append", default=None,
                   help="msgs/s for rate and for offline's online traffic (repeatable; default 2000)")
    a.add_argument("--conns", type=int, default=d.conns)
    a.add_argument("--concurrency", type=int, default=d.concurrency)
    a.add_argument("--rooms", type=int, default=d.rooms)
    a.add_argument("--members", type=int, default=d.members)
    a.add_argument("--chat-rate", type=float, default=d.chat_rate)
    a.add_argument("--sdp-bytes", type=int, default=d.sdp_bytes)
    a.add_argument("--chat-bytes", type=int, default=d.chat_bytes)
    a.add_argument("--drain", type=float, default=d.drain, help="seconds allowed for in-flight messages")
    a.add_argument("--setup-timeout", type=float, default=d.setup_timeout)
    a.add_argument("--hold", type=float, default=d.hold, help="connect: seconds to hold before reading RSS")
    a.add_argument("--idle-seconds", type=float, default=d.idle_seconds)
    a.add_argument("--senders", type=int, default=d.senders, help="offline: sender connections")
    a.add_argument("--offline-window", type=int, default=d.offline_window,
                   help="offline: messages in flight per sender")
    a.add_argument("--baseline", type=float, default=d.baseline,
                   help="offline: seconds of online-only traffic measured before the burst")
    a.add_argument("--check-targets", type=int, default=d.check_targets,
                   help="offline: offline ids registered at the end to read their messages back")
    a.add_argument("--offline-budget", type=int, default=d.offline_budget,
                   help="offline: at most this many offline messages in one run (keeps under the byte cap)")
    a.add_argument("--label")
    a.add_argument("--no-pin", action="store_true", help="do not pin the server to core 0 and this process to core 1")
    a.add_argument("--cluster-pin", choices=("core0", "none"), default="core0",
                   help="cluster scenarios: pin every node and Redis to core 0 (the single server's budget),"
                   " or leave them to the scheduler [core0]")
    a.add_argument("--json-only", action="store_true", help="no table at the end")
    return a


def _loopback_url(url: str) -> Optional[str]:
    """``url`` if it is ws:// on a loopback address, else ``None``."""
    u = urlsplit(url)
    host = u.hostname or ""
    if u.scheme != "ws" or not (re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", host) or host in ("localhost", "::1")):
        return None
    return url


def _params(ns: argparse.Namespace, rate: float) -> Params:
    return Params(pairs=ns.pairs, window=ns.window, duration=ns.duration, warmup=ns.warmup, rate=rate,
                  conns=ns.conns, concurrency=ns.concurrency, rooms=ns.rooms, members=ns.members,
                  chat_rate=ns.chat_rate, sdp_bytes=ns.sdp_bytes, chat_bytes=ns.chat_bytes, drain=ns.drain,
                  setup_timeout=ns.setup_timeout, hold=ns.hold, idle_seconds=ns.idle_seconds,
                  senders=ns.senders, offline_window=ns.offline_window, baseline=ns.baseline,
                  check_targets=ns.check_targets, offline_budget=ns.offline_budget)


def _db_arg(args: Sequence[str]) -> Optional[str]:
    """The last ``--db`` value in server arguments, or ``None``."""
    value = None
    for i, arg in enumerate(args):
        if arg == "--db" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--db="):
            value = arg[5:]
    return value


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - the bench extra installs it
        return asyncio.new_event_loop()


def _wait_server_idle(pid: Optional[int], limit: float = 20.0) -> None:
    """Wait (bounded) until the server uses under 5 % CPU, e.g. after a teardown storm."""
    if pid is None:
        return
    t0 = time.monotonic()
    prev = proc_ticks(pid)
    while time.monotonic() - t0 < limit:
        time.sleep(0.3)
        cur = proc_ticks(pid)
        if cur is None or prev is None or (cur - prev) / CLK_TCK / 0.3 < 0.05:
            return
        prev = cur


def _machine_busy(pid: Optional[int]) -> Optional[float]:
    """Busy % of all cores over 0.5 s, minus the server's own CPU."""
    a, s0 = core_times(), proc_ticks(pid)
    time.sleep(0.5)
    b, s1 = core_busy(a, core_times()), proc_ticks(pid)
    if not b:
        return None
    srv = 100.0 * (s1 - s0) / CLK_TCK / 0.5 if s0 is not None and s1 is not None else 0.0
    return r3(max(0.0, sum(c["busy"] for c in b) - srv))


def run_one(name: str, url: str, pid: Union[int, Sequence[int], None], params: Params, label: Optional[str],
            deployment: Optional[Deployment] = None) -> tuple[dict, int]:
    """Run scenario ``name`` once (against ``deployment``'s servers if given); return its result
    line and exit status (0, 1 or 3)."""
    result: dict = {"scenario": name, "adapter": "signaling", "client": "picows", "target": url,
                    "label": label, "ok": False,
                    "started": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    _wait_server_idle(pid)
    result["machine_busy_before_pct"] = _machine_busy(pid)
    result["server_rss_kib_start"] = rss_kib(pid)
    run = name
    if deployment is not None:
        run, kind = CLUSTER_SCENARIOS[name]
        result["servers"] = {"kind": kind[0], "count": kind[1] if len(kind) > 1 else 1, "urls": deployment.urls}
        ctx = Context(url, pid, params, result, deployment.urls, deployment.redis)
    else:
        ctx = Context(url, pid, params, result)
    code = 0
    loop = _new_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(SCENARIOS[run](ctx), params.deadline(run)))
    except asyncio.TimeoutError:
        result["fatal"] = f"hard deadline {params.deadline(name):.0f}s exceeded"
        code = 3
        loop.run_until_complete(ctx.pool.close_all(2))
    except Exception as e:  # noqa: BLE001 - reported in the line, never swallowed silently
        result["fatal"] = f"exception: {type(e).__name__}: {e}"[:300]
    finally:
        loop.close()
    nerr = sum(ctx.errors.values())
    result.update(errors=nerr, error_detail=dict(ctx.errors), ignored=dict(ctx.ignored))
    result["ok"] = nerr == 0 and "fatal" not in result
    if not result["ok"]:
        fatal = f" ({result['fatal']})" if "fatal" in result else ""
        result["warning"] = f"RUN HAD {nerr} ERRORS{fatal} - figures are not trustworthy"
        code = code or 1
    result["server_rss_kib_end"] = rss_kib(pid)
    if label is None:
        del result["label"]
    return result, code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    names: list[str] = []
    for s in ns.scenario or ["all"]:
        if s == "all":
            names.extend(n for n in SCENARIOS if n not in names)
        elif s == "cluster":
            names.extend(n for n in CLUSTER_SCENARIOS if n not in names)
        elif s in SCENARIOS or s in CLUSTER_SCENARIOS:
            names.append(s)
        else:
            parser.error(f"unknown scenario {s!r}")
    if ns.url and not _loopback_url(ns.url):
        parser.error("--url must be ws:// on a loopback address")
    if ns.server_pid and not ns.url:
        parser.error("--server-pid needs --url")
    if ns.url and any(n in CLUSTER_SCENARIOS for n in names):
        parser.error("the cluster scenarios start their own servers: no --url")
    if not ns.no_pin:
        pin(0, 1)
    rated = ("rate", "offline", "cluster-rate", "cluster-rate-local")
    runs = [(n, r) for n in names for r in ((ns.rate or [Params.rate]) if n in rated else [None])]
    lines: list[dict] = []
    status = 0
    for name, rate in runs:
        params = _params(ns, rate or Params.rate)
        server = None
        deployment = None
        db_dir = None
        try:
            if ns.url:
                url, pid = ns.url, ns.server_pid
            elif name in CLUSTER_SCENARIOS:
                core = None if ns.no_pin or ns.cluster_pin == "none" else 0
                deployment = Deployment(CLUSTER_SCENARIOS[name][1], ns.server_arg, core)
                deployment.start()
                url, pid = deployment.urls[0], deployment.pids
            else:
                server_args = list(ns.server_arg)
                if name in FILE_STORE:
                    db = _db_arg(server_args)
                    if db is None:
                        db_dir = tempfile.mkdtemp(prefix="signaling-bench-")
                        db = os.path.join(db_dir, "bench.sqlite")
                        server_args = ["--db", db, *server_args]
                    params.store = "memory (--db :memory:)" if db == ":memory:" else f"sqlite file {db}"
                server = ServerProcess(server_args, pin_core=None if ns.no_pin else 0)
                server.start()
                url, pid = server.url, server.pid
            line, code = run_one(name, url, pid, params, ns.label, deployment)
            if server is not None:
                exit_status = server.stop()
                if exit_status not in (0, -15):
                    line["server_exit_status"] = exit_status
                    line["server_log_tail"] = server.log_tail(500)
            if deployment is not None:
                exit_status = deployment.stop()
                if exit_status:
                    line["server_exit_status"] = exit_status
                    line["server_log_tail"] = deployment.log_tail(500)
        except RuntimeError as e:
            line = {"scenario": name, "ok": False, "fatal": str(e)[:800],
                    "warning": "SERVER FAILED - no figures"}
            code = 1
        finally:
            if server is not None:
                server.close()
            if deployment is not None:
                deployment.close()
            if db_dir is not None:
                shutil.rmtree(db_dir, ignore_errors=True)
        lines.append(line)
        sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        status = max(status, code)
    if not ns.json_only:
        sys.stdout.write("\n" + render(lines) + "\n")
    return status
