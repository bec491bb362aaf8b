"""
The durable offline store: SQLite in WAL mode behind the in-memory index.

Reads (:meth:`SqliteStore.pending`, ``count``, ``total_bytes``) are answered
from :class:`~signaling.store.MemoryQueues` and never touch the disk. Every
write goes to one writer thread that commits whatever has piled up in a
single transaction (group commit), so a burst of messages costs one fsync,
and the reactor never waits for the disk. An ``enqueue`` Deferred fires only
after the COMMIT that holds its row, which is what lets the hub tell a
sender ``queued: true`` honestly (PROTOCOL section 5).

Schema files live in ``signaling/schema``: ``vN.sql`` creates version N from
nothing, ``upgrade-to-vN.sql`` turns version N-1 into N. A fresh database
gets the newest ``vN.sql``; an older one is upgraded step by step.

Every text is written byte for byte (U+0000 included) and read back as
bytes; a row that is not what this server writes (not UTF-8, not JSON, not a
valid id, ...) is moved to the ``quarantine`` table at start, logged and
counted (:attr:`SqliteStore.quarantined`), and the server starts without it.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sqlite3
import threading
from importlib import resources
from typing import Any, Callable, Iterable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .messages import ProtocolError, decode, validate_id
from .store import IOfflineStore, MemoryQueues, QueueFull, StoredMessage, StoreLimits

__all__ = ["SCHEMA_VERSION", "SqliteStore", "StoreClosed", "StoreOpenError"]

#: The schema version this code writes; ``schema/v{SCHEMA_VERSION}.sql`` exists.
SCHEMA_VERSION = 3

#: Rows set aside at one start that are logged one by one; the rest are summed up.
QUARANTINE_LOG_LIMIT = 20

_SQLITE_MAGIC = b"SQLite format 3\x00"
_log = Logger()


class StoreOpenError(Exception):
    """The database file cannot be used; the message says why, for humans."""


class StoreClosed(Exception):
    """A write was attempted after :meth:`SqliteStore.close`."""


def read_schema(name: str) -> str:
    """The text of ``signaling/schema/<name>``."""
    schema = resources.files("signaling").joinpath("schema")
    return schema.joinpath(name).read_text("utf-8")


def _check_header(path: str) -> None:
    """Refuse a file that exists, is not empty and is not an SQLite database."""
    try:
        with open(path, "rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise StoreOpenError(f"offline store {path!r} is a directory, not a file")
    except OSError as e:
        raise StoreOpenError(f"cannot read offline store {path!r}: {e.strerror}")
    if header and header != _SQLITE_MAGIC:
        raise StoreOpenError(
            f"offline store {path!r} is not an SQLite database; "
            "it was left untouched (move it away or choose another --db)"
        )


def _connect(path: str) -> sqlite3.Connection:
    """Open ``path`` and bring its schema to :data:`SCHEMA_VERSION`."""
    _check_header(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreOpenError(f"cannot open offline store {path!r}: {e}")
    try:
        _prepare(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: str) -> None:
    try:
        tables = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    except sqlite3.DatabaseError as e:
        raise StoreOpenError(f"cannot open offline store {path!r}: {e}")
    if tables and "version" not in tables:
        raise StoreOpenError(
            f"{path!r} is an SQLite database of something else "
            "(it has no version table); it was left untouched"
        )
    version = None
    if tables:
        rows = conn.execute("SELECT version FROM version").fetchall()
        if len(rows) != 1 or not isinstance(rows[0][0], int):
            raise StoreOpenError(f"offline store {path!r} has a damaged version table")
        version = rows[0][0]
        if version > SCHEMA_VERSION or version < 1:
            raise StoreOpenError(
                f"offline store {path!r} has schema version {version}, but this "
                f"server knows versions 1 to {SCHEMA_VERSION} (written by a newer "
                "release?); it was left untouched"
            )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous=FULL")
        if version is None:
            _create(conn)
        elif version < SCHEMA_VERSION:
            _upgrade(conn, version)
    except sqlite3.Error as e:
        raise StoreOpenError(f"cannot write offline store {path!r}: {e}")
    if mode.lower() != "wal":
        _log.warn(
            "offline store {path} runs in journal mode {mode}, not WAL",
            path=path,
            mode=mode,
        )


def _run_script(conn: sqlite3.Connection, script: str, version: int) -> None:
    """Run ``script`` and set the version, all in one transaction (rolled back on error)."""
    # executescript commits on its own, so the transaction is spelled out.
    try:
        conn.executescript(
            "BEGIN IMMEDIATE;\n"
            + script
            + f"\nDELETE FROM `version`;\nINSERT INTO `version` VALUES ({int(version)});\nCOMMIT;"
        )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _create(conn: sqlite3.Connection) -> None:
    _run_script(conn, read_schema(f"v{SCHEMA_VERSION}.sql"), SCHEMA_VERSION)


def _upgrade(conn: sqlite3.Connection, version: int) -> None:
    for target in range(version + 1, SCHEMA_VERSION + 1):
        _log.info("upgrading offline store schema to v{version}", version=target)
        _run_script(conn, read_schema(f"upgrade-to-v{target}.sql"), target)


class _Index(MemoryQueues):
    """:class:`MemoryQueues` that can also take back one exact entry."""

    def discard(self, entry: StoredMessage) -> bool:
        """Remove ``entry`` itself (not others with its id); False if absent."""
        queue_ = self._queues.get(entry.recipient)
        if not queue_:
            return False
        for position, candidate in enumerate(queue_):
            if candidate is entry:
                del queue_[position]
                self._replace(entry.recipient, queue_, [entry])
                return True
        return False


#: One row to insert: seq, the entry, the UTF-8 of its recipient, message id
#: and sender (None when not known), and the Deferred that fires once it is durable.
_Insert = tuple[int, StoredMessage, tuple[bytes, bytes, "bytes | None"], defer.Deferred]


class _Batch:
    """Every write collected since the previous batch, committed together."""

    __slots__ = ("inserts", "deletes", "waiters")

    def __init__(self) -> None:
        self.inserts: list[_Insert] = []
        self.deletes: list[int] = []
        self.waiters: list[defer.Deferred] = []


class _Writer:
    """The one thread that owns the connection after open; commits batches."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        reactor: Any,
        done: Callable[[_Batch, Failure | None], None],
    ) -> None:
        self._conn = conn
        self._reactor = reactor
        self._done = done
        self._inbox: queue.SimpleQueue[_Batch | defer.Deferred] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="signaling-offline-store", daemon=True
        )
        self._thread.start()

    def submit(self, batch: _Batch) -> None:
        """Commit ``batch`` in the writer thread, then call back in the reactor."""
        self._inbox.put(batch)

    def stop(self) -> defer.Deferred:
        """Close the connection after every submitted batch; fires when done."""
        stopped: defer.Deferred = defer.Deferred()
        self._inbox.put(stopped)
        return stopped

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if isinstance(item, defer.Deferred):
                self._conn.close()
                self._reactor.callFromThread(self._stopped, item)
                return
            error = None
            try:
                self._commit(item)
            except BaseException:
                error = Failure()
                try:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._reactor.callFromThread(self._done, item, error)

    def _stopped(self, done: defer.Deferred) -> None:
        self._thread.join()  # it has nothing left to do but return
        done.callback(None)

    def _commit(self, batch: _Batch) -> None:
        # Each executed statement hands the GIL over twice (SQLite runs
        # without it), and the reactor thread then waits for it back: one
        # statement per batch instead of one per row.
        conn = self._conn
        if not (batch.inserts or batch.deletes):
            return
        conn.execute("BEGIN IMMEDIATE")
        if batch.inserts:
            conn.execute(_INSERT_ROWS, _rows_parameters(batch.inserts))
        # A delete is always queued after the insert of its row, so running
        # every insert of the batch first keeps the order that matters.
        if batch.deletes:
            conn.execute(
                "DELETE FROM messages WHERE seq IN (SELECT value FROM json_each(?))",
                (json.dumps(batch.deletes),),
            )
        conn.execute("COMMIT")


