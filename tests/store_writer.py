"""
Helper process for the durability test: enqueue messages into the SQLite
offline store without pause and print each message id on its own line only
after its Deferred fired (the entry is committed). The test kills it with
SIGKILL at some moment and checks every printed id survived.

Usage: python tests/store_writer.py DBPATH
"""

import sys

from twisted.internet import defer, task

from signaling.sqlite_store import SqliteStore
from signaling.store import StoreLimits

RECIPIENTS = 7
PER_TURN = 40
CAP = 200_000


def main(reactor, path):
    """Enqueue until killed (or CAP messages), reporting durable ids."""
    limits = StoreLimits(max_per_peer=CAP, max_bytes=10**9)
    store = SqliteStore.open(path, limits, reactor)
    finished = defer.Deferred()
    counter = iter(range(CAP))

    def report(entry):
        sys.stdout.write(entry.message_id + "\n")
        sys.stdout.flush()

    def turn():
        for _ in range(PER_TURN):
            i = next(counter, None)
            if i is None:
                store.close().chainDeferred(finished)
                return
            store.enqueue(
                f"peer-{i % RECIPIENTS}",
                f"m{i}",
                {"type": "message", "from": "writer", "payload": {"n": i}},
                reactor.seconds(),
            ).addCallback(report)
        reactor.callLater(0, turn)

    turn()
    return finished


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
