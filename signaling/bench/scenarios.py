"""The scenarios: relay, rate, connect, fanout, idle and offline. Each fills one result dict."""

from __future__ import annotations

import asyncio
import math
import os
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence, Union

from signaling.bench.client import Conn, Pool
from signaling.bench.ledger import PENDING, UNSENT, ChatLedger, DirectedLedger
from signaling.bench.payload import Payloads, sdp_seq
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
    senders: int = 10
    offline_window: int = 32
    baseline: float = 2.0
    check_targets: int = 10
    offline_budget: int = 200_000
    #: Which offline store the server uses (set by the command line for ``offline``).
    store: Optional[str] = None

    def deadline(self, scenario: str) -> float:
        """A hard upper bound in seconds on one scenario's run time."""
        extra = self.baseline + 2 * self.drain + self.setup_timeout if scenario == "offline" else 0.0
        return (2 * self.setup_timeout + self.warmup + self.duration + self.drain + self.hold + self.idle_seconds
                + extra + 60)


class Context:
    """What a scenario needs: target, server pid, parameters, result and counters."""

    def __init__(self, url: str, server_pid: Union[int, Sequence[int], None], params: Params, result: dict,
                 urls: Optional[Sequence[str]] = None, redis: Any = None) -> None:
        self.url = url
        #: The servers of a cluster: the first end of each pair goes to the first, the second end to the last.
        self.urls = list(urls) if urls else [url]
        #: The cluster's Redis (:class:`signaling.bench.cluster.RedisProcess`), if any: its calls are counted.
        self.redis = redis
        self.server_pid = server_pid
        self.p = params
        self.result = result
        self.errors: Counter = Counter()
        self.ignored: Counter = Counter()
        self.pool = Pool(url, self.errors, self.ignored)
        self.payloads = Payloads(params.sdp_bytes, params.chat_bytes)
        self.prefix = "b" + _b36(os.getpid()) + _b36(int(time.time() * 1000) % 1679616)

    def meter(self) -> Meter:
        """A :class:`Meter` of the server processes (and of Redis's command calls) from now."""
        return Meter(self.server_pid, self.redis)

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


#: Seconds per slice of the rate scenario's latency timeline.
TIMELINE_SLICE = 0.5