#: Inserts the rows of :func:`_rows_parameters`. SQLite's JSON functions cut
#: a string at U+0000, so only numbers travel as JSON; every text is a slice
#: of one blob of UTF-8, cut by offset and stored as TEXT byte for byte.
_INSERT_ROWS = (
    "INSERT INTO messages (seq, stored_at, recipient, message_id, sender, body)"
    " SELECT value ->> 0, value ->> 1,"
    " CAST(substr(?2, value ->> 2, value ->> 3) AS TEXT),"
    " CAST(substr(?2, value ->> 4, value ->> 5) AS TEXT),"
    " CAST(substr(?2, value ->> 6, value ->> 7) AS TEXT),"
    " CAST(substr(?2, value ->> 8, value ->> 9) AS TEXT)"
    " FROM json_each(?1)"
)


def _rows_parameters(inserts: list[_Insert]) -> tuple[str, bytes]:
    """
    The rows of a batch for :data:`_INSERT_ROWS`: a JSON array of ``[seq,
    stored_at, then (start, length) in the blob of recipient, message id,
    sender and body]`` (a sender that is not known is ``null``), and the blob.
    """
    blob: list[bytes] = []
    rows = []
    position = 1  # substr counts from 1
    for seq, entry, texts, _ in inserts:
        row: list[Any] = [seq, entry.stored_at]
        for text in (*texts, entry.body):
            if text is None:
                row += (None, None)
                continue
            row += (position, len(text))
            blob.append(text)
            position += len(text)
        rows.append(row)
    return json.dumps(rows), b"".join(blob)


