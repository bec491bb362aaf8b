"""
Tests for the durable offline store, on real SQLite files in temp dirs.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial import unittest

from helpers import capture_log_lines
from processes import environment
from signaling import sqlite_store
from signaling import store as store_module
from signaling.messages import ProtocolError, encode, offline_delivery, validate_id
from signaling.sqlite_store import (
    QUARANTINE_LOG_LIMIT, SCHEMA_VERSION, SqliteStore, StoreOpenError, read_schema,
)
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


def is_valid_id(text):
    """Whether the server accepts ``text`` as an id."""
    try:
        validate_id(text, "id")
    except ProtocolError:
        return False
    return True


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


# -- text stored exactly, unreadable rows set aside ---------------------------------------

#: How version 2 wrote rows: every text through SQLite's JSON functions, which
#: cut a string at U+0000 and turn an escaped lone surrogate into bytes that
#: are not UTF-8.
VERSION_2_INSERT = (
    "INSERT INTO messages (seq, recipient, message_id, stored_at, body)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), json_extract(value, '$[3]'),"
    " json_extract(value, '$[4]') FROM json_each(?)"
)


def version_2_file(path, rows):
    """A version 2 store holding ``rows`` (seq, recipient, message id, stored at, body) as version 2 wrote them."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(read_schema("v1.sql") + read_schema("upgrade-to-v2.sql"))
    conn.execute("INSERT INTO version VALUES (2)")
    rows = [[*row[:4], row[4].decode("ascii") if isinstance(row[4], bytes) else row[4]]
            for row in rows]  # version 2 passed the encoded body as text
    conn.execute(VERSION_2_INSERT, (json.dumps(rows),))
    conn.close()