class _Directed:
    """Shared state of the relay and rate scenarios."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        p = ctx.p
        self.conns = []
        first, second = ctx.urls[0], ctx.urls[-1]
        for i in range(p.pairs):
            self.conns.append(Conn(2 * i, f"{ctx.prefix}a{i}", url=first))
            self.conns.append(Conn(2 * i + 1, f"{ctx.prefix}b{i}", url=second))
        self.ledger = DirectedLedger([c.id for c in self.conns], ctx.payloads, ctx.errors)
        self.win0 = self.win1 = math.inf
        self.closed_loop = False
        self.running = False
        self.sent = 0
        self.recv_in_win = 0
        self.lat, self.lat_send, self.send_lag = Samples(), Samples(), Samples()
        #: latency samples by slice of the window (:data:`TIMELINE_SLICE`), by scheduled time
        self.timeline: dict[int, Samples] = {}
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
            latency = (t - ts) * 1000.0
            self.lat.add(latency)
            self.lat_send.add((t - self.ledger.t_send[seq]) * 1000.0)
            self.timeline.setdefault(int((ts - self.win0) / TIMELINE_SLICE), Samples()).add(latency)
        if self.closed_loop and self.running:
            self.send(c.idx, 1 - kind)

    def lat_timeline(self) -> list[list[Optional[float]]]:
        """``[start_s, n, p50, p99, max]`` of each slice of the window: the tail over time."""
        rows = []
        for index in sorted(self.timeline):
            summary = self.timeline[index].summary()
            rows.append([r3(index * TIMELINE_SLICE), summary["n"], summary["p50"],
                         summary["p99"], summary["max"]])
        return rows

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
    meter = ctx.meter()
    await asyncio.sleep(p.duration)
    d.win1 = now()
    met = meter.end()
    d.running = False
    missing = await d.drain()
    res.update(met)
    res.update(msgs_sent=d.sent, msgs_recv_in_window=d.recv_in_win,
               relayed_per_s=r3(d.recv_in_win / met["seconds"]), lat_ms=d.lat.summary(), missing=missing)
    _redis_per_message(res, d.recv_in_win)
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
            meter.append(ctx.meter())
        pair, direction = k % p.pairs, (k // p.pairs) & 1
        d.send(2 * pair + direction, direction, t_sched)

    await open_loop(total, p.rate, t0, d.win1 + 5, send)
    met = (meter[0] if meter else ctx.meter()).end()
    d.running = False
    missing = await d.drain()
    res.update(met)
    res.update(msgs_sent=d.sent, msgs_recv_in_window=d.recv_in_win,
               sent_rate=r3(d.sent / (p.warmup + p.duration)), achieved_rate=r3(d.recv_in_win / p.duration),
               lat_ms=d.lat.summary(), lat_from_send_ms=d.lat_send.summary(),
               send_lag_ms=d.send_lag.summary(), lat_timeline_ms=d.lat_timeline(), missing=missing)
    _redis_per_message(res, d.recv_in_win)
    await ctx.pool.close_all()


def _redis_per_message(res: dict, relayed: int) -> None:
    """Redis command calls per relayed message in the window (cluster scenarios only)."""
    calls = res.get("redis_calls")
    if calls is not None and relayed:
        res["redis_calls_per_msg"] = {name: r3(n / relayed) for name, n in calls.items()}


async def connect(ctx: Context) -> None:
    """Open ``conns`` connections with ``concurrency``, each registered, and hold them."""
    p, res = ctx.p, ctx.result
    res.update(conns=p.conns, concurrency=p.concurrency)
    before = rss_kib(ctx.server_pid)
    conns = [Conn(i, f"{ctx.prefix}c{i}") for i in range(p.conns)]
    meter = ctx.meter()
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
    meter = ctx.meter()
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
            meter.append(ctx.meter())
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
    met = (meter[0] if meter else ctx.meter()).end()
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


#: Messages sent to one offline target id: well under the server's default per-peer cap (100).
PER_TARGET = 50

#: Scenarios that must run against the durable SQLite store: the command line gives the server
#: it starts a database file in a temporary directory (removed afterwards) instead of ``:memory:``.
FILE_STORE = frozenset({"offline"})

_QUEUED, _REFUSED = 2, 3


class _Online(_Directed):
    """The ``rate`` traffic, with a second latency window (the baseline before the burst)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.base0 = self.base1 = math.inf
        self.base_lat = Samples()

    def on_data(self, c: Conn, m: dict) -> None:
        """As :meth:`_Directed.on_data`; a correct delivery scheduled in the baseline is timed too."""
        t = now()
        n = self.ledger.delivered
        super().on_data(c, m)
        if self.ledger.delivered != n:
            ts = self.ledger.t_sched[sdp_seq(m[m["type"]]["sdp"])]
            if self.base0 <= ts < self.base1:
                self.base_lat.add((t - ts) * 1000.0)


