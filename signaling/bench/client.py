"""Client connections on picows: open many with bounded concurrency, route frames, close them all."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Callable, Optional

from picows import WSListener, WSMsgType, WSCloseCode, ws_connect

from signaling.bench.stats import Samples

NOISE = (b'"peer-status"', b'"user-joined"', b'"user-left"')


class Conn:
    """One client connection: an index, a peer/user id and, for rooms, a room id."""

    __slots__ = ("idx", "id", "room", "url", "transport", "ready", "closed", "waiter", "_parts")

    def __init__(self, idx: int, peer_id: str, room: Optional[str] = None, url: Optional[str] = None) -> None:
        self.idx = idx
        #: Where this connection goes (``None``: the pool's URL).
        self.url = url
        self.id = peer_id
        self.room = room
        self.transport = None
        self.ready = False
        self.closed = False
        self.waiter: Optional[asyncio.Future] = None
        self._parts: list[bytes] = []

    def send(self, data: bytes) -> bool:
        """Send one text frame; ``False`` when the connection is gone."""
        t = self.transport
        if t is None or self.closed:
            return False
        t.send(WSMsgType.TEXT, data)
        return True


class Pool:
    """All client connections of one scenario, with shared error counters.

    ``on_data(conn, message)`` receives every parsed message that arrives once ``conn`` is ready.
    """

    def __init__(self, url: str, errors: Counter, ignored: Counter) -> None:
        self.url = url
        self.errors = errors
        self.ignored = ignored
        self.conns: list[Conn] = []
        self.rx_total = 0
        self.tearing_down = False
        self.on_data: Callable[[Conn, dict], None] = self._ignore

    def _ignore(self, conn: Conn, m: dict) -> None:
        if m.get("type") == "error":
            self.server_error(m)
        else:
            self.ignore(m.get("type"))

    def ignore(self, kind: object) -> None:
        """Count a message of a type the scenario does not use (capped to 20 distinct types)."""
        key = str(kind)[:40]
        if key in self.ignored or len(self.ignored) < 20:
            self.ignored[key] += 1

    def server_error(self, m: dict) -> None:
        """Count an ``error`` message from the server."""
        text = m.get("code") or m.get("message") or m.get("error") or "error"
        self.errors[f"server_error:{str(text)[:40]}"] += 1

    def message(self, conn: Conn, data: bytes) -> None:
        """Handle one complete message received on ``conn``."""
        self.rx_total += 1
        if len(data) < 600:
            for n in NOISE:
                if n in data:
                    self.ignore(n[1:-1].decode())
                    return
        try:
            m = json.loads(data)
        except ValueError:
            self.errors["bad_json"] += 1
            return
        if not isinstance(m, dict):
            self.errors["bad_json"] += 1
            return
        if conn.ready:
            self.on_data(conn, m)
            return
        kind = m.get("type")
        w = conn.waiter
        if conn.room is None:
            done = kind == "registered" and m.get("peerId") == conn.id
        else:
            done = kind == "join-success" and m.get("roomId") == conn.room
        if done:
            conn.ready = True
            if w is not None and not w.done():
                w.set_result(True)
        elif kind == "error":
            self.server_error(m)
            if w is not None and not w.done():
                w.set_result(False)
        else:
            self.ignore(kind)

    def closed(self, conn: Conn) -> None:
        """``conn`` was disconnected."""
        conn.closed = True
        if conn.waiter is not None and not conn.waiter.done():
            self.errors["closed_before_ready"] += 1
            conn.waiter.set_result(False)
        elif conn.ready and not self.tearing_down:
            self.errors["unexpected_close"] += 1

    async def _open(self, conn: Conn, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        conn.waiter = loop.create_future()
        try:
            await asyncio.wait_for(
                ws_connect(lambda: _Listener(self, conn), conn.url or self.url,
                           websocket_handshake_timeout=timeout),
                timeout,
            )
        except asyncio.TimeoutError:
            self.errors["connect_timeout"] += 1
            return False
        except Exception as e:  # noqa: BLE001 - every failure is counted, none is fatal here
            self.errors[f"connect_error:{type(e).__name__}"] += 1
            return False
        if conn.room is None:
            hello = {"type": "register", "peerId": conn.id, "deviceType": "desktop", "deviceInfo": {}}
        else:
            hello = {"type": "join-room", "roomId": conn.room, "sender": conn.id}
        conn.send(json.dumps(hello, separators=(",", ":")).encode())
        try:
            return await asyncio.wait_for(asyncio.shield(conn.waiter), timeout)
        except asyncio.TimeoutError:
            self.errors["setup_timeout"] += 1
            return False

    async def open_all(self, conns: list[Conn], concurrency: int, timeout: float) -> dict:
        """Open, register (or join) every connection, at most ``concurrency`` at a time.

        Returns ``{"ok", "failed", "seconds", "lat"}`` (``lat``: setup latency samples, ms).
        """
        self.conns = conns
        lat = Samples()
        sem = asyncio.Semaphore(max(1, concurrency))
        t0 = time.perf_counter()
        deadline = t0 + timeout

        async def one(c: Conn) -> bool:
            async with sem:
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.errors["setup_timeout"] += 1
                    return False
                t = time.perf_counter()
                good = await self._open(c, left)
                if good:
                    lat.add((time.perf_counter() - t) * 1000.0)
                return good

        results = await asyncio.gather(*(one(c) for c in conns))
        ok = sum(1 for r in results if r)
        return {"ok": ok, "failed": len(conns) - ok, "seconds": time.perf_counter() - t0, "lat": lat}

    async def wait_quiet(self, quiet: float = 0.5, limit: float = 15.0) -> None:
        """Wait (at most ``limit`` s) until no message arrived for ``quiet`` seconds."""
        t0 = last_change = time.perf_counter()
        last = self.rx_total
        while time.perf_counter() - t0 < limit:
            await asyncio.sleep(0.1)
            if self.rx_total != last:
                last, last_change = self.rx_total, time.perf_counter()
            elif time.perf_counter() - last_change >= quiet:
                return

    async def close_all(self, timeout: float = 10.0) -> None:
        """Close every connection (close handshake, then a hard disconnect after ``timeout``)."""
        self.tearing_down = True
        for c in self.conns:
            if c.transport is not None and not c.closed:
                try:
                    c.transport.send_close(WSCloseCode.OK)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if all(c.closed or c.transport is None for c in self.conns):
                break
            await asyncio.sleep(0.05)
        for c in self.conns:
            if c.transport is not None and not c.closed:
                c.transport.disconnect()
        await asyncio.sleep(0)


class _Listener(WSListener):
    """Routes picows callbacks of one connection to its :class:`Pool`."""

    def __init__(self, pool: Pool, conn: Conn) -> None:
        super().__init__()
        self.pool = pool
        self.conn = conn

    def on_ws_connected(self, transport) -> None:
        self.conn.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        t = frame.msg_type
        if t == WSMsgType.TEXT or t == WSMsgType.BINARY or t == WSMsgType.CONTINUATION:
            data = frame.get_payload_as_bytes()
            if not frame.fin:
                self.conn._parts.append(data)
                return
            if self.conn._parts:
                self.conn._parts.append(data)
                data = b"".join(self.conn._parts)
                self.conn._parts.clear()
            self.pool.message(self.conn, data)
        elif t == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        self.pool.closed(self.conn)
