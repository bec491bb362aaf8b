"""The scenarios: relay, rate, connect, fanout and idle. Each fills one result dict."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from signaling.bench.client import Conn, Pool
from signaling.bench.ledger import ChatLedger, DirectedLedger
from signaling.bench.payload import Payloads
from signaling.bench.procfs import Meter, rss_kib
from signaling.bench.stats import Samples, r3

now = time.perf_counter


@dataclass
class Params:
    """Scenario parameters (the command-line options)."""

    pairs: int = 200
    window: int = 4
    duration: float = 10.0
    warmup: float = 1.0
    rate: float = 2000.0
    conns: int = 2000
    concurrency: int = 100
    rooms: int = 20
    members: int = 20
    chat_rate: float = 1000.0
    sdp_bytes: int = 1024
    chat_bytes: int = 100
    drain: float = 5.0
    setup_timeout: float = 60.0
    hold: float = 0.0
    idle_seconds: float = 5.0

    def deadline(self, scenario: str) -> float:
        """A hard upper bound in seconds on one scenario's run time."""
        return 2 * self.setup_timeout + self.warmup + self.duration + self.drain + self.hold + self.idle_seconds + 60


class Context:
    """What a scenario needs: target, server pid, parameters, result and counters."""

    def __init__(self, url: str, server_pid: Optional[int], params: Params, result: dict) -> None:
        self.url = url
        self.server_pid = server_pid
        self.p = params
        self.result = result
        self.errors: Counter = Counter()
        self.ignored: Counter = Counter()
        self.pool = Pool(url, self.errors, self.ignored)
        self.payloads = Payloads(params.sdp_bytes, params.chat_bytes)
        self.prefix = "b" + _b36(os.getpid()) + _b36(int(time.time() * 1000) % 1679616)

    async def setup(self, conns: list[Conn]) -> bool:
        """Open every connection; on failure record ``fatal`` and return ``False``."""
        r = await self.pool.open_all(conns, self.p.concurrency, self.p.setup_timeout)
        self.result["setup"] = {
            "conns": len(conns), "ok": r["ok"], "failed": r["failed"], "seconds": r3(r["seconds"]),
            "conns_per_s": r3(r["ok"] / r["seconds"]) if r["seconds"] > 0 else None,
        }
        if r["failed"]:
            self.result["fatal"] = "connection setup failed"
            await self.pool.close_all(5)
            return False
        await self.pool.wait_quiet(0.3, 10)
        return True


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if not n:
            return out


async def open_loop(total: int, rate: float, t0: float, limit: float, send: Callable[[int, float], None]) -> None:
    """Call ``send(k, t_sched)`` for k in 0..total-1 at ``t0 + k/rate`` on a 1 ms tick,
    whatever the replies do; stop at ``limit`` (a perf_counter time) in any case."""
    k = 0
    while k < total:
        t = now()
        due = min(total, math.floor((t - t0) * rate) + 1)
        while k < due:
            send(k, t0 + k / rate)
            k += 1
        if t > limit:
            break
        await asyncio.sleep(0.001)


