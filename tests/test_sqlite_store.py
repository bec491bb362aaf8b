"""
Tests for the durable offline store, on real SQLite files in temp dirs.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

from twisted.internet import defer
from twisted.trial import unittest

from processes import environment
from signaling import sqlite_store
from signaling.sqlite_store import SCHEMA_VERSION, SqliteStore, StoreOpenError, read_schema
from signaling.store import IOfflineStore, QueueFull, StoreLimits

#: The helper process that writes to the store until it is killed.
STORE_WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "store_writer.py")
NOW = 1_700_000_000.0


def the_reactor():
    """The running reactor (imported late, as everywhere in the project)."""
    from twisted.internet import reactor

    return reactor


def msg(n, **extra):
    """A message as a recipient would receive it."""
    return {"type": "message", "from": "alice", "payload": {"n": n}, **extra}


def ids(entries):
    """Message ids of stored entries, in order."""
    return [entry.message_id for entry in entries]


def schema_of(path):
    """Everything sqlite_master says about a file, whitespace-normalized."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
    finally:
        conn.close()
    return [(t, n, tbl, " ".join((sql or "").split())) for t, n, tbl, sql in rows]


class StoreTestCase(unittest.TestCase):
    """Opens stores in a temp dir and closes them after each test."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "offline.sqlite")

    def open(self, limits=StoreLimits(), now=NOW):
        store = SqliteStore.open(self.path, limits, the_reactor(), now=now)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def reopen(self, store, limits=None, now=NOW):
        yield store.close()
        return self.open(limits or store.limits, now=now)


class BasicTests(StoreTestCase):
    """enqueue / pending / remove / expire, in memory and on disk."""

    def test_interface(self):
        self.assertTrue(IOfflineStore.providedBy(self.open()))

    @defer.inlineCallbacks
    def test_enqueue_visible_at_once_and_durable_after_fire(self):
        store = self.open()
        d = store.enqueue("bob", "m1", msg(1), NOW)
        self.assertEqual(ids(store.pending("bob", NOW)), ["m1"])
        self.assertEqual(store.count, 1)
        entry = yield d
        self.assertEqual(entry.message_id, "m1")
        self.assertEqual(entry.message, msg(1))
        self.assertEqual(entry.stored_at, NOW)
        self.assertEqual(store.total_bytes, entry.size)
        # Durable: another connection sees the committed row.
        conn = sqlite3.connect(self.path)
        rows = conn.execute("SELECT recipient, message_id, body FROM messages").fetchall()
        conn.close()
        self.assertEqual(rows, [("bob", "m1", '{"type":"message","from":"alice","payload":{"n":1}}')])

    @defer.inlineCallbacks
    def test_order_preserved_across_reopen(self):
        store = self.open()
        yield defer.gatherResults(
            [store.enqueue(f"p{n % 3}", f"m{n}", msg(n), NOW + n) for n in range(30)]
        )
        store = yield self.reopen(store)
        for p in range(3):
            self.assertEqual(
                ids(store.pending(f"p{p}", NOW + 30)),
                [f"m{n}" for n in range(30) if n % 3 == p],
            )
        self.assertEqual(store.count, 30)
        self.assertEqual(store.pending("p0", NOW)[1].message, msg(3))
        # New entries after reopen go after the loaded ones.
        yield store.enqueue("p0", "late", msg(99), NOW + 31)
        store = yield self.reopen(store)
        self.assertEqual(ids(store.pending("p0", NOW + 32))[-2:], ["m27", "late"])

    @defer.inlineCallbacks
    def test_remove_is_durable(self):
        store = self.open()
        for n in range(5):
            store.enqueue("bob", f"m{n}", msg(n), NOW)
        store.remove("bob", ["m1", "m3"])
        self.assertEqual(ids(store.pending("bob", NOW)), ["m0", "m2", "m4"])
        store.remove("bob", ["nope"])
        store.remove("nobody", ["m0"])
        yield store.flush()
        store = yield self.reopen(store)
        self.assertEqual(ids(store.pending("bob", NOW)), ["m0", "m2", "m4"])
        store.remove("bob", ["m0", "m2", "m4"])
        self.assertEqual((store.count, store.total_bytes), (0, 0))
        store = yield self.reopen(store)
        self.assertEqual(store.count, 0)

    @defer.inlineCallbacks
    def test_remove_before_commit(self):
        """A message delivered before its insert committed never reappears."""
        store = self.open()
        d = store.enqueue("bob", "m0", msg(0), NOW)
        store.remove("bob", ["m0"])
        yield d
        store = yield self.reopen(store)
        self.assertEqual(store.pending("bob", NOW), [])

    @defer.inlineCallbacks
    def test_duplicate_ids_keep_their_own_rows(self):
        store = self.open()
        store.enqueue("bob", "same", msg(1), NOW)
        store.enqueue("carol", "same", msg(2), NOW)
        store.remove("bob", ["same"])
        yield store.flush()
        store = yield self.reopen(store)
        self.assertEqual(ids(store.pending("carol", NOW)), ["same"])
        self.assertEqual(store.pending("bob", NOW), [])

    @defer.inlineCallbacks
    def test_expire_with_explicit_now(self):
        store = self.open(StoreLimits(ttl=100.0))
        store.enqueue("bob", "old", msg(0), NOW)
        store.enqueue("bob", "mid", msg(1), NOW + 50)
        store.enqueue("carol", "new", msg(2), NOW + 90)
        self.assertEqual(ids(store.pending("bob", NOW + 120)), ["mid"])
        self.assertEqual(store.expire(NOW + 99), 0)
        self.assertEqual(store.expire(NOW + 100), 1)
        self.assertEqual(store.count, 2)
        yield store.flush()
        store = yield self.reopen(store, now=NOW + 100)
        self.assertEqual(ids(store.pending("bob", NOW + 100)), ["mid"])
        self.assertEqual(store.expire(NOW + 160), 1)
        self.assertEqual(ids(store.pending("carol", NOW + 160)), ["new"])
        yield store.flush()
        store = yield self.reopen(store, now=NOW + 160)
        self.assertEqual(store.count, 1)

    @defer.inlineCallbacks
    def test_open_drops_expired_rows(self):
        store = self.open(StoreLimits(ttl=100.0))
        store.enqueue("bob", "old", msg(0), NOW)
        store.enqueue("bob", "new", msg(1), NOW + 60)
        store = yield self.reopen(store, now=NOW + 120)
        self.assertEqual(ids(store.pending("bob", NOW + 120)), ["new"])
        yield store.close()
        conn = sqlite3.connect(self.path)
        self.assertEqual(conn.execute("SELECT message_id FROM messages").fetchall(), [("new",)])
        conn.close()

    @defer.inlineCallbacks
    def test_closed_store_refuses(self):
        store = self.open()
        yield store.close()
        self.assertFalse(store._writer._thread.is_alive())
        yield store.close()
        yield self.assertFailure(
            store.enqueue("bob", "m", msg(0), NOW), sqlite_store.StoreClosed
        )


class LimitTests(StoreTestCase):
    """Every cap refuses, stores nothing, and still holds after reopen."""

    @defer.inlineCallbacks
    def assertRefusedEverywhere(self, store, recipient, now=NOW):
        before = (store.count, store.total_bytes)
        yield self.assertFailure(store.enqueue(recipient, "over", msg(0), now), QueueFull)
        self.assertEqual((store.count, store.total_bytes), before)
        self.assertNotIn("over", ids(store.pending(recipient, now)))
        yield store.flush()
        conn = sqlite3.connect(self.path)
        found = conn.execute("SELECT count(*) FROM messages WHERE message_id='over'").fetchone()
        conn.close()
        self.assertEqual(found, (0,))

    @defer.inlineCallbacks
    def test_per_peer_cap(self):
        store = self.open(StoreLimits(max_per_peer=3))
        yield defer.gatherResults([store.enqueue("bob", f"m{n}", msg(n), NOW) for n in range(3)])
        yield self.assertRefusedEverywhere(store, "bob")
        yield store.enqueue("carol", "c", msg(0), NOW)
        store = yield self.reopen(store)
        yield self.assertRefusedEverywhere(store, "bob")
        self.assertEqual(ids(store.pending("bob", NOW)), ["m0", "m1", "m2"])
        store.remove("bob", ["m0"])
        yield store.enqueue("bob", "m3", msg(3), NOW)

    @defer.inlineCallbacks
    def test_total_bytes_cap(self):
        size = len(b'{"type":"message","from":"alice","payload":{"n":0}}')
        store = self.open(StoreLimits(max_bytes=size * 2))
        yield store.enqueue("bob", "a", msg(0), NOW)
        yield store.enqueue("carol", "b", msg(1), NOW)
        yield self.assertRefusedEverywhere(store, "dave")
        store = yield self.reopen(store)
        self.assertEqual(store.total_bytes, size * 2)
        yield self.assertRefusedEverywhere(store, "dave")

    @defer.inlineCallbacks
    def test_peer_count_cap(self):
        store = self.open(StoreLimits(max_peers=2))
        yield store.enqueue("bob", "a", msg(0), NOW)
        yield store.enqueue("carol", "b", msg(1), NOW)
        yield self.assertRefusedEverywhere(store, "dave")
        yield store.enqueue("bob", "a2", msg(2), NOW)
        store = yield self.reopen(store)
        yield self.assertRefusedEverywhere(store, "dave")
        self.assertEqual(store.count, 3)


class GroupCommitTests(StoreTestCase):
    """A burst of writes costs one transaction, not one per message."""

    @defer.inlineCallbacks
    def test_burst_is_one_commit(self):
        store = self.open()
        before = store.commits
        results = yield defer.gatherResults(
            [store.enqueue(f"p{n % 50}", f"m{n}", msg(n), NOW) for n in range(500)]
        )
        self.assertEqual(len(results), 500)
        self.assertEqual(store.commits - before, 1)
        store = yield self.reopen(store)
        self.assertEqual(store.count, 500)

    @defer.inlineCallbacks
    def test_writes_during_a_commit_share_the_next(self):
        """Whether or not the first commit is still running, turn two is one batch."""
        store = self.open()
        first = [store.enqueue("bob", f"a{n}", msg(n), NOW) for n in range(100)]
        second = []
        turn = defer.Deferred()

        def next_turn():
            second.extend(store.enqueue("carol", f"b{n}", msg(n), NOW) for n in range(100))
            turn.callback(None)

        the_reactor().callLater(0, next_turn)
        yield turn
        yield defer.gatherResults(first + second)
        self.assertEqual(store.commits, 2)
        self.assertEqual(store.count, 200)

    @defer.inlineCallbacks
    def test_flush_waits_for_writes(self):
        store = self.open()
        fired = []
        store.enqueue("bob", "m0", msg(0), NOW).addCallback(fired.append)
        yield store.flush()
        self.assertEqual(ids(fired), ["m0"])
        yield store.flush()

    @defer.inlineCallbacks
    def test_failed_commit_takes_entries_back(self):
        store = self.open()
        yield store.enqueue("bob", "kept", msg(0), NOW)
        # Another connection makes the next insert collide on its seq.
        conn = sqlite3.connect(self.path)
        conn.execute(
            "INSERT INTO messages (seq, recipient, message_id, stored_at, body)"
            " VALUES (?, 'x', 'x', 0, '{}')",
            (store._next_seq,),
        )
        conn.commit()
        conn.close()
        d = store.enqueue("bob", "lost", msg(1), NOW)
        self.assertEqual(ids(store.pending("bob", NOW)), ["kept", "lost"])
        yield self.assertFailure(d, sqlite3.IntegrityError)
        self.flushLoggedErrors(sqlite3.IntegrityError)
        self.assertEqual(ids(store.pending("bob", NOW)), ["kept"])
        self.assertEqual(store.count, 1)
        # The store keeps working afterwards.
        yield store.enqueue("bob", "next", msg(2), NOW)
        self.assertEqual(ids(store.pending("bob", NOW)), ["kept", "next"])


class OpenErrorTests(StoreTestCase):
    """Files the store must refuse, and leave exactly as they were."""

    def assertRefused(self, path, *words):
        with self.assertRaises(StoreOpenError) as caught:
            SqliteStore.open(path, StoreLimits(), the_reactor())
        for word in words:
            self.assertIn(word, str(caught.exception))

    def test_corrupt_file(self):
        junk = b"this is not a database\n" * 200
        with open(self.path, "wb") as f:
            f.write(junk)
        self.assertRefused(self.path, "not an SQLite database")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), junk)
        self.assertEqual(os.listdir(self.dir), ["offline.sqlite"])

    def test_damaged_database_pages(self):
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE version (version INTEGER)")
        conn.commit()
        conn.close()
        with open(self.path, "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 400)
        with open(self.path, "rb") as f:
            before = f.read()
        self.assertRefused(self.path)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_foreign_database(self):
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.commit()
        conn.close()
        self.assertRefused(self.path, "something else")
        self.assertEqual(schema_of(self.path)[0][1], "users")

    def test_newer_version(self):
        conn = sqlite3.connect(self.path)
        conn.executescript(read_schema(f"v{SCHEMA_VERSION}.sql"))
        conn.execute("INSERT INTO version VALUES (?)", (SCHEMA_VERSION + 1,))
        conn.commit()
        conn.close()
        self.assertRefused(self.path, f"version {SCHEMA_VERSION + 1}")
        conn = sqlite3.connect(self.path)
        self.assertEqual(conn.execute("SELECT version FROM version").fetchall(), [(SCHEMA_VERSION + 1,)])
        conn.close()

    def test_unwritable_directory(self):
        if os.geteuid() == 0:
            # Permission bits do not stop root; /proc refuses new files to anyone.
            directory = "/proc"
        else:
            directory = os.path.join(self.dir, "ro")
            os.mkdir(directory, 0o500)
        path = os.path.join(directory, "offline.sqlite")
        self.assertRefused(path, "offline.sqlite")
        self.assertFalse(os.path.exists(path))

    def test_missing_directory(self):
        self.assertRefused(os.path.join(self.dir, "nope", "offline.sqlite"), "cannot open")

    def test_directory_as_path(self):
        self.assertRefused(self.dir, "directory")


class SchemaTests(StoreTestCase):
    """The newest create script equals v1 plus every upgrade."""

    def test_fresh_equals_upgraded(self):
        fresh = os.path.join(self.dir, "fresh.sqlite")
        conn = sqlite3.connect(fresh)
        conn.executescript(read_schema(f"v{SCHEMA_VERSION}.sql"))
        conn.close()
        upgraded = os.path.join(self.dir, "upgraded.sqlite")
        conn = sqlite3.connect(upgraded)
        conn.executescript(read_schema("v1.sql"))
        for version in range(2, SCHEMA_VERSION + 1):
            conn.executescript(read_schema(f"upgrade-to-v{version}.sql"))
        conn.close()
        self.assertGreaterEqual(SCHEMA_VERSION, 2)
        self.assertEqual(schema_of(fresh), schema_of(upgraded))

    @defer.inlineCallbacks
    def test_store_upgrades_v1_file_and_keeps_rows(self):
        conn = sqlite3.connect(self.path)
        conn.executescript(read_schema("v1.sql"))
        conn.execute("INSERT INTO version VALUES (1)")
        conn.execute(
            "INSERT INTO messages VALUES (7, 'bob', 'old', ?, ?)",
            (NOW, '{"type":"message","payload":1}'),
        )
        conn.commit()
        conn.close()
        store = self.open()
        self.assertEqual(ids(store.pending("bob", NOW)), ["old"])
        self.assertEqual(store.pending("bob", NOW)[0].message, {"type": "message", "payload": 1})
        yield store.enqueue("bob", "new", msg(1), NOW)
        yield store.close()
        conn = sqlite3.connect(self.path)
        self.assertEqual(conn.execute("SELECT version FROM version").fetchall(), [(SCHEMA_VERSION,)])
        self.assertEqual(
            conn.execute("SELECT seq, message_id FROM messages ORDER BY seq").fetchall(),
            [(7, "old"), (8, "new")],
        )
        conn.close()
        fresh = os.path.join(self.dir, "fresh.sqlite")
        yield SqliteStore.open(fresh, StoreLimits(), the_reactor(), now=NOW).close()
        self.assertEqual(schema_of(self.path), schema_of(fresh))

    @defer.inlineCallbacks
    def test_wal_and_full_sync(self):
        store = self.open()
        yield store.enqueue("bob", "m", msg(0), NOW)
        conn = sqlite3.connect(self.path)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone(), ("wal",))
        conn.close()
        self.assertEqual(
            store._writer._conn.execute("PRAGMA synchronous").fetchone(), (2,)
        )


class KillTests(StoreTestCase):
    """Every id reported durable survives SIGKILL of the writing process."""

    def test_kill_9(self):
        errors_path = os.path.join(self.dir, "stderr.txt")
        with open(errors_path, "wb") as errors:
            proc = subprocess.Popen(
                [sys.executable, STORE_WRITER, self.path],
                stdout=subprocess.PIPE,
                stderr=errors,
                env=environment(),
                cwd=self.dir,
            )
        printed = []
        try:
            while len(printed) < 2000:
                line = proc.stdout.readline()
                if not line:
                    break
                printed.append(line.decode().strip())
            os.kill(proc.pid, signal.SIGKILL)
            rest = proc.stdout.read()
            proc.wait(timeout=30)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with open(errors_path, "rb") as errors:
            err = errors.read()
        self.assertEqual(proc.returncode, -signal.SIGKILL, err.decode(errors="replace"))
        # Lines written before the kill were also durable when written.
        printed += [line for line in rest.decode().split("\n") if line]
        self.assertGreaterEqual(len(printed), 2000)
        self.assertEqual(printed, [f"m{n}" for n in range(len(printed))])

        store = self.open(StoreLimits(max_per_peer=10**6, max_bytes=10**9), now=None)
        stored = {f"peer-{p}": ids(store.pending(f"peer-{p}", the_reactor().seconds())) for p in range(7)}
        for p in range(7):
            mine = [m for m in printed if int(m[1:]) % 7 == p]
            self.assertEqual(stored[f"peer-{p}"][: len(mine)], mine)
        everything = [m for queue in stored.values() for m in queue]
        self.assertEqual(len(everything), len(set(everything)))
