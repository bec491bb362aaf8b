"""``python -m signaling.bench.hop``: the cross-node hop alone, without WebSockets.

Two cluster nodes (:class:`signaling.cluster.RedisBackend`) in this process share a private
redis-server; node A routes a 1 KiB offer to an id held by node B at a fixed rate (open loop), and
each delivery on B is timed from the moment A called ``route``. That is what a message between
two nodes adds to a message within one: the ROUTE script, the publish, and both Python ends.
Prints one JSON line: latency percentiles (ms), this process's CPU per hop (both nodes, µs),
Redis's CPU per hop, and Redis command calls per hop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional, Sequence

from signaling.bench.cluster import RedisProcess
from signaling.bench.procfs import CLK_TCK, proc_ticks
from signaling.bench.stats import Samples, r3

PAYLOAD = (b'{"type":"offer","to":"b","offer":{"type":"offer","sdp":"' + b"x" * 1000
           + b'"},"from":"a"}')


def measure(count: int, rate: float, warmup: int) -> dict:
    """Run the hop ``count`` times at ``rate`` per second on the Twisted reactor; the result dict."""
    from twisted.internet import defer, reactor, task
    from zope.interface import implementer

    from signaling.cluster import INodeListener, RedisBackend, parse_redis_url

    @implementer(INodeListener)
    class Node:
        def __init__(self) -> None:
            self.sent: list[float] = []
            self.lat = Samples()
            self.delivered = 0

        def deliver(self, to: str, data: bytes) -> None:
            t = time.perf_counter()
            started = self.sent[self.delivered]
            self.delivered += 1
            if self.delivered > warmup:
                self.lat.add((t - started) * 1000.0)

        def kick(self, identity: str, conn: str) -> None: ...
        def presence(self, data: bytes, origin: str, exclude_id: str) -> None: ...
        def room_event(self, room: str, data: bytes, origin: str, exclude_id: str) -> None: ...
        def backend_lost(self) -> None: ...
        def backend_restored(self) -> None: ...

    out: dict[str, Any] = {"scenario": "cluster-hop", "count": count, "rate": rate, "warmup": warmup}
    redis = RedisProcess(pin_core=None)
    redis.start()

    @defer.inlineCallbacks
    def run() -> Any:
        address = parse_redis_url(redis.url)
        receiver = Node()
        a = RedisBackend(address, reactor, Node(), node_id="hop-a")
        b = RedisBackend(address, reactor, receiver, node_id="hop-b")
        try:
            a.start()
            b.start()
            yield a.when_available(10)
            yield b.when_available(10)
            yield b.claim("b", "1", False, 0)
            total = warmup + count
            t0 = time.perf_counter()
            k = 0
            failed = [0]

            def lost(_: Any) -> None:
                failed[0] += 1

            while k < total:
                due = t0 + k / rate
                while k < total and time.perf_counter() >= due:
                    receiver.sent.append(time.perf_counter())
                    a.route("b", PAYLOAD, "m", 1.0, "a").addErrback(lost)
                    k += 1
                    due = t0 + k / rate
                    if k == warmup:
                        calls0, cpu0, ticks0 = redis.commandstats(), time.process_time(), proc_ticks(redis.pid)
                yield task.deferLater(reactor, 0.0005, lambda: None)
            deadline = time.perf_counter() + 10
            while receiver.delivered < total and time.perf_counter() < deadline:
                yield task.deferLater(reactor, 0.01, lambda: None)
            cpu1, ticks1, calls1 = time.process_time(), proc_ticks(redis.pid), redis.commandstats()
            out.update(delivered=receiver.delivered, failed=failed[0], lat_ms=receiver.lat.summary(),
                       python_cpu_us_per_hop=r3(1e6 * (cpu1 - cpu0) / count),
                       redis_cpu_us_per_hop=r3(1e6 * (ticks1 - ticks0) / CLK_TCK / count)
                       if ticks0 is not None and ticks1 is not None else None,
                       redis_calls_per_hop={n: r3((c - calls0.get(n, 0)) / count)
                                            for n, c in sorted(calls1.items()) if c != calls0.get(n, 0)})
            out["ok"] = receiver.delivered == total and not failed[0]
        finally:
            yield a.stop(retire=False)
            yield b.stop(retire=False)

    def done(result: Any) -> Any:
        if hasattr(result, "getErrorMessage"):
            out["ok"] = False
            out["fatal"] = result.getErrorMessage()
        reactor.stop()

    try:
        reactor.callWhenRunning(lambda: run().addBoth(done))
        reactor.run()
    finally:
        redis.close()
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; 0 when every hop was delivered."""
    parser = argparse.ArgumentParser(prog="python -m signaling.bench.hop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=4000, help="hops measured [4000]")
    parser.add_argument("--rate", type=float, default=2000.0, help="hops per second [2000]")
    parser.add_argument("--warmup", type=int, default=500, help="hops sent first and not measured [500]")
    ns = parser.parse_args(argv)
    result = measure(ns.count, ns.rate, ns.warmup)
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