def quarantine_rows(path):
    """Every row of the quarantine table, texts as bytes."""
    conn = sqlite3.connect(path)
    conn.text_factory = bytes
    try:
        return conn.execute(
            "SELECT seq, reason, recipient, message_id, sender, stored_at, body"
            " FROM quarantine ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


class UnreadableRowTests(StoreTestCase):
    """A row the server cannot load is set aside, logged once and counted; the store starts."""

    def setUp(self):
        super().setUp()
        self.warnings = capture_log_lines(self, "offline store")

    def set_aside_lines(self):
        return [line for line in self.warnings if "moved to table quarantine" in line]

    @defer.inlineCallbacks
    def test_the_lone_surrogate_row_of_version_2(self):
        """Issue 11: one '\\ud800' messageId stopped every later start."""
        poisoned = {"type": "message", "to": "victim", "messageId": "\ud800", "from": "mallory"}
        version_2_file(self.path, [
            [1, "victim", "m1", NOW, encode(msg(1))],
            [2, "victim", "\ud800", NOW, encode(poisoned)],
            [3, "victim", "m3", NOW, encode(msg(3))],
        ])
        # What stopped the old server: the file cannot be read as text.
        conn = sqlite3.connect(self.path)
        with self.assertRaisesRegex(sqlite3.OperationalError, "Could not decode to UTF-8"):
            conn.execute("SELECT message_id FROM messages").fetchall()
        conn.close()

        store = self.open()
        self.assertEqual(ids(store.pending("victim", NOW)), ["m1", "m3"])
        self.assertEqual(store.quarantined, 1)
        [(seq, reason, recipient, message_id, sender, stored_at, body)] = quarantine_rows(self.path)
        self.assertEqual((seq, recipient, message_id, stored_at, body),
                         (2, b"victim", b"\xed\xa0\x80", NOW, encode(poisoned)))
        self.assertEqual(sender, b"mallory")  # the upgrade read it from the body's "from"
        self.assertIn(b"message_id is not UTF-8", reason)
        [line] = self.set_aside_lines()
        self.assertIn("row 2 cannot be loaded (message_id is not UTF-8", line)

        # Set aside once: the next start neither sees nor logs it again.
        yield store.enqueue("victim", "m4", msg(4), NOW)
        store = yield self.reopen(store)
        self.assertEqual(ids(store.pending("victim", NOW)), ["m1", "m3", "m4"])
        self.assertEqual(store.quarantined, 1)
        self.assertEqual(len(self.set_aside_lines()), 1)
        self.assertEqual(len(quarantine_rows(self.path)), 1)

    @defer.inlineCallbacks
    def test_every_kind_of_bad_row(self):
        yield self.open().close()
        # (recipient, message_id, sender, stored_at, body, words of the reason); bytes
        # are written as text holding exactly those bytes, as another program could.
        bad = [
            (b"\xff", "m", None, NOW, "{}", "recipient is not UTF-8"),
            ("bob\x01", "m", None, NOW, encode(msg(0)), "recipient is not a valid id"),
            ("", "m", None, NOW, encode(msg(0)), "recipient is not a valid id"),
            ("bob", b"\xc0\x80", None, NOW, encode(msg(0)), "message_id is not UTF-8"),
            ("bob", "m", b"\xed\xbf\xbf", NOW, encode(msg(0)), "sender is not UTF-8"),
            ("bob", "m", "\n", NOW, encode(msg(0)), "sender is not a valid id"),
            ("bob", "m", None, "yesterday", encode(msg(0)), "stored_at is not a number"),
            ("bob", "m", None, NOW, '{"type":', "body is not a message: message is not valid JSON"),
            ("bob", "m", None, NOW, "[1,2]", "body is not a message: message must be a JSON object"),
            ("bob", "m", None, NOW, '{"type":"x","n":NaN}', "body is not a message: message is not"),
            ("bob", "m", None, NOW, '{"type":1}', "body is not a message: message needs a string"),
            ("bob", "m", None, NOW, b'{"type":"\xff"}', "body is not a message: message is not valid UTF-8"),
            ("bob", "m", None, NOW, '{"type":"x","p":"\\ud800"}',
             "body is not a message: 'p' must be valid Unicode text"),
        ]
        conn = sqlite3.connect(self.path, isolation_level=None)
        seq = 0
        for number, row in enumerate(bad):
            seq += 1
            conn.execute("INSERT INTO messages VALUES (?, 'bob', ?, ?, ?, 'alice')",
                         (seq, f"good{number}", NOW, encode(msg(number)).decode()))
            seq += 1
            recipient, message_id, sender, stored_at, body, _ = row
            values = (recipient, message_id, stored_at, body, sender)
            places = ", ".join("CAST(? AS TEXT)" if isinstance(v, bytes) else "?" for v in values)
            conn.execute(f"INSERT INTO messages VALUES (?, {places})", (seq, *values))
        conn.close()

        store = self.open()
        self.assertEqual(ids(store.pending("bob", NOW)), [f"good{n}" for n in range(len(bad))])
        self.assertEqual(store.quarantined, len(bad))
        found = quarantine_rows(self.path)
        self.assertEqual([row[0] for row in found], list(range(2, 2 * len(bad) + 1, 2)))
        for kept, (recipient, message_id, sender, stored_at, body, words) in zip(found, bad):
            self.assertIn(words, kept[1].decode())
            # Every column kept byte for byte, for the operator.
            as_bytes = [v.encode() if isinstance(v, str) else v for v in (recipient, message_id, sender)]
            self.assertEqual(list(kept[2:5]), as_bytes)
            self.assertEqual(kept[5], stored_at.encode() if isinstance(stored_at, str) else stored_at)
            self.assertEqual(kept[6], body.encode() if isinstance(body, str) else body)
        self.assertEqual(len(self.set_aside_lines()), len(bad))
        # New rows get seqs after every row seen, set aside or not.
        yield store.enqueue("bob", "new", msg(99), NOW)
        yield store.flush()
        conn = sqlite3.connect(self.path)
        self.assertEqual(conn.execute("SELECT max(seq) FROM messages").fetchone(), (2 * len(bad) + 1,))
        conn.close()

    @defer.inlineCallbacks
    def test_text_utf8_cannot_hold_fails_alone(self):
        """Never written: ``decode`` refuses it, and the store refuses it on its own too."""
        store = self.open()
        good = store.enqueue("bob", "m1", msg(1), NOW)
        for recipient, message_id, sender in (("bob", "\ud800", None), ("b\udc00", "m", None),
                                              ("bob", "m", "\udfff")):
            yield self.assertFailure(
                store.enqueue(recipient, message_id, msg(2), NOW, sender), UnicodeEncodeError
            )
        yield good
        self.assertEqual((ids(store.pending("bob", NOW)), store.count), (["m1"], 1))
        store = yield self.reopen(store)
        self.assertEqual((ids(store.pending("bob", NOW)), store.quarantined), (["m1"], 0))

    def test_many_bad_rows_are_logged_with_a_summary(self):
        version_2_file(self.path, [[n, "bob", f"m{n}", NOW, "not json"] for n in range(1, 31)])
        store = self.open()
        self.assertEqual((store.count, store.quarantined), (0, 30))
        lines = self.set_aside_lines()
        self.assertEqual(len(lines), QUARANTINE_LOG_LIMIT + 1)
        self.assertIn(f"{30 - QUARANTINE_LOG_LIMIT} more rows cannot be loaded", lines[-1])
        self.assertIn("set aside 30 unreadable (30 in table quarantine)", self.warnings[-1])

    def test_a_decomposed_recipient_of_version_2_is_delivered_to_its_nfc_id(self):
        version_2_file(self.path, [[1, "jose\u0301", "m1", NOW, encode(msg(1))]])
        store = self.open()
        self.assertEqual(ids(store.pending("jos\u00e9", NOW)), ["m1"])
        self.assertEqual(store.quarantined, 0)

    @defer.inlineCallbacks
    def test_version_2_senders_come_from_the_bodies(self):
        """The per-sender quota holds for rows written before the sender column existed."""
        version_2_file(self.path, [
            [1, "bob", "m1", NOW, encode(msg(1))],  # from alice
            [2, "bob", "m2", NOW, encode({"type": "offer", "from": "carol"})],
            [3, "bob", "m3", NOW, encode({"type": "offer", "from": 5})],
            [4, "bob", "m4", NOW, encode({"type": "offer"})],
        ])
        size = len(encode(msg(1)))
        store = self.open(StoreLimits(max_bytes_per_sender=size))
        self.assertEqual([entry.sender for entry in store.pending("bob", NOW)],
                         ["alice", "carol", None, None])
        yield self.assertFailure(store.enqueue("dave", "x", msg(1), NOW, sender="alice"), QueueFull)
        yield store.enqueue("dave", "x", msg(1), NOW, sender="erin")


class DrivenReactor:
    """
    The part of a reactor :class:`SqliteStore` uses, run by the test's own
    thread: ``callLater`` and ``callFromThread`` queue calls, and :meth:`wait`
    runs them in order until a Deferred has fired. The store, its writer
    thread and the SQLite file are the real ones; this lets Hypothesis, which
    cannot wait for a reactor, drive them.
    """

    def __init__(self, now):
        self.now = now
        self._calls = queue.SimpleQueue()

    def seconds(self):
        return self.now

    def callLater(self, delay, f, *args, **kwargs):
        self._calls.put((f, args, kwargs))

    def callFromThread(self, f, *args, **kwargs):
        self._calls.put((f, args, kwargs))

    def wait(self, d, timeout=30.0):
        """Run queued calls until ``d`` fires; its result (or its error, raised)."""
        results = []
        d.addBoth(results.append)
        deadline = time.monotonic() + timeout
        while not results:
            f, args, kwargs = self._calls.get(timeout=max(0.0, deadline - time.monotonic()))
            f(*args, **kwargs)
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]