class _Directed:
    """Shared state of the relay and rate scenarios."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        p = ctx.p
        self.conns = []
        for i in range(p.pairs):
            self.conns.append(Conn(2 * i, f"{ctx.prefix}a{i}"))
            self.conns.append(Conn(2 * i + 1, f"{ctx.prefix}b{i}"))
        self.ledger = DirectedLedger([c.id for c in self.conns], ctx.payloads, ctx.errors)
        self.win0 = self.win1 = math.inf
        self.closed_loop = False
        self.running = False
        self.sent = 0
        self.recv_in_win = 0
        self.lat, self.lat_send, self.send_lag = Samples(), Samples(), Samples()
        ctx.pool.on_data = self.on_data

    def send(self, src: int, kind: int, t_sched: Optional[float] = None) -> None:
        """Send one offer (kind 0) or answer (1) from connection ``src`` to its partner."""
        t = now()
        seq = self.ledger.send(src, src ^ 1, kind, int(t * 1e6), t, t if t_sched is None else t_sched)
        if self.conns[src].send(self.ledger.wire(seq)):
            self.sent += 1
        else:
            self.ledger.unsent(seq)
            self.ctx.errors["send_on_closed"] += 1
        if t_sched is not None and self.win0 <= t_sched < self.win1:
            self.send_lag.add((t - t_sched) * 1000.0)

    def on_data(self, c: Conn, m: dict) -> None:
        """Check a received message against the ledger; in closed loop, reply to it."""
        typ = m.get("type")
        if typ == "offer":
            kind = 0
        elif typ == "answer":
            kind = 1
        else:
            if typ == "error":
                self.ctx.pool.server_error(m)
            else:
                self.ctx.pool.ignore(typ)
            return
        body = m.get(typ)
        seq = self.ledger.receive(c.idx, m.get("from"), kind, body.get("sdp") if isinstance(body, dict) else None)
        if seq < 0:
            return
        t = now()
        if self.win0 <= t < self.win1:
            self.recv_in_win += 1
        ts = self.ledger.t_sched[seq]
        if self.win0 <= ts < self.win1:
            self.lat.add((t - ts) * 1000.0)
            self.lat_send.add((t - self.ledger.t_send[seq]) * 1000.0)
        if self.closed_loop and self.running:
            self.send(c.idx, 1 - kind)

    async def drain(self) -> int:
        """Wait up to ``--drain`` seconds for messages in flight; return the missing count."""
        t0 = now()
        while self.ledger.pending > 0 and now() - t0 < self.ctx.p.drain:
            await asyncio.sleep(0.02)
        return self.ledger.finish()


async def relay(ctx: Context) -> None:
    """Closed loop: each pair keeps ``window`` offers in flight; each answer triggers a new offer."""
    p, res = ctx.p, ctx.result
    res.update(pairs=p.pairs, conns=2 * p.pairs, window=p.window, sdp_bytes=p.sdp_bytes,
               duration_s=p.duration, warmup_s=p.warmup)
    d = _Directed(ctx)
    if not await ctx.setup(d.conns):
        return
    d.closed_loop = d.running = True
    for i in range(p.pairs):
        for _ in range(p.window):
            d.send(2 * i, 0)
    await asyncio.sleep(p.warmup)
    d.win0 = now()
    meter = Meter(ctx.server_pid)
    await asyncio.sleep(p.duration)
    d.win1 = now()
    met = meter.end()
    d.running = False
    missing = await d.drain()
    res.update(met)
    res.update(msgs_sent=d.sent, msgs_recv_in_window=d.recv_in_win,
               relayed_per_s=r3(d.recv_in_win / met["seconds"]), lat_ms=d.lat.summary(), missing=missing)
    await ctx.pool.close_all()


async def rate(ctx: Context) -> None:
    """Open loop at ``rate`` msgs/s; latency from the scheduled send time."""
    p, res = ctx.p, ctx.result
    res.update(pairs=p.pairs, conns=2 * p.pairs, target_rate=p.rate, sdp_bytes=p.sdp_bytes,
               duration_s=p.duration, warmup_s=p.warmup)
    d = _Directed(ctx)
    if not await ctx.setup(d.conns):
        return
    total = round(p.rate * (p.warmup + p.duration))
    t0 = now() + 0.005
    d.win0, d.win1 = t0 + p.warmup, t0 + p.warmup + p.duration
    d.running = True
    meter: list[Meter] = []

    def send(k: int, t_sched: float) -> None:
        if not meter and t_sched >= d.win0:
            meter.append(Meter(ctx.server_pid))
        pair, direction = k % p.pairs, (k // p.pairs) & 1
        d.send(2 * pair + direction, direction, t_sched)

    await open_loop(total, p.rate, t0, d.win1 + 5, send)
    met = (meter[0] if meter else Meter(ctx.server_pid)).end()
    d.running = False
    missing = await d.drain()
    res.update(met)
    res.update(msgs_sent=d.sent, msgs_recv_in_window=d.recv_in_win,
               sent_rate=r3(d.sent / (p.warmup + p.duration)), achieved_rate=r3(d.recv_in_win / p.duration),
               lat_ms=d.lat.summary(), lat_from_send_ms=d.lat_send.summary(),
               send_lag_ms=d.send_lag.summary(), missing=missing)
    await ctx.pool.close_all()


async def connect(ctx: Context) -> None:
    """Open ``conns`` connections with ``concurrency``, each registered, and hold them."""
    p, res = ctx.p, ctx.result
    res.update(conns=p.conns, concurrency=p.concurrency)
    before = rss_kib(ctx.server_pid)
    conns = [Conn(i, f"{ctx.prefix}c{i}") for i in range(p.conns)]
    meter = Meter(ctx.server_pid)
    r = await ctx.pool.open_all(conns, p.concurrency, p.setup_timeout)
    met = meter.end()
    await ctx.pool.wait_quiet(0.5, 15)
    if p.hold > 0:
        await asyncio.sleep(p.hold)
    after = rss_kib(ctx.server_pid)
    met.pop("seconds")
    res.update(met)
    res.update(ok_conns=r["ok"], failed=r["failed"], seconds=r3(r["seconds"]),
               conns_per_s=r3(r["ok"] / r["seconds"]) if r["seconds"] > 0 else None,
               setup_lat_ms=r["lat"].summary(), msgs_received=ctx.pool.rx_total,
               server_rss_kib={"before": before, "after": after},
               kib_per_conn=r3((after - before) / r["ok"]) if before is not None and after is not None and r["ok"] else None)
    await ctx.pool.close_all(15)


async def idle(ctx: Context) -> None:
    """Hold ``conns`` registered connections idle for ``idle_seconds``: memory and idle CPU."""
    p, res = ctx.p, ctx.result
    res.update(conns=p.conns, concurrency=p.concurrency, idle_s=p.idle_seconds)
    before = rss_kib(ctx.server_pid)
    conns = [Conn(i, f"{ctx.prefix}i{i}") for i in range(p.conns)]
    if not await ctx.setup(conns):
        return
    await ctx.pool.wait_quiet(0.5, 15)
    settled = rss_kib(ctx.server_pid)
    meter = Meter(ctx.server_pid)
    rx0 = ctx.pool.rx_total
    await asyncio.sleep(p.idle_seconds)
    met = meter.end()
    after = rss_kib(ctx.server_pid)
    alive = sum(1 for c in conns if not c.closed)
    res.update(met)
    res.update(alive=alive, msgs_while_idle=ctx.pool.rx_total - rx0,
               server_rss_kib={"before": before, "settled": settled, "after": after},
               kib_per_conn=r3((after - before) / len(conns)) if before is not None and after is not None else None)
    await ctx.pool.close_all(15)


async def fanout(ctx: Context) -> None:
    """R rooms x M members; chats open loop at ``chat_rate``; every other member must get each."""
    p, res = ctx.p, ctx.result
    R, M = p.rooms, p.members
    res.update(rooms=R, members=M, conns=R * M, chat_rate=p.chat_rate, chat_bytes=p.chat_bytes,
               duration_s=p.duration, warmup_s=p.warmup)
    room_ids = [f"{ctx.prefix}room{r}" for r in range(R)]
    conns = [Conn(r * M + j, f"{ctx.prefix}u{r}x{j}", room_ids[r]) for r in range(R) for j in range(M)]
    ledger = ChatLedger([c.id for c in conns], [i // M for i in range(R * M)], [i % M for i in range(R * M)],
                        room_ids, M, ctx.payloads, ctx.errors)
    if not await ctx.setup(conns):
        return
    win = [math.inf, math.inf]
    stat = {"sent": 0, "in_win": 0}
    lat, lat_send, send_lag = Samples(), Samples(), Samples()

    def on_data(c: Conn, m: dict) -> None:
        typ = m.get("type")
        if typ != "chat":
            if typ == "error":
                ctx.pool.server_error(m)
            else:
                ctx.pool.ignore(typ)
            return
        seq = ledger.receive(c.idx, m.get("roomId"), m.get("sender"), m.get("message"))
        if seq < 0:
            return
        t = now()
        if win[0] <= t < win[1]:
            stat["in_win"] += 1
        ts = ledger.t_sched[seq]
        if win[0] <= ts < win[1]:
            lat.add((t - ts) * 1000.0)
            lat_send.add((t - ledger.t_send[seq]) * 1000.0)

    ctx.pool.on_data = on_data
    total = round(p.chat_rate * (p.warmup + p.duration))
    t0 = now() + 0.005
    win[0], win[1] = t0 + p.warmup, t0 + p.warmup + p.duration
    meter: list[Meter] = []

    def send(k: int, t_sched: float) -> None:
        if not meter and t_sched >= win[0]:
            meter.append(Meter(ctx.server_pid))
        c = conns[(k % R) * M + (k // R) % M]
        t = now()
        seq = ledger.send(c.idx, int(t * 1e6), t, t_sched)
        if c.send(ledger.wire(seq)):
            stat["sent"] += 1
        else:
            ledger.unsent(seq)
            ctx.errors["send_on_closed"] += 1
        if win[0] <= t_sched < win[1]:
            send_lag.add((t - t_sched) * 1000.0)

    await open_loop(total, p.chat_rate, t0, win[1] + 5, send)
    met = (meter[0] if meter else Meter(ctx.server_pid)).end()
    td = now()
    while ledger.outstanding > 0 and now() - td < p.drain:
        await asyncio.sleep(0.02)
    missing = ledger.finish()
    ctx.ignored.update(ledger.ignored)
    res.update(met)
    res.update(chats_sent=stat["sent"], deliveries=ledger.delivered, deliveries_expected=ledger.expected,
               deliveries_per_s=r3(stat["in_win"] / p.duration), lat_ms=lat.summary(),
               lat_from_send_ms=lat_send.summary(), send_lag_ms=send_lag.summary(), missing=missing)
    await ctx.pool.close_all()


SCENARIOS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "connect": connect, "idle": idle, "relay": relay, "rate": rate, "fanout": fanout,
}
"""Scenario name -> coroutine function; ``all`` runs them in this order."""
