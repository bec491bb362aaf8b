"""
Measure the offline enqueue rate of the SQLite store.

    python -m signaling.bench.store --db /tmp/bench.sqlite -n 20000

Opens (or creates) the store, then enqueues ``-n`` messages for
``--peers`` recipients, ``--burst`` per reactor turn (as if that many
sockets had delivered a message in the same turn), as fast as the reactor
allows, and waits until every enqueue Deferred fired, i.e. every message is
committed. Prints messages per second, commits per second and the average
batch size (messages per commit).
"""

from __future__ import annotations

import argparse
import os
import time

from twisted.internet import defer, task

from ..sqlite_store import SqliteStore
from ..store import StoreLimits


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m signaling.bench.store")
    parser.add_argument("--db", required=True, help="SQLite file (created if missing)")
    parser.add_argument("-n", type=int, default=20000, help="messages to enqueue")
    parser.add_argument("--peers", type=int, default=1000, help="distinct recipients")
    parser.add_argument("--burst", type=int, default=100, help="enqueues per reactor turn")
    parser.add_argument("--payload", type=int, default=200, help="payload characters")
    parser.add_argument("--fresh", action="store_true", help="delete --db first")
    return parser.parse_args(argv)


@defer.inlineCallbacks
def run(reactor, argv: list[str]):
    """Run the benchmark on ``reactor`` and print its figures."""
    args = parse_args(argv)
    if args.fresh:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(args.db + suffix):
                os.remove(args.db + suffix)
    limits = StoreLimits(max_per_peer=args.n, max_bytes=2**40, max_peers=args.peers + 1)
    store = SqliteStore.open(args.db, limits, reactor)
    payload = "x" * args.payload
    stamp = f"{time.time_ns()}"
    results: list[defer.Deferred] = []
    all_issued: defer.Deferred = defer.Deferred()
    commits_before = store.commits
    started = time.perf_counter()

    def turn(start: int) -> None:
        end = min(start + args.burst, args.n)
        now = reactor.seconds()
        for i in range(start, end):
            results.append(
                store.enqueue(
                    f"peer-{i % args.peers}",
                    f"{stamp}-{i}",
                    {"type": "message", "from": "bench", "payload": payload, "timestamp": i},
                    now,
                )
            )
        if end < args.n:
            reactor.callLater(0, turn, end)
        else:
            all_issued.callback(None)

    turn(0)
    yield all_issued
    yield defer.gatherResults(results, consumeErrors=True)
    elapsed = time.perf_counter() - started
    commits = store.commits - commits_before
    yield store.close()
    print(
        f"{args.n} messages, {args.peers} peers, burst {args.burst}: "
        f"{elapsed:.2f} s, {args.n / elapsed:,.0f} msgs/s, "
        f"{commits} commits ({commits / elapsed:,.1f} commits/s), "
        f"{args.n / max(commits, 1):.1f} msgs per commit"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m signaling.bench.store``."""
    import sys

    task.react(run, [sys.argv[1:] if argv is None else argv])


if __name__ == "__main__":
    main()