def utf8_encode(message):
    """``encode`` writing UTF-8 as UTF-8, as the wire encoder is about to."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


#: Every code point but the surrogates, with the awkward ones often.
ANY_CHAR = st.characters(exclude_categories=["Cs"]) | st.sampled_from(
    ["\x00", "\x7f", "\u2028", "\ufeff", "\uffff", "\U0010ffff", "\U0001f600", "\u0301", '"', "\\"]
)
ANY_TEXT = st.text(ANY_CHAR, max_size=12)
#: Printable characters (what ids are made of), combining accents often.
ID_CHAR = st.characters(exclude_categories=["Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Zs"]) \
    | st.sampled_from([" ", "e", "\u0301", "\u00e9", "\U0001f600"])
IDS = st.text(ID_CHAR, min_size=1, max_size=12).filter(is_valid_id).map(lambda i: validate_id(i, "id"))
BODIES = st.builds(
    lambda type_, rest: {**rest, "type": type_},
    ANY_TEXT,
    st.dictionaries(ANY_TEXT, st.recursive(
        st.none() | st.integers() | ANY_TEXT,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3),
        max_leaves=8,
    ), max_size=4),
)
ROWS = st.lists(
    st.tuples(IDS, st.text(ANY_CHAR, min_size=1, max_size=12), st.none() | IDS, BODIES),
    min_size=1, max_size=6,
)


class ExactTextPropertyTests(unittest.SynchronousTestCase):
    """Whatever valid text goes in comes back byte for byte, through the file and a restart."""

    def round_trip(self, rows):
        directory = tempfile.mkdtemp(prefix="signaling-exact-")
        path = os.path.join(directory, "offline.sqlite")
        limits = StoreLimits(max_per_peer=100, max_bytes=10**8, max_bytes_per_sender=10**8)
        try:
            reactor = DrivenReactor(NOW)
            store = SqliteStore.open(path, limits, reactor, now=NOW)
            stored = reactor.wait(defer.gatherResults([
                store.enqueue(recipient, message_id, body, NOW, sender)
                for recipient, message_id, sender, body in rows
            ]))
            reactor.wait(store.close())

            # What any other program reads from the file: the exact text.
            conn = sqlite3.connect(path)
            on_disk = conn.execute(
                "SELECT recipient, message_id, sender, body FROM messages ORDER BY seq"
            ).fetchall()
            conn.close()
            self.assertEqual(on_disk, [(e.recipient, e.message_id, e.sender, e.body.decode())
                                       for e in stored])

            store = SqliteStore.open(path, limits, reactor, now=NOW)  # the restart
            self.assertEqual(store.quarantined, 0)
            loaded = {}
            for recipient, *_ in rows:
                loaded[recipient] = store.pending(recipient, NOW)
            reactor.wait(store.close())
            by_recipient = {}
            for (recipient, message_id, sender, body), entry in zip(rows, stored):
                self.assertEqual(entry.body, store_module.encode(body))
                by_recipient.setdefault(recipient, []).append((message_id, sender, entry.body))
            for recipient, entries in loaded.items():
                self.assertEqual([(e.message_id, e.sender, e.body) for e in entries],
                                 by_recipient[recipient])
                for entry in entries:
                    # And as its recipient receives it.
                    delivered = json.loads(offline_delivery(entry.message_id, entry.body, 1, 2))
                    self.assertEqual(delivered["messageId"], entry.message_id)
                    self.assertEqual(delivered["originalMessage"], json.loads(entry.body))
        finally:
            shutil.rmtree(directory)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ROWS)
    @example([("jos\u00e9", "a\x00b", "\U0001f600", {"type": "t\x00", "p": "\x00\U0010ffff"})])
    def test_ascii_escaped_bodies(self, rows):
        self.round_trip(rows)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ROWS)
    @example([("bob", "\u2028", None, {"type": "t", "\u2028": "\U0001f600\x00"})])
    def test_utf8_bodies(self, rows):
        self.patch(store_module, "encode", utf8_encode)
        self.round_trip(rows)
