"""
Test support: a model of the signaling server, driving a real server
process over real connections.

:class:`ServerModel` holds what the server must hold (which connection is
bound to which id, rooms, registrations in order, what is stored for whom)
and sends requests through :class:`~sync_client.SyncClient` connections.
Each ``send_*`` method sends one request and records what must come back,
to whom; :meth:`ServerModel.settle` then pings every connection and reads
each until its pong and everything it must receive arrived, failing on
anything unexpected, anything missing, and any disagreement of ``/stats``.

It mirrors docs/protocol.md, including the order in which the server checks
a request (the first failed check is the error), and knows the durability
contract of docs/offline-store.md: a message answered ``queued:true`` is
stored until it is delivered (or acknowledged, in ack mode); a removal
the server had not committed when it was killed may be undone.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import time
import unicodedata
from collections import Counter
from typing import Any, Callable

from sync_client import Closed, SyncClient, SyncServer, encode_frame

__all__ = ["ABSENT", "TOTALS", "ServerModel", "client_message_id", "close_all", "nfc",
           "valid_id"]

#: Seconds every request of a step has to be answered.
SETTLE = 10.0
#: The server's message size limit (its default); larger frames close with 1009.
MAX_FRAME = 65536
#: Offline messages kept per peer (small, so that QUEUE_FULL happens).
OFFLINE_MAX = 8
#: Largest ``deviceInfo`` the server accepts (its default), encoded.
MAX_DEVICE_INFO = 4096
#: Longest ``deviceType``.
MAX_DEVICE_TYPE = 64
#: Arguments of every server: a database file in its directory, rate limiting
#: off (steps go faster than a client would send), the small offline queue.
SERVER_ARGS = ("--db", "offline.sqlite", "--rate-limit", "0", "--offline-max", str(OFFLINE_MAX))

SERVER_TYPES = frozenset({
    "registered", "join-success", "leave-success", "user-joined", "user-left",
    "peer-status", "peers-list", "peer-offline", "offline-message", "pong",
    "error", "server-shutdown",
})
ERROR_CODES = frozenset({
    "INVALID_MESSAGE", "INVALID_FIELD", "UNKNOWN_MESSAGE_TYPE", "REGISTRATION_REQUIRED",
    "IDENTITY_MISMATCH", "NOT_IN_ROOM", "PEER_NOT_IN_ROOM", "ROOM_FULL", "TOO_MANY_ROOMS",
    "QUEUE_FULL", "RATE_LIMITED", "UNAUTHORIZED", "FORBIDDEN", "UNAVAILABLE", "INTERNAL_ERROR",
})
SERVER_MADE_ID = re.compile(r"[0-9a-f]{24}")

#: A field left out of a message.
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()

#: Figures of a run, over every sequence.
TOTALS: Counter = Counter()

#: Models whose server process and directory are not cleaned up yet (see
#: :func:`close_all`).
_LIVE: set["ServerModel"] = set()


def close_all() -> None:
    """
    Clean up after every model still live: a run interrupted where no
    teardown follows (inside a constructor, by Ctrl-C) leaves no process
    or directory behind.
    """
    for model in list(_LIVE):
        model.close_everything()


def nfc(v: Any) -> Any:
    """An id as the server knows it: in Unicode normalization form NFC (anything else as it is)."""
    return unicodedata.normalize("NFC", v) if isinstance(v, str) else v


def valid_id(v: Any) -> bool:
    """What the server accepts as an id: 1 to 128 printable characters, counted in NFC."""
    return isinstance(v, str) and 0 < len(nfc(v)) <= 128 and nfc(v).isprintable()


def is_text(v: Any) -> bool:
    """False for a string that is not Unicode text (a lone surrogate), True for anything else."""
    if not isinstance(v, str):
        return True
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def holds_lone_surrogate(v: Any) -> bool:
    """Whether a string anywhere in ``v``, keys included, is not Unicode text."""
    if isinstance(v, dict):
        return any(not is_text(k) or holds_lone_surrogate(x) for k, x in v.items())
    if isinstance(v, list):
        return any(holds_lone_surrogate(x) for x in v)
    return not is_text(v)


def echoed(request: dict[str, Any]) -> tuple[str | None, str | None]:
    """
    (requestType, messageId) an error answering ``request`` carries: short
    ones only, and never a string that is not Unicode text (when the
    ``messageId`` is one, no id at all).
    """
    fields = dict(request)
    if not is_text(fields.get("messageId")):
        fields.pop("messageId")
        fields.pop("id", None)
    if not is_text(fields.get("id")):
        fields.pop("id")
    kind = fields.get("type")
    request_type = kind if isinstance(kind, str) and len(kind) <= 128 and is_text(kind) else None
    message_id = client_message_id(fields)
    if message_id is not None and len(message_id) > 256:
        message_id = None
    return request_type, message_id


def client_message_id(message: dict[str, Any]) -> str | None:
    """The id a client gave its message (``messageId``, else ``id``), as the server reads it."""
    for key in ("messageId", "id"):
        v = message.get(key)
        if isinstance(v, str) and v:
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
    return None


def build(**fields: Any) -> dict[str, Any]:
    """A message from ``fields``, leaving out the ABSENT ones."""
    return {k: v for k, v in fields.items() if v is not ABSENT}


#: 60 kB of JSON that the server re-encodes as 220 kB (``1e15`` becomes
#: ``1000000000000000.0``): a message that grows past what the server sends.
GROWING_FIELD = b',"grows":[' + b",".join([b"1e15"] * 12000) + b"]"


def frame_of(message: dict[str, Any], grows: bool = False) -> bytes:
    """The frame for ``message``, with :data:`GROWING_FIELD` spliced in when ``grows``."""
    frame = encode_frame(message)
    return frame[:-1] + GROWING_FIELD + b"}" if grows else frame


def assert_relayed(got: dict[str, Any], sent: dict[str, Any], server_timestamp: bool) -> None:
    """``got`` is ``sent`` as relayed: intact, with the true sender (and maybe the server's timestamp)."""
    assert (got.get("from"), got.get("sender")) == (sent["from"], sent["sender"]), (
        f"relayed with from={got.get('from')!r} sender={got.get('sender')!r}, "
        f"sent by {sent['from']!r}")
    if server_timestamp:
        assert isinstance(got.get("timestamp"), int), got
        got = {k: v for k, v in got.items() if k != "timestamp"}
    assert got == sent, f"relayed message altered:\n got  {got!r}\n sent {sent!r}"


def assert_clean_log(log: str) -> None:
    """Nothing in a server's log looks like a crash or an unhandled error."""
    for sign in ("Traceback", "#critical]", "Unhandled"):
        assert sign not in log, f"{sign!r} in the server log:\n{log[-20000:]}"


class Entry:
    """A message answered ``queued:true``: what its recipient must receive."""

    def __init__(self, nonce: int, recipient: str, message_id: str,
                 body: dict[str, Any], server_timestamp: bool) -> None:
        self.nonce = nonce
        self.recipient = recipient
        self.message_id = message_id
        self.body = body
        self.server_timestamp = server_timestamp
        #: "stored" (must be in the store), "maybe" (sent but not answered
        #: yet, or removed while a SIGKILL may have undone the removal) or
        #: "gone".
        self.state = "maybe"
        #: answered ``queued:true``
        self.acknowledged = False

    def __repr__(self) -> str:
        return f"Entry(#{self.nonce} for {self.recipient!r}, id {self.message_id!r}, {self.state})"


class Expect:
    """
    One message a connection must (or, unless ``required``, may) receive in
    this step: ``match`` picks it out, ``check`` asserts its content and
    updates the model.
    """

    def __init__(self, what: str, match: Callable[[dict], bool],
                 check: Callable[[dict], None] | None = None, required: bool = True) -> None:
        self.what = what
        self.match = match
        self.check = check
        self.required = required

    def __repr__(self) -> str:
        return self.what


#: ``Conn.close_code`` of a connection the server must not close.
OPEN: Any = type("Open", (), {"__repr__": lambda self: "OPEN"})()


class Conn:
    """One client connection and what the server holds about it."""

    def __init__(self, slot: int, client: SyncClient) -> None:
        self.slot = slot
        self.client = client
        self.identity: str | None = None
        self.registered = False
        self.ack_mode = False
        self.rooms: set[str] = set()
        self.device_type: Any = None
        self.device_info: Any = None
        #: the server's registration number (cursors of get-peers)
        self.seq = 0
        self.expects: list[Expect] = []
        #: OPEN, or the close code the server must send (None: the connection drops)
        self.close_code: Any = OPEN
        self.close_reason: str | None = None
        #: ``offline-message`` ids received (what an ack may name)
        self.received_ids: list[str] = []
        #: nonce -> Entry of the backlog a registration in progress must deliver
        self.backlog: dict[int, Entry] | None = None
        self.last_backlog_nonce = -1
        self.saw_registered = True

    def __repr__(self) -> str:
        state = "registered" if self.registered else "bound" if self.identity else "unbound"
        return f"<slot {self.slot} {state} {self.identity!r} rooms={sorted(self.rooms)}>"


class ServerModel:
    """A server process, client connections in numbered slots, and the model."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="signaling-model-")
        self.server = SyncServer(self.directory, *SERVER_ARGS)
        self.conns: dict[int, Conn] = {}
        self.closing: list[Conn] = []
        _LIVE.add(self)
        self.holders: dict[str, Conn] = {}
        self.rooms: dict[str, list[str]] = {}
        self.registrations = 0
        self.store: dict[str, list[Entry]] = {}
        self.removed_since_clean_stop: list[Entry] = []
        #: every message sent for an id nobody held, answered or not
        self.sent_offline: list[Entry] = []
        self.acknowledged: list[Entry] = []
        self.delivered: set[int] = set()
        self.nonce = 0
        self.start_server()

    # -- plumbing ---------------------------------------------------------------

    def start_server(self) -> None:
        TOTALS["server starts"] += 1
        try:
            self.server.start()
        except AssertionError:
            TOTALS["server starts that failed"] += 1
            raise

    def next_nonce(self) -> int:
        self.nonce += 1
        return self.nonce

    def conn(self, slot: int) -> Conn:
        """The connection in ``slot``, opened now if there is none."""
        conn = self.conns.get(slot)
        if conn is None:
            conn = self.conns[slot] = Conn(slot, SyncClient(self.server.url))
            TOTALS["connections"] += 1
        return conn

    def send(self, conn: Conn, frame: bytes, text: bool = True) -> None:
        TOTALS["frames sent"] += 1
        (conn.client.send_text if text else conn.client.send_binary)(frame)

    def expect(self, conn: Conn, what: str, match: Callable[[dict], bool],
               check: Callable[[dict], None] | None = None) -> None:
        conn.expects.append(Expect(what, match, check))

    def expect_error(self, conn: Conn, codes: set[str] | str, request: Any) -> None:
        """
        Exactly one ``error`` with one of ``codes`` answering ``request``
        (a dict, or None for a frame that could not be read as a message).
        """
        codes = {codes} if isinstance(codes, str) else set(codes)
        TOTALS["refusals expected"] += 1
        request_type = message_id = None
        if isinstance(request, dict):
            request_type, message_id = echoed(request)

        def check(message: dict) -> None:
            assert message["code"] in codes, f"expected an error in {codes}, got {message!r}"
            assert isinstance(message.get("error"), str), message
            assert isinstance(message.get("timestamp"), int), message
            assert message.get("requestType") == request_type, (
                f"requestType should be {request_type!r}: {message!r}")
            assert message.get("messageId") == message_id, (
                f"messageId should be {message_id!r}: {message!r}")

        self.expect(conn, f"error {sorted(codes)} for {request_type!r}",
                    lambda m: m["type"] == "error", check)

    def refused_as_text(self, conn: Conn, message: dict[str, Any]) -> bool:
        """
        True (and the ``INVALID_FIELD`` expected) when ``message`` holds a
        string that is not Unicode text: refused whole, before anything else.
        """
        if not holds_lone_surrogate(message):
            return False
        self.expect_error(conn, "INVALID_FIELD", message)
        TOTALS["refused for a lone surrogate"] += 1
        return True

    def expect_pong(self, conn: Conn) -> None:
        self.expect(conn, "pong", lambda m: m["type"] == "pong",
                    lambda m: self.assert_equal(type(m.get("timestamp")), int))

    def expect_close(self, conn: Conn, code: int | None, reason: str | None = None) -> None:
        """The server closes ``conn`` in this step (it leaves the model now)."""
        conn.close_code = code
        conn.close_reason = reason
        if self.conns.get(conn.slot) is conn:
            del self.conns[conn.slot]
        self.closing.append(conn)

    @staticmethod
    def assert_equal(got: Any, want: Any) -> None:
        assert got == want, f"{got!r} != {want!r}"

    # -- waiting for the server: after every step -------------------------------

    def settle(self) -> None:
        """
        Ping every open connection and read each until its pong and every
        message it must receive arrived; read every closing connection to its
        close. Anything unexpected fails. Then /stats must agree.
        """
        live = list(self.conns.values())
        for conn in live:
            conn.client.send_json({"type": "ping"})
        deadline = time.monotonic() + SETTLE
        for conn in live:
            self._drain(conn, deadline, barrier=True)
        for conn in self.closing:
            self._drain(conn, deadline, barrier=False)
        self.closing = []
        self._check_stats()
        TOTALS["steps"] += 1

    def _drain(self, conn: Conn, deadline: float, barrier: bool) -> None:
        waiting_for_pong = barrier
        while True:
            backlog_left = conn.backlog is not None and any(
                e.state == "stored" for e in conn.backlog.values())
            if not (waiting_for_pong or backlog_left or conn.close_code is not OPEN
                    or any(e.required for e in conn.expects)):
                break
            try:
                message = conn.client.receive(deadline - time.monotonic())
            except TimeoutError:
                raise AssertionError(
                    f"{conn}: no answer within {SETTLE}s; still waiting for"
                    f"{' the pong,' if waiting_for_pong else ''} {conn.expects}"
                    f"{', the backlog ' + repr(list(conn.backlog.values())) if backlog_left else ''}"
                    f"{', the close' if conn.close_code is not OPEN else ''}") from None
            if isinstance(message, Closed):
                self._closed(conn, message)
                return
            if message.get("type") == "pong" and waiting_for_pong and not any(
                    e.what == "pong" for e in conn.expects):
                waiting_for_pong = False
                continue
            self._dispatch(conn, message)
        self._finish_backlog(conn)
        conn.expects = []

    def _closed(self, conn: Conn, message: Closed) -> None:
        assert conn.close_code is not OPEN, f"{conn}: the server closed it: {message!r}"
        assert message.code == conn.close_code, (
            f"{conn}: expected close {conn.close_code}, got {message!r}")
        if conn.close_reason is not None:
            assert message.reason == conn.close_reason, f"{conn}: {message!r}"
        missing = [e for e in conn.expects if e.required]
        assert not missing, f"{conn}: closed before receiving {missing}"
        conn.expects = []
        conn.close_code = OPEN
        conn.backlog = None
        conn.client.close()

    def _dispatch(self, conn: Conn, message: Any) -> None:
        assert isinstance(message, dict) and isinstance(message.get("type"), str), (
            f"{conn}: not a message object with a string type: {message!r}")
        TOTALS["messages received"] += 1
        kind = message["type"]
        if kind in SERVER_TYPES and ("from" in message or "sender" in message):
            raise AssertionError(f"{conn}: a server-only type came from a client: {message!r}")
        if kind == "error":
            assert message.get("code") in ERROR_CODES, f"{conn}: unknown error code: {message!r}"
        if kind == "offline-message":
            self._offline_message(conn, message)
            return
        for index, expect in enumerate(conn.expects):
            if expect.match(message):
                del conn.expects[index]
                if expect.check is not None:
                    expect.check(message)
                return
        raise AssertionError(f"{conn}: unexpected message {message!r}; expected {conn.expects}")

    def _offline_message(self, conn: Conn, message: dict) -> None:
        assert conn.backlog is not None, f"{conn}: offline-message outside a registration: {message!r}"
        assert conn.saw_registered, f"{conn}: offline-message before 'registered': {message!r}"
        original = message.get("originalMessage")
        assert isinstance(original, dict), message
        assert isinstance(message.get("storedAt"), int), message
        assert isinstance(message.get("deliveredAt"), int), message
        entry = conn.backlog.pop(original.get("n"), None)
        assert entry is not None, (
            f"{conn}: delivered a message not stored for it (or twice): {message!r}; "
            f"expected {list(conn.backlog.values())}")
        assert entry.nonce > conn.last_backlog_nonce, f"{conn}: backlog out of order at {entry}"
        conn.last_backlog_nonce = entry.nonce
        if entry.message_id is None:  # a server-made id whose answer never came
            entry.message_id = message.get("messageId")
        assert message.get("messageId") == entry.message_id, (
            f"{conn}: stored under {entry.message_id!r}, delivered as {message.get('messageId')!r}")
        assert_relayed(original, entry.body, entry.server_timestamp)
        if entry.acknowledged:
            TOTALS["offline deliveries"] += 1
        else:
            TOTALS["offline deliveries of unanswered messages"] += 1
        self.delivered.add(entry.nonce)
        conn.received_ids.append(entry.message_id)
        if conn.ack_mode:
            entry.state = "stored"
        else:
            self.remove_entry(entry)

    def _finish_backlog(self, conn: Conn) -> None:
        """A registration's backlog is complete: what did not come was not stored."""
        if conn.backlog is None:
            return
        for entry in conn.backlog.values():
            assert entry.state == "maybe", f"{conn}: stored message never delivered: {entry}"
            entry.state = "gone"
            self.store[entry.recipient].remove(entry)
        conn.backlog = None

    def remove_entry(self, entry: Entry) -> None:
        """The server removes ``entry`` (delivered, or acknowledged)."""
        entry.state = "gone"
        self.store[entry.recipient].remove(entry)
        self.removed_since_clean_stop.append(entry)

    def _check_stats(self) -> None:
        """/stats agrees with the model (connections are waited for: a close lands late)."""
        deadline = time.monotonic() + SETTLE
        while True:
            status, stats = self.server.get("/stats")
            assert status == 200, stats
            if stats["connections"] == len(self.conns):
                break
            assert time.monotonic() < deadline, (
                f"/stats says {stats['connections']} connections, the model {len(self.conns)}")
            time.sleep(0.01)
        peers = self.registered_peers()
        assert stats["peers"] == len(peers), (
            f"/stats says {stats['peers']} registered peers, the model {peers}")
        assert stats["rooms"] == len(self.rooms), (
            f"/stats says {stats['rooms']} rooms, the model {self.rooms}")
        entries = [e for q in self.store.values() for e in q]
        stored = sum(e.state == "stored" for e in entries)
        assert stored <= stats["offlineStored"] <= len(entries), (
            f"/stats says {stats['offlineStored']} messages stored, the model {entries}")

    # -- what the server does for everyone ----------------------------------------

    def registered_peers(self, exclude: Conn | None = None) -> list[Conn]:
        """Registered connections in registration order."""
        return sorted((c for c in self.conns.values() if c.registered and c is not exclude),
                      key=lambda c: c.seq)

    def room_conns(self) -> list[Conn]:
        """Connections in at least one room, by slot."""
        return [c for _, c in sorted(self.conns.items()) if c.rooms]

    def expect_presence(self, conn: Conn, status: str) -> None:
        """Every other registered peer hears that ``conn`` came or went."""
        peer_id, device_type, device_info = conn.identity, conn.device_type, conn.device_info

        def check(m: dict) -> None:
            assert m.get("deviceType") == device_type, (m, device_type)
            if status == "online":
                assert m.get("deviceInfo") == device_info, (m, device_info)
            assert isinstance(m.get("timestamp"), int), m

        for other in self.registered_peers(exclude=conn):
            self.expect(other, f"peer-status {status} of {peer_id!r}",
                        lambda m: m["type"] == "peer-status" and m.get("peerId") == peer_id
                        and m.get("status") == status, check)

    def leave_room(self, conn: Conn, room_id: str) -> None:
        """``conn``'s id leaves ``room_id``; the members who stay hear of it."""
        identity = conn.identity
        members = self.rooms[room_id]
        members.remove(identity)
        if not members:
            del self.rooms[room_id]
        conn.rooms.discard(room_id)
        for member in members:
            self.expect(self.holders[member], f"user-left {identity!r} {room_id!r}",
                        lambda m: m["type"] == "user-left" and m.get("userId") == identity
                        and m.get("roomId") == room_id)

    def disconnected(self, conn: Conn) -> None:
        """The server sees ``conn`` go: it leaves its rooms, and its peer goes offline."""
        if self.conns.get(conn.slot) is conn:
            del self.conns[conn.slot]
        if conn.identity is None:
            return
        for room_id in sorted(conn.rooms):
            self.leave_room(conn, room_id)
        del self.holders[conn.identity]
        if conn.registered:
            self.expect_presence(conn, "offline")
            conn.registered = False

    def bind(self, conn: Conn, identity: str) -> None:
        """
        ``conn`` binds ``identity`` (the caller checked it may). A live holder
        is replaced, closed with 4001, and ``conn`` inherits its registration
        and rooms; nobody is told.
        """
        if conn.identity == identity:
            return
        old = self.holders.get(identity)
        if old is not None:
            TOTALS["takeovers"] += 1
            conn.registered, conn.seq = old.registered, old.seq
            conn.device_type, conn.device_info = old.device_type, old.device_info
            conn.rooms, old.rooms = old.rooms, set()
            old.registered = False
            old.identity = None
            self.expect_close(old, 4001, "replaced")
        conn.identity = identity
        self.holders[identity] = conn

    # -- requests ------------------------------------------------------------------

    def send_register(self, conn: Conn, peer_id: Any, ack: bool, device_type: Any,
                      device_info: Any) -> None:
        message = build(type="register", peerId=peer_id, ack=True if ack else ABSENT,
                        deviceType=device_type, deviceInfo=device_info)
        self.send(conn, encode_frame(message))
        if self.refused_as_text(conn, message):
            return
        dtype, dinfo = message.get("deviceType"), message.get("deviceInfo")
        if not valid_id(peer_id) or (dtype is not None and (
                not isinstance(dtype, str) or len(dtype) > MAX_DEVICE_TYPE)) or (
                dinfo is not None and (not isinstance(dinfo, dict)
                                       or len(encode_frame(dinfo)) > MAX_DEVICE_INFO)):
            self.expect_error(conn, "INVALID_FIELD", message)
        elif conn.identity is not None and conn.identity != nfc(peer_id):
            self.expect_error(conn, "IDENTITY_MISMATCH", message)
        elif conn.registered:
            self.expect_registered(conn, nfc(peer_id))  # again: nothing else changes
        else:
            peer_id = nfc(peer_id)
            self.bind(conn, peer_id)
            conn.ack_mode = ack
            if not conn.registered:
                self.registrations += 1
                conn.seq = self.registrations
                conn.registered = True
            if dtype is not None:
                conn.device_type = dtype
            if dinfo is not None:
                conn.device_info = dinfo
            self.expect_registered(conn, peer_id)
            conn.backlog = {e.nonce: e for e in self.store.get(peer_id, [])}
            conn.last_backlog_nonce = -1
            conn.saw_registered = False
            self.expect_presence(conn, "online")
            TOTALS["registrations"] += 1

    def expect_registered(self, conn: Conn, peer_id: str) -> None:
        def check(m: dict) -> None:
            assert isinstance(m.get("serverTime"), int), m
            conn.saw_registered = True

        self.expect(conn, "registered", lambda m: m["type"] == "registered"
                    and m.get("peerId") == peer_id, check)

    def send_get_peers(self, conn: Conn, limit: Any, cursor: Any) -> None:
        message = build(type="get-peers", limit=limit, cursor=cursor)
        self.send(conn, encode_frame(message))
        paged = "limit" in message or "cursor" in message
        size = message.get("limit", 100)
        after = message.get("cursor")
        if paged and (not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 500):
            self.expect_error(conn, "INVALID_FIELD", message)
            return
        if after is not None and not (isinstance(after, str) and after.isascii()
                                      and after.isdigit() and len(after) <= 20):
            self.expect_error(conn, "INVALID_FIELD", message)
            return
        everyone = self.registered_peers(exclude=conn)
        others = [c for c in everyone if c.seq > int(after or 0)]
        more = paged and len(others) > size
        page = others[:size] if more else others

        def check(m: dict) -> None:
            got = [(p.get("peerId"), p.get("deviceType"), p.get("deviceInfo"))
                   for p in m.get("peers", [])]
            # A device field never given shows as "unknown" and {}.
            want = [(c.identity, "unknown" if c.device_type is None else c.device_type,
                     {} if c.device_info is None else c.device_info) for c in page]
            assert got == want, f"peers-list {got} != {want}"
            assert all(isinstance(p.get("connectedAt"), int) for p in m["peers"]), m
            assert (m.get("count"), m.get("total")) == (len(page), len(everyone)), m
            if more:
                assert m.get("nextCursor") == str(page[-1].seq), m
            else:
                assert "nextCursor" not in m, m

        self.expect(conn, "peers-list", lambda m: m["type"] == "peers-list", check)

    def send_direct(self, conn: Conn, target_id: Any, kind: str, payload: Any,
                    id_fields: dict[str, Any], spoof: bool, stamped: bool,
                    grows: bool = False) -> None:
        """A message with ``to`` (``grows``: see :meth:`send_relayed`)."""
        message = build(type=kind, to=target_id, n=self.next_nonce(), payload=payload,
                        timestamp=12345 if stamped else ABSENT, **id_fields)
        if not self.send_relayed(conn, message, spoof, grows):
            return
        if not conn.registered:
            self.expect_error(conn, "REGISTRATION_REQUIRED", message)
            return
        if not valid_id(target_id):
            self.expect_error(conn, "INVALID_FIELD", message)
            return
        target_id = nfc(target_id)
        out = dict(message, to=target_id, **{"from": conn.identity, "sender": conn.identity})
        server_timestamp = kind == "message" and not stamped
        target = self.holders.get(target_id)
        if target is not None:
            if grows:
                self.expect_error(conn, "INVALID_MESSAGE", message)
            else:
                self.expect_relayed(target, out, server_timestamp)
            return
        message_id = client_message_id(message)
        if message_id is not None and len(message_id) > 256:
            self.expect_error(conn, "INVALID_FIELD", message)
        elif grows:
            self.expect_error(conn, "INVALID_MESSAGE", message)
        else:
            self.expect_stored(conn, target_id, message, message_id, out, server_timestamp)

    def send_relayed(self, conn: Conn, message: dict[str, Any], spoof: bool, grows: bool) -> bool:
        """
        Send a message meant for others, naming a forged sender when
        ``spoof``; False when the frame is over the size limit (the server
        closes the connection with 1009) or the message is refused whole
        for a lone surrogate.

        ``grows``: with :data:`GROWING_FIELD`, which the server, encoding
        every message it relays anew, makes larger than it sends.
        """
        if spoof:
            message["from"] = message["sender"] = "mallory"
        frame = frame_of(message, grows)
        self.send(conn, frame)
        if len(frame) > MAX_FRAME:
            self.closed_by_server(conn, 1009)
            return False
        return not self.refused_as_text(conn, message)

    def expect_stored(self, conn: Conn, to: str, message: dict, message_id: str | None,
                      out: dict, server_timestamp: bool) -> None:
        """
        A directed message for an id nobody holds: answered ``queued:true``
        (it must then be delivered, SIGKILL or not), or ``QUEUE_FULL`` when
        the queue is full. Until the answer comes it may or may not be
        stored.
        """
        nonce = message["n"]
        entry = Entry(nonce, to, message_id, out, server_timestamp)
        self.store.setdefault(to, []).append(entry)
        self.sent_offline.append(entry)

        def is_answer(m: dict) -> bool:
            if message_id is not None and m.get("messageId") != message_id:
                return False
            return m["type"] == "peer-offline" or (
                m["type"] == "error" and m.get("code") == "QUEUE_FULL")

        def check(m: dict) -> None:
            # The queue as the server saw it: the messages stored before this one.
            before = [e for e in self.store.get(to, []) if e.nonce < nonce]
            stored = sum(e.state == "stored" for e in before)
            if m["type"] == "error":
                assert len(before) >= OFFLINE_MAX, (
                    f"a message that must be stored was refused: {m!r}")
                assert m.get("peerId") == to, m
                TOTALS["QUEUE_FULL"] += 1
                assert m.get("requestType") == message["type"], m
                entry.state = "gone"
                self.store[to].remove(entry)
                return
            assert stored < OFFLINE_MAX, f"queued past the limit of {OFFLINE_MAX}: {m!r}"
            assert (m.get("peerId"), m.get("queued")) == (to, True), m
            got_id = m.get("messageId")
            if message_id is None:
                assert isinstance(got_id, str) and SERVER_MADE_ID.fullmatch(got_id), m
            else:
                assert got_id == message_id, f"messageId {message_id!r} came back as {got_id!r}"
            entry.message_id = got_id
            entry.state = "stored"
            entry.acknowledged = True
            self.acknowledged.append(entry)
            TOTALS["acknowledged (queued:true)"] += 1

        self.expect(conn, f"peer-offline for #{nonce}", is_answer, check)

    def expect_relayed(self, target: Conn, out: dict, server_timestamp: bool) -> None:
        nonce = out["n"]

        def check(m: dict) -> None:
            assert_relayed(m, out, server_timestamp)
            TOTALS["relayed"] += 1

        self.expect(target, f"relayed #{nonce}",
                    lambda m: m.get("n") == nonce and m["type"] == out["type"], check)

    def send_ack(self, conn: Conn, message_ids: Any) -> None:
        message = build(type="ack", messageIds=message_ids)
        self.send(conn, encode_frame(message))
        if not conn.registered:
            self.expect_error(conn, "REGISTRATION_REQUIRED", message)
        elif not isinstance(message_ids, list) or not all(isinstance(i, str) for i in message_ids):
            self.expect_error(conn, "INVALID_FIELD", message)
        else:
            for entry in list(self.store.get(conn.identity, [])):
                if entry.message_id in message_ids:
                    self.remove_entry(entry)

    def send_join(self, conn: Conn, room_id: Any, user: Any) -> None:
        message = build(type="join-room", roomId=room_id, sender=user)
        self.send(conn, encode_frame(message))
        if self.refused_as_text(conn, message):
            return
        user_id = message.get("sender", conn.identity)
        if not valid_id(room_id) or not valid_id(user_id):
            self.expect_error(conn, "INVALID_FIELD", message)
            return
        room_id, user_id = nfc(room_id), nfc(user_id)
        if conn.identity is not None and conn.identity != user_id:
            self.expect_error(conn, "IDENTITY_MISMATCH", message)
            return
        self.bind(conn, user_id)
        members = self.rooms.setdefault(room_id, [])
        others = [m for m in members if m != user_id]
        if user_id not in members:
            for member in others:
                self.expect(self.holders[member], f"user-joined {user_id!r}",
                            lambda m: m["type"] == "user-joined" and m.get("userId") == user_id
                            and m.get("roomId") == room_id)
            members.append(user_id)
            conn.rooms.add(room_id)
        self.expect(conn, "join-success",
                    lambda m: m["type"] == "join-success" and m.get("roomId") == room_id,
                    lambda m: self.assert_equal((m.get("userId"), m.get("members")),
                                                (user_id, others)))

    def send_leave(self, conn: Conn, room_id: Any) -> None:
        message = {"type": "leave-room", "roomId": room_id}
        self.send(conn, encode_frame(message))
        if self.refused_as_text(conn, message):
            pass
        elif not valid_id(room_id):
            self.expect_error(conn, "INVALID_FIELD", message)
        elif nfc(room_id) not in conn.rooms:
            self.expect_error(conn, "NOT_IN_ROOM", message)
        else:
            room_id = nfc(room_id)
            self.leave_room(conn, room_id)
            self.expect(conn, "leave-success",
                        lambda m: m["type"] == "leave-success" and m.get("roomId") == room_id)

    def send_room(self, conn: Conn, room_id: Any, kind: str, payload: Any, target_id: Any,
                  spoof: bool, grows: bool = False) -> None:
        message = build(type=kind, roomId=room_id, to=target_id, n=self.next_nonce(),
                        messageId=f"r{self.nonce}", payload=payload)
        if not self.send_relayed(conn, message, spoof, grows):
            return
        if not valid_id(room_id):
            self.expect_error(conn, "INVALID_FIELD", message)
            return
        room_id = nfc(room_id)
        if room_id not in conn.rooms:
            self.expect_error(conn, "NOT_IN_ROOM", message)
        elif "to" in message and not valid_id(target_id):
            self.expect_error(conn, "INVALID_FIELD", message)
        elif grows:  # its size is checked before its target
            self.expect_error(conn, "INVALID_MESSAGE", message)
        elif "to" in message and (nfc(target_id) == conn.identity
                                  or nfc(target_id) not in self.rooms[room_id]):
            self.expect_error(conn, "PEER_NOT_IN_ROOM", message)
        else:
            out = dict(message, roomId=room_id, **{"from": conn.identity, "sender": conn.identity})
            if "to" in message:
                out["to"] = nfc(target_id)
            targets = [out["to"]] if "to" in message else [
                m for m in self.rooms[room_id] if m != conn.identity]
            for member in targets:
                self.expect_relayed(self.holders[member], out, False)

    def closed_by_server(self, conn: Conn, code: int) -> None:
        self.expect_close(conn, code)
        self.disconnected(conn)

    def close_client(self, conn: Conn, clean: bool) -> None:
        """The client goes: a closing handshake, or the TCP connection cut."""
        (conn.client.close if clean else conn.client.abort)()
        self.disconnected(conn)

    # -- restarts ------------------------------------------------------------------

    def restart(self, kill: bool, waiter: Conn | None = None, answers: int = 0) -> None:
        """
        Stop the server (SIGTERM: gracefully; SIGKILL) and start it again on
        the same file; then the clients come back as clients do: each peer
        registers again (same id, ack mode and device), each room member
        joins its rooms again.

        With ``waiter``, the signal goes as soon as ``waiter`` received
        ``answers`` of the answers it waits for, the others still on their
        way: what was answered must survive, the rest may or may not.
        """
        TOTALS["restarts (SIGKILL)" if kill else "restarts (SIGTERM)"] += 1
        previous = [(c.slot, c.identity, c.registered, c.ack_mode, c.device_type, c.device_info,
                     sorted(c.rooms)) for _, c in sorted(self.conns.items()) if c.identity]
        if waiter is not None:
            self._read_answers(waiter, answers)
        for conn in list(self.conns.values()):
            for expect in conn.expects:
                expect.required = False  # in flight when the signal comes
            if kill:
                self.expect_close(conn, None)
            else:
                self.expect(conn, "server-shutdown", lambda m: m["type"] == "server-shutdown",
                            lambda m: self.assert_equal(type(m.get("reconnectAfterMs")), int))
                self.expect_close(conn, 1001)
        status = self.server.stop(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + SETTLE
        for conn in self.closing:
            self._drain(conn, deadline, barrier=False)
        self.closing = []
        if kill:
            assert status == -signal.SIGKILL, status
        else:
            assert status == 0, f"exit status {status} after SIGTERM:\n{self.server.log}"
        assert_clean_log(self.server.log)
        self.holders, self.rooms, self.registrations = {}, {}, 0
        if kill:
            # Removals the server had not committed come back.
            for entry in self.removed_since_clean_stop:
                if entry.state == "gone":
                    entry.state = "maybe"
                    queue = self.store.setdefault(entry.recipient, [])
                    queue.append(entry)
                    queue.sort(key=lambda e: e.nonce)
        self.removed_since_clean_stop = []
        self.start_server()
        for slot, identity, registered, ack, device_type, device_info, rooms in previous:
            conn = self.conn(slot)
            if registered:
                self.send_register(conn, identity, ack,
                                   ABSENT if device_type is None else device_type,
                                   ABSENT if device_info is None else device_info)
                self.settle()
            for room_id in rooms:
                self.send_join(conn, room_id, identity)
                self.settle()

    def _read_answers(self, conn: Conn, answers: int) -> None:
        """Read ``conn`` until ``answers`` of the messages it waits for came (or all did)."""
        deadline = time.monotonic() + SETTLE
        waiting = len(conn.expects)
        while conn.expects and waiting - len(conn.expects) < answers:
            message = conn.client.receive(deadline - time.monotonic())
            assert not isinstance(message, Closed), f"{conn}: {message!r}"
            self._dispatch(conn, message)

    def send_burst(self, conn: Conn, to: str, count: int) -> None:
        """``count`` messages for ``to`` at once, each with its own id."""
        for _ in range(count):
            nonce = self.nonce + 1
            self.send_direct(conn, to, "message", {"n": nonce, "text": "burst é"},
                             {"messageId": f"b{nonce}"}, spoof=False, stamped=True)
        TOTALS["messages sent in bursts"] += count

    # -- the end: nothing acknowledged was lost -----------------------------------------

    def collect_and_check(self) -> None:
        """
        Every client goes; each recipient of a message the model holds, or of
        one acknowledged and never delivered, registers in ack mode and
        collects what is still stored: delivered or still stored must cover
        every message answered ``queued:true``. Then a graceful stop.
        """
        for conn in list(self.conns.values()):
            conn.client.close()
        self.conns = {}
        self._wait_connections(0)
        recipients = {e.recipient for e in self.acknowledged if e.nonce not in self.delivered}
        recipients |= {r for r, queue in self.store.items() if queue}
        still_stored: set[int] = set()
        for recipient in sorted(recipients):
            still_stored |= self._collect(recipient)
        lost = [e for e in self.acknowledged
                if e.nonce not in self.delivered and e.nonce not in still_stored]
        TOTALS["lost"] += len(lost)
        assert not lost, f"{len(lost)} messages answered queued:true were lost: {lost}"
        status = self.server.stop(signal.SIGTERM)
        assert status == 0, f"exit status {status} after SIGTERM:\n{self.server.log}"
        assert_clean_log(self.server.log)

    def _collect(self, recipient: str) -> set[int]:
        """Register ``recipient`` in ack mode; the nonces of what is still stored for it."""
        client = SyncClient(self.server.url)
        client.send_json({"type": "register", "peerId": recipient, "ack": True})
        client.send_json({"type": "ping"})
        by_nonce = {e.nonce: e for e in self.sent_offline if e.recipient == recipient}
        got: list[int] = []
        deadline = time.monotonic() + SETTLE
        while True:
            message = client.receive(deadline - time.monotonic())
            assert not isinstance(message, Closed), f"collecting {recipient!r}: {message!r}"
            if message["type"] == "pong":
                break
            if message["type"] != "offline-message":
                assert message["type"] == "registered", message
                continue
            entry = by_nonce.get(message["originalMessage"].get("n"))
            assert entry is not None, f"{recipient!r} got a message never queued for it: {message!r}"
            assert entry.message_id in (None, message["messageId"]), (message, entry)
            assert_relayed(message["originalMessage"], entry.body, entry.server_timestamp)
            got.append(entry.nonce)
        client.close()
        self._wait_connections(0)
        assert got == sorted(got) and len(got) == len(set(got)), f"{recipient!r}: {got}"
        missing = [e for e in self.store.get(recipient, [])
                   if e.state == "stored" and e.nonce not in got]
        assert not missing, f"stored for {recipient!r} but not delivered: {missing}"
        TOTALS["still stored at the end"] += len(got)
        return set(got)

    def _wait_connections(self, count: int) -> None:
        deadline = time.monotonic() + SETTLE
        while self.server.get("/stats")[1]["connections"] != count:
            assert time.monotonic() < deadline, "connections were not closed"
            time.sleep(0.01)

    def close_everything(self) -> None:
        """Cleanup: cut every connection, kill the server, remove its directory."""
        for conn in list(self.conns.values()) + self.closing:
            try:
                conn.client.abort()
            except Exception:
                pass
        self.server.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
        _LIVE.discard(self)