class _Offline:
    """Senders that keep ``offline_window`` messages each in flight to ids that never connect,
    and the ledger of their ``peer-offline`` replies: each messageId must come back exactly once,
    ``queued:true``, for the right peer."""

    def __init__(self, ctx: Context, first_idx: int) -> None:
        self.ctx = ctx
        p = ctx.p
        self.conns = [Conn(first_idx + s, f"{ctx.prefix}s{s}") for s in range(p.senders)]
        self.first_idx = first_idx
        self.mid_prefix = f"{ctx.prefix}m"
        self.state = array("b")
        self.sender = array("i")
        self.k = array("i")
        self.ts = array("q")
        self.t_send = array("d")
        self.per_sender = [0] * p.senders
        self.pending = 0
        self.queued = 0
        self.in_win = 0
        self.win0 = self.win1 = math.inf
        self.t_last = 0.0
        self.running = False
        self.budget_hit = False
        self.ack = Samples()

    def target(self, s: int, k: int) -> str:
        """The offline id that sender ``s``'s ``k``-th message goes to."""
        return f"{self.ctx.prefix}t{s}x{k // PER_TARGET}"

    def wire(self, seq: int) -> bytes:
        """The wire text of offline message ``seq``."""
        s = self.sender[seq]
        text = self.ctx.payloads.chat(seq, self.ts[seq])
        return (f'{{"type":"message","to":"{self.target(s, self.k[seq])}","messageId":"{self.mid_prefix}{seq}",'
                f'"payload":"{text}"}}').encode()

    def send(self, s: int) -> None:
        """Send sender ``s``'s next message, unless the run is over or the budget is spent."""
        if not self.running:
            return
        if len(self.state) >= self.ctx.p.offline_budget:
            self.budget_hit = True
            return
        seq = len(self.state)
        t = now()
        self.state.append(PENDING)
        self.sender.append(s)
        self.k.append(self.per_sender[s])
        self.per_sender[s] += 1
        self.ts.append(int(t * 1e6))
        self.t_send.append(t)
        self.pending += 1
        if not self.conns[s].send(self.wire(seq)):
            self.state[seq] = UNSENT
            self.pending -= 1
            self.ctx.errors["send_on_closed"] += 1

    def start(self) -> None:
        """Fill every sender's window."""
        self.running = True
        for s in range(len(self.conns)):
            for _ in range(self.ctx.p.offline_window):
                self.send(s)

    def _seq(self, mid: object) -> int:
        if not isinstance(mid, str) or not mid.startswith(self.mid_prefix):
            return -1
        tail = mid[len(self.mid_prefix):]
        seq = int(tail) if tail.isdigit() else -1
        return seq if seq < len(self.state) else -1

    def on_data(self, c: Conn, m: dict) -> None:
        """Check a reply to a sender; each reply (good or bad) frees one place in its window."""
        typ = m.get("type")
        if typ == "error":
            self.ctx.pool.server_error(m)
            seq = self._seq(m.get("messageId"))
            if seq >= 0 and self.state[seq] == PENDING:
                self.state[seq] = _REFUSED
                self.pending -= 1
                self.send(c.idx - self.first_idx)
            return
        if typ != "peer-offline":
            self.ctx.pool.ignore(typ)
            return
        seq = self._seq(m.get("messageId"))
        errors = self.ctx.errors
        if seq < 0:
            errors["offline_unknown_id"] += 1
            return
        st = self.state[seq]
        if st != PENDING:
            errors["offline_duplicate_ack" if st in (_QUEUED, _REFUSED) else "unknown_seq"] += 1
            return
        s = self.sender[seq]
        self.pending -= 1
        if s != c.idx - self.first_idx:
            errors["offline_wrong_sender"] += 1
            self.state[seq] = _REFUSED
        elif m.get("peerId") != self.target(s, self.k[seq]):
            errors["offline_wrong_peer"] += 1
            self.state[seq] = _REFUSED
        elif m.get("queued") is not True:
            errors["offline_not_queued"] += 1
            self.state[seq] = _REFUSED
        else:
            self.state[seq] = _QUEUED
            self.queued += 1
            t = now()
            if self.win0 <= t < self.win1:
                self.in_win += 1
                self.t_last = t
                self.ack.add((t - self.t_send[seq]) * 1000.0)
        self.send(s)

    def finish(self) -> int:
        """Count the messages never answered as ``offline_unacked``; return how many."""
        missing = self.state.count(PENDING)
        if missing:
            self.ctx.errors["offline_unacked"] += missing
        return missing

    def sample(self, n: int) -> list[tuple[str, list[int]]]:
        """Up to ``n`` targets spread evenly over all senders and targets (full ones when there
        are enough), each with the seqs queued for it in the order they were sent."""
        per: dict[tuple[int, int], list[int]] = {}
        for seq in range(len(self.state)):
            if self.state[seq] == _QUEUED:
                s, k = self.sender[seq], self.k[seq]
                per.setdefault((s, k // PER_TARGET), []).append(seq)
        keys = sorted(per)
        full = [key for key in keys if len(per[key]) == PER_TARGET]
        if len(full) >= n:
            keys = full
        if n <= 0 or not keys:
            return []
        step = max(1, len(keys) // n)
        return [(self.target(s, j * PER_TARGET), per[(s, j)]) for s, j in keys[::step][:n]]


async def _check_stored(ctx: Context, off: _Offline) -> dict:
    """Register a sample of offline targets; each must get exactly its stored messages, in order."""
    p = ctx.p
    sample = off.sample(p.check_targets)
    out = {"targets": len(sample), "expected": sum(len(e) for _, e in sample), "delivered": 0,
           "lost": 0, "duplicate": 0, "unexpected": 0, "out_of_order": 0, "bad_message": 0}
    if not sample:
        return out
    pool = Pool(ctx.url, ctx.errors, ctx.ignored)
    conns = [Conn(i, t) for i, (t, _) in enumerate(sample)]
    got: list[list[int]] = [[] for _ in sample]

    def on_data(c: Conn, m: dict) -> None:
        typ = m.get("type")
        if typ != "offline-message":
            if typ == "error":
                pool.server_error(m)
            else:
                pool.ignore(typ)
            return
        seq = off._seq(m.get("messageId"))
        got[c.idx].append(seq)
        om = m.get("originalMessage")
        if seq < 0 or not isinstance(om, dict):
            return
        s = off.sender[seq]
        if (om.get("type") != "message" or om.get("to") != c.id or om.get("from") != off.conns[s].id
                or om.get("messageId") != f"{off.mid_prefix}{seq}"
                or om.get("payload") != ctx.payloads.chat(seq, off.ts[seq])):
            out["bad_message"] += 1

    pool.on_data = on_data
    r = await pool.open_all(conns, p.concurrency, p.setup_timeout)
    out["setup_failed"] = r["failed"]
    t0 = now()
    while any(len(g) < len(e) for g, (_, e) in zip(got, sample)) and now() - t0 < p.drain:
        await asyncio.sleep(0.02)
    await pool.wait_quiet(0.3, 5)
    await pool.close_all()
    for g, (_, expected) in zip(got, sample):
        want, have = set(expected), set(g)
        out["lost"] += len(want - have)
        out["duplicate"] += len(g) - len(have)
        out["unexpected"] += len(have - want)
        if list(dict.fromkeys(x for x in g if x in want)) != [x for x in expected if x in have]:
            out["out_of_order"] += 1
        out["delivered"] += len(want & have)
    for key in ("lost", "duplicate", "unexpected", "out_of_order", "bad_message"):
        if out[key]:
            ctx.errors[f"check_{key}"] += out[key]
    return out


async def offline(ctx: Context) -> None:
    """Online ``rate`` traffic throughout; after a baseline, a closed-loop burst of messages to
    offline ids (``senders`` x ``offline_window`` in flight); then a sample of targets is read back."""
    p, res = ctx.p, ctx.result
    res.update(pairs=p.pairs, conns=2 * p.pairs + p.senders, target_rate=p.rate, sdp_bytes=p.sdp_bytes,
               senders=p.senders, offline_window=p.offline_window, per_target=PER_TARGET,
               offline_budget=p.offline_budget, chat_bytes=p.chat_bytes, duration_s=p.duration,
               warmup_s=p.warmup, baseline_s=p.baseline,
               store=p.store or "the server's own store (--url)")
    d = _Online(ctx)
    off = _Offline(ctx, 2 * p.pairs)
    n_online = 2 * p.pairs

    def on_data(c: Conn, m: dict) -> None:
        if c.idx < n_online:
            d.on_data(c, m)
        else:
            off.on_data(c, m)

    ctx.pool.on_data = on_data
    if not await ctx.setup(d.conns + off.conns):
        return
    total = round(p.rate * (p.warmup + p.baseline + p.duration))
    t0 = now() + 0.005
    d.base0, d.base1 = t0 + p.warmup, t0 + p.warmup + p.baseline
    d.win0, d.win1 = d.base1, d.base1 + p.duration
    off.win0, off.win1 = d.win0, d.win1
    d.running = True

    def send(k: int, t_sched: float) -> None:
        pair, direction = k % p.pairs, (k // p.pairs) & 1
        d.send(2 * pair + direction, direction, t_sched)

    traffic = asyncio.ensure_future(open_loop(total, p.rate, t0, d.win1 + 5, send))
    await asyncio.sleep(max(0.0, d.base0 - now()))
    base_meter = ctx.meter()
    await asyncio.sleep(max(0.0, d.base1 - now()))
    base = base_meter.end()
    meter = ctx.meter()
    off.start()
    await asyncio.sleep(max(0.0, d.win1 - now()))
    off.running = False
    met = meter.end()
    await traffic
    d.running = False
    td = now()
    while (d.ledger.pending > 0 or off.pending > 0) and now() - td < p.drain:
        await asyncio.sleep(0.02)
    missing = d.ledger.finish()
    unacked = off.finish()
    await ctx.pool.close_all()
    active = (off.t_last - off.win0) if off.budget_hit else p.duration
    res.update(met)
    res.update(offline_sent=len(off.state), offline_queued=off.queued, offline_queued_in_window=off.in_win,
               offline_queued_per_s=r3(off.in_win / active) if active > 0 else None,
               offline_ack_ms=off.ack.summary(), offline_unacked=unacked, offline_budget_hit=off.budget_hit,
               offline_targets=sum(-(-n // PER_TARGET) for n in off.per_sender),
               msgs_sent=d.sent, msgs_recv_in_window=d.recv_in_win, achieved_rate=r3(d.recv_in_win / p.duration),
               lat_ms=d.lat.summary(), lat_from_send_ms=d.lat_send.summary(), send_lag_ms=d.send_lag.summary(),
               missing=missing, baseline_lat_ms=d.base_lat.summary(),
               baseline={k: base.get(k) for k in ("seconds", "lg_cpu_pct", "server_cpu_pct", "foreign_cpu_pct")})
    res["check"] = await _check_stored(ctx, off)


SCENARIOS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "connect": connect, "idle": idle, "relay": relay, "rate": rate, "fanout": fanout, "offline": offline,
}
"""Scenario name -> coroutine function; ``all`` runs them in this order."""