class _Unreadable(Exception):
    """A stored row this server would not have written; the text says why."""


def _text(value: Any, column: str) -> str:
    """A text column read as bytes, decoded."""
    if not isinstance(value, bytes):
        raise _Unreadable(f"{column} is not text")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Unreadable(f"{column} is not UTF-8 ({e.reason} at byte {e.start})") from None


def _id(value: Any, column: str) -> str:
    """An id column: UTF-8 and a valid id, returned in NFC (as ids are compared)."""
    try:
        return validate_id(_text(value, column), column)
    except ProtocolError as e:
        raise _Unreadable(f"{column} is not a valid id: {e.text}") from None


def _row_entry(row: tuple[Any, ...]) -> StoredMessage:
    """
    The entry a row of ``messages`` (read with bytes for text) holds.

    :raises _Unreadable: the row is not what this server writes.
    """
    _, recipient, message_id, sender, stored_at, body = row
    recipient = _id(recipient, "recipient")
    message_id = _text(message_id, "message_id")
    if sender is not None:
        sender = _id(sender, "sender")
    if isinstance(stored_at, bool) or not isinstance(stored_at, (int, float)) \
            or not math.isfinite(stored_at):
        raise _Unreadable("stored_at is not a number of seconds")
    if not isinstance(body, bytes):
        raise _Unreadable("body is not text")
    try:
        decode(body)  # delivered as it is: it must be a message the server accepts
    except ProtocolError as e:
        raise _Unreadable(f"body is not a message: {e.text}") from None
    return StoredMessage(recipient, message_id, body, float(stored_at), sender)


@implementer(IOfflineStore)
class SqliteStore:
    """
    An offline store that survives restarts and ``kill -9``.

    Build it with :meth:`open`. ``commits`` counts the transactions committed
    so far (each is one fsync), which shows group commit at work;
    ``quarantined`` the rows in the ``quarantine`` table after the start.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        limits: StoreLimits,
        reactor: Any,
        path: str,
        now: float,
    ) -> None:
        """Use :meth:`open`; this expects a connection at the current schema."""
        self.path = path
        self.commits = 0
        self.quarantined = 0
        self._reactor = reactor
        self._index = _Index(limits)
        self._seqs: dict[int, int] = {}
        self._next_seq = 1
        self._batch: _Batch | None = None
        self._in_flight: _Batch | None = None
        self._scheduled: Any = None
        self._closing: defer.Deferred | None = None
        self._load(conn, now)
        self._writer = _Writer(conn, reactor, self._batch_done)

    @classmethod
    def open(
        cls,
        path: str,
        limits: StoreLimits = StoreLimits(),
        reactor: Any = None,
        now: float | None = None,
    ) -> "SqliteStore":
        """
        Create or open the store at ``path`` and load every live entry.

        Entries older than ``limits.ttl`` at ``now`` (default
        ``reactor.seconds()``) are deleted instead of loaded.

        :raises StoreOpenError: the file is not a database, belongs to
            something else or to a newer release, or cannot be written.
            The file is never replaced or truncated.
        """
        if reactor is None:
            raise TypeError("SqliteStore.open needs the reactor")
        if now is None:
            now = reactor.seconds()
        path = os.fspath(path)
        conn = _connect(path)
        try:
            return cls(conn, limits, reactor, path, now)
        except BaseException:
            conn.close()
            raise

    def _load(self, conn: sqlite3.Connection, now: float) -> None:
        # Text is read as bytes: one row that is not UTF-8 must not stop the
        # others from loading (sqlite3 would raise for the whole query).
        conn.text_factory = bytes
        try:
            conn.execute("BEGIN IMMEDIATE")
            purged = conn.execute(
                "DELETE FROM messages WHERE stored_at <= ?", (now - self._index.limits.ttl,)
            ).rowcount
            unreadable = []
            for row in conn.execute(
                "SELECT seq, recipient, message_id, sender, stored_at, body"
                " FROM messages ORDER BY seq"
            ):
                self._next_seq = row[0] + 1
                try:
                    entry = _row_entry(row)
                except _Unreadable as e:
                    unreadable.append((row[0], str(e)))
                    continue
                self._index.add(entry)
                self._seqs[id(entry)] = row[0]
            self._quarantine(conn, unreadable, now)
            self.quarantined, last = conn.execute(
                "SELECT count(*), max(seq) FROM quarantine"
            ).fetchone()
            if last is not None:  # a seq stays unique across both tables
                self._next_seq = max(self._next_seq, last + 1)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreOpenError(f"cannot load offline store {self.path!r}: {e}")
        finally:
            conn.text_factory = str
        _log.info(
            "offline store {path}: loaded {count} messages, dropped {purged} expired,"
            " set aside {unreadable} unreadable ({quarantined} in table quarantine)",
            path=self.path,
            count=self._index.count,
            purged=purged,
            unreadable=len(unreadable),
            quarantined=self.quarantined,
        )

    def _quarantine(
        self, conn: sqlite3.Connection, unreadable: list[tuple[int, str]], now: float
    ) -> None:
        """Move the ``(seq, reason)`` rows to the quarantine table and log them (once)."""
        conn.executemany(
            "INSERT INTO quarantine (seq, quarantined_at, reason, recipient, message_id,"
            " sender, stored_at, body) SELECT seq, ?, ?, CAST(recipient AS BLOB),"
            " CAST(message_id AS BLOB), CAST(sender AS BLOB), stored_at, CAST(body AS BLOB)"
            " FROM messages WHERE seq = ?",
            [(now, reason, seq) for seq, reason in unreadable],
        )
        conn.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq, _ in unreadable])
        for seq, reason in unreadable[:QUARANTINE_LOG_LIMIT]:
            _log.warn(
                "offline store {path}: row {seq} cannot be loaded ({reason});"
                " moved to table quarantine",
                path=self.path,
                seq=seq,
                reason=reason,
            )
        if len(unreadable) > QUARANTINE_LOG_LIMIT:
            _log.warn(
                "offline store {path}: {more} more rows cannot be loaded; moved to table quarantine",
                path=self.path,
                more=len(unreadable) - QUARANTINE_LOG_LIMIT,
            )

    @property
    def count(self) -> int:
        """Number of messages stored now."""
        return self._index.count

    @property
    def total_bytes(self) -> int:
        """Encoded size of every message stored now."""
        return self._index.total_bytes

    @property
    def limits(self) -> StoreLimits:
        """The limits this store enforces."""
        return self._index.limits

    def enqueue(
        self, recipient: str, message_id: str, message: dict[str, Any], now: float,
        sender: str | None = None,
    ) -> defer.Deferred:
        """
        Store ``message`` for ``recipient``; visible to :meth:`pending` at once.

        The Deferred fires with the :class:`StoredMessage` after the COMMIT
        that holds it, fails with :class:`QueueFull` (nothing stored) when a
        limit would be passed, or with the database error if the commit
        fails (then the entry is taken back out of the index).
        """
        if self._closing is not None:
            return defer.fail(StoreClosed("the offline store is closed"))
        try:
            # Encoded here, so that a text UTF-8 cannot hold (messages.decode
            # refuses them) fails its own enqueue, not the batch it would join.
            texts = (recipient.encode("utf-8"), message_id.encode("utf-8"),
                     None if sender is None else sender.encode("utf-8"))
            entry = self._index.make_entry(recipient, message_id, message, now, sender)
        except (QueueFull, UnicodeEncodeError):
            return defer.fail()
        seq = self._next_seq
        self._next_seq += 1
        self._index.add(entry)
        self._seqs[id(entry)] = seq
        durable: defer.Deferred = defer.Deferred()
        self._pending_batch().inserts.append((seq, entry, texts, durable))
        return durable

    def pending(self, recipient: str, now: float) -> list[StoredMessage]:
        """The unexpired messages for ``recipient``, oldest first."""
        return self._index.pending(recipient, now)

    def remove(self, recipient: str, message_ids: Iterable[str]) -> None:
        """Forget the given messages of ``recipient`` now; delete them on disk soon."""
        self._delete(self._index.remove(recipient, message_ids))

    def expire(self, now: float) -> int:
        """Drop every message older than the age limit; return how many."""
        expired = self._index.expire(now)
        self._delete(expired)
        return len(expired)

    def flush(self) -> defer.Deferred:
        """Fire once every write issued so far is committed (or failed)."""
        if self._batch is None and self._in_flight is None:
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()
        # The writer thread never touches waiters, so joining a running batch is safe.
        (self._batch or self._in_flight).waiters.append(done)
        return done

    def close(self) -> defer.Deferred:
        """Flush, stop the writer thread and close the database."""
        if self._closing is None:
            self._closing = self._close()
        closed: defer.Deferred = defer.Deferred()
        self._closing.addBoth(lambda result: (closed.callback(None), result)[1])
        return closed

    @defer.inlineCallbacks
    def _close(self):
        try:
            yield self.flush()
        except Exception:
            _log.failure("offline store: last writes before close failed")
        yield self._writer.stop()

    def _delete(self, entries: list[StoredMessage]) -> None:
        if entries:
            seqs = [self._seqs.pop(id(entry)) for entry in entries]
            self._pending_batch().deletes.extend(seqs)

    def _pending_batch(self) -> _Batch:
        if self._batch is None:
            self._batch = _Batch()
            if self._in_flight is None:
                # Let the rest of this reactor turn join the same transaction.
                self._scheduled = self._reactor.callLater(0, self._submit)
        return self._batch

    def _submit(self) -> None:
        self._scheduled = None
        if self._in_flight is not None or self._batch is None:
            return
        batch, self._batch = self._batch, None
        self._in_flight = batch
        self._writer.submit(batch)

    def _batch_done(self, batch: _Batch, error: Failure | None) -> None:
        self._in_flight = None
        if error is None and (batch.inserts or batch.deletes):
            self.commits += 1
        else:
            _log.failure(
                "offline store: commit of {inserts} inserts and {deletes} deletes failed",
                failure=error,
                inserts=len(batch.inserts),
                deletes=len(batch.deletes),
            )
        # Writes that piled up during this commit go out before callbacks run.
        if self._batch is not None and self._scheduled is None:
            self._submit()
        for _, entry, _, durable in batch.inserts:
            if error is None:
                durable.callback(entry)
            else:
                if self._index.discard(entry):
                    self._seqs.pop(id(entry), None)
                durable.errback(error)
        for waiter in batch.waiters:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)
