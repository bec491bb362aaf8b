"""
The protocol's invariants under random use, over real sockets.

A Hypothesis state machine drives a real ``python -m signaling`` process
(its SQLite store in a temporary directory, so stored messages survive
restarts) with up to four WebSocket clients that share a small pool of ids
and rooms (one id spelled in NFC and in NFD), so they collide: takeovers,
rooms, offline delivery, acks, paging, and hostile input of every kind
(invalid JSON and UTF-8, lone surrogates, server-only types, forged
senders, bad cursors, oversize frames, huge ids, binary garbage),
disconnects, and restarts by SIGTERM
and by SIGKILL, also in the middle of a burst of messages for later. After
a restart the clients come back as real ones do (same ids, same rooms).

After every step (:meth:`protocol_model.ServerModel.settle`), with a
``ping`` on every connection and bounded waits:

- the server process is alive (except inside a restart the test caused),
  and its ``/stats`` agree with the model;
- every request got its answer: exactly one ``error`` with the right code
  and ``requestType`` when refused, the reply of an accepted control
  message, ``peer-offline queued:true`` or ``QUEUE_FULL`` for a message
  kept for later;
- every message a client received is one it had to receive, and none is
  missing; relayed messages arrive intact with the true sender in both
  ``from`` and ``sender``; no client gets a server-only type from another;
- nothing acknowledged is lost: a registration delivers every message
  answered ``queued:true`` for its id, in order, under its message id; at
  the end each recipient registers in ack mode and collects what is still
  stored, and delivered or still stored must cover every acknowledged
  message, SIGKILL included.

The suite runs a fixed set of sequences (derandomized, about a minute). A
longer session is run by hand (figures in docs/security.md), for example:

    WS_MACHINE_EXAMPLES=120 WS_MACHINE_STEPS=50 WS_MACHINE_SEED=1 \\
        python3 -m pytest -q -s tests/test_websocket_state_machine.py

``WS_MACHINE_SHRINK=1`` shrinks a failure to its shortest sequence (slow:
each try starts servers), ``WS_MACHINE_RESTARTS`` bounds the restarts of one
sequence, and ``WS_MACHINE_REPORT=file.json`` writes the figures of a run.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from protocol_model import ABSENT, SERVER_TYPES, TOTALS, ServerModel, close_all, nfc

EXAMPLES = int(os.environ.get("WS_MACHINE_EXAMPLES", "15"))
STEPS = int(os.environ.get("WS_MACHINE_STEPS", "40"))
MAX_RESTARTS = int(os.environ.get("WS_MACHINE_RESTARTS", "2"))
#: Unset: derandomized (the same sequences every run); set: that seed.
SEED = os.environ.get("WS_MACHINE_SEED")
REPORT = os.environ.get("WS_MACHINE_REPORT")
SHRINK = os.environ.get("WS_MACHINE_SHRINK", "") not in ("", "0")

#: Client connections at once.
SLOTS = 4

# -- the values rules choose from, by name (so a printed sequence stays short) ---

#: Ids, two of them one id in two spellings (NFC and NFD), one of 200
#: characters that are 100 in NFC.
IDS = {"ann": "ann", "bob": "bob", "cy": "cy", "han": "漢字", "128-chars": "d" * 128,
       "jose-nfc": "jos\u00e9", "jose-nfd": "jose\u0301", "200-nfd-chars": "e\u0301" * 100}
BAD_IDS = {
    "empty": "", "129-nfc-chars": "e\u0301" * 129, "129-chars": "e" * 129, "5000-chars": "f" * 5000, "nul": "nul\x00id",
    "lone-surrogate": "\ud800", "tab": "tab\tid", "number": 7, "null": None,
    "list": ["ann"], "object": {"id": "ann"}, "true": True,
}
ROOMS = {"r1": "r1", "r2": "r2", "han": "房间", "cafe-nfd": "cafe\u0301"}
BAD_ROOMS = {"empty": "", "129-chars": "g" * 129, "number": 3, "null": None,
             "lone-surrogate": "x\udfff"}
RELAYED_TYPES = ["offer", "answer", "ice-candidate", "message", "chat", "custom-kind"]
PAYLOADS = {
    "small": {"sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1", "k": [1, 2.5, None, True, -0.0]},
    "cjk-45kB": "漢" * 15000,
    "lone-surrogate": "a\ud800b\udc00",
    "non-ascii": "😀 é \u2028",
    "nested": {"a": [{"b": [{"c": [[[[1]]]]}]}]},
}
#: 45 kB of CJK text sent with ``\uXXXX`` escapes (its lone surrogate forces
#: them): 90 kB, over the size limit, which is checked before anything else.
OVERSIZE_PAYLOAD = ["漢" * 15000, "\ud800"]


def message_id_fields(name: str, nonce: int) -> dict[str, Any]:
    """The ``messageId`` (or ``id``) field named ``name`` (unique by ``nonce`` where it says)."""
    return {
        "absent": {}, "fresh": {"messageId": f"m{nonce}"}, "int": {"messageId": nonce},
        "empty": {"messageId": ""}, "bool": {"messageId": True}, "dup": {"messageId": "dup"},
        "id-field": {"id": f"i{nonce}"}, "256-chars": {"messageId": "h" * 250 + f"{nonce:06d}"},
        "emoji": {"messageId": f"😀{nonce}"},
        "257-chars": {"messageId": "h" * 257}, "lone-surrogate": {"messageId": f"\ud800{nonce}"},
        "nul": {"messageId": f"a\x00{nonce}"},
    }[name]


MESSAGE_IDS = ["absent", "fresh", "int", "empty", "bool", "dup", "id-field", "256-chars", "emoji"]
#: (deviceType, deviceInfo) of a registration.
DEVICES = {"absent": (ABSENT, ABSENT), "phone": ("phone", {"os": "linux", "v": [1, 2]}),
           "type-64-chars": ("t" * 64, ABSENT),
           "desktop": ("desktop", ABSENT), "nulls": (None, None)}
BAD_DEVICES = {"type-number": (5, ABSENT), "type-65-chars": ("t" * 65, ABSENT), "info-5000-bytes": ("phone", {"blob": "z" * 5000}),
               "info-string": (ABSENT, "x"), "info-list": (ABSENT, [1])}
LIMITS = {"absent": ABSENT, "1": 1, "2": 2, "500": 500}
BAD_LIMITS = {"0": 0, "501": 501, "string": "5", "true": True, "float": 1.5,
              "huge-float": 1e308, "null": None}
CURSORS = {"absent": ABSENT, "null": None, "0": "0", "1": "1", "2": "2", "5": "5",
           "20-digits": "9" * 20}
BAD_CURSORS = {"21-digits": "9" * 21, "5000-digits": "9" * 5000, "superscript": "²",
               "arabic": "٣", "negative": "-1", "decimal": "1.5", "number": 1, "list": ["1"],
               "empty": ""}
#: Frames answered by one error: (frame, code, whether the server could read it as a
#: message, so that its error echoes its type and id).
BAD_FRAMES = {
    "not-json": (b"not json", "INVALID_MESSAGE", False),
    "empty": (b"", "INVALID_MESSAGE", False),
    "array": (b"[1,2]", "INVALID_MESSAGE", False),
    "no-type": (b'{"to":"ann"}', "INVALID_MESSAGE", False),
    "type-number": (b'{"type":5}', "INVALID_MESSAGE", False),
    "too-deep": (b'{"type":"offer","to":"ann","x":' + b"[" * 70 + b"]" * 70 + b"}",
                 "INVALID_MESSAGE", False),
    "huge-number": (b'{"type":"ping","v":1e400}', "INVALID_MESSAGE", False),
    "nan": (b'{"type":"ping","v":NaN}', "INVALID_MESSAGE", False),
    "5000-digit-int": (b'{"type":"ping","v":1' + b"0" * 5000 + b"}", "INVALID_MESSAGE", False),
    "unknown-type": (b'{"type":"hello"}', "UNKNOWN_MESSAGE_TYPE", True),
    "long-unknown-type": (b'{"type":"' + b"t" * 200 + b'"}', "UNKNOWN_MESSAGE_TYPE", True),
    "surrogate-type": (b'{"type":"\\ud800"}', "INVALID_FIELD", True),
    "surrogate-in-ping": (b'{"type":"ping","x":"\\ud800"}', "INVALID_FIELD", True),
    "surrogate-key": (b'{"type":"offer","to":"ann","messageId":"k1","\\udfff":1}',
                      "INVALID_FIELD", True),
    "roomid-null": (b'{"type":"offer","to":"ann","roomId":null}', "INVALID_FIELD", True),
    "limit-1e308": (b'{"type":"get-peers","limit":1e308}', "INVALID_FIELD", True),
    "binary-garbage": (b"\xff\xfe\x00\x80garbage", "INVALID_MESSAGE", False),
}
#: Frames answered by a pong.
PING_FRAMES = {
    "binary-ping": b'{"type":"ping"}',
    "fragmented-binary-ping": b'{"type":"ping"}',
}


def bad(table: dict[str, Any]) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted("bad:" + k for k in table))


def good(table: dict[str, Any]) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(table))


def value(table: dict[str, Any], bad_table: dict[str, Any], name: str) -> Any:
    """The value a strategy named: ``bad:x`` is ``bad_table[x]``."""
    return bad_table[name[4:]] if name.startswith("bad:") else table[name]


#: A hostile request: (family, one or two named values).
HOSTILE_REQUESTS = st.one_of(
    st.tuples(st.just("register"), bad(BAD_IDS), st.just("absent")),
    st.tuples(st.just("register"), good(IDS), good(BAD_DEVICES)),
    st.tuples(st.just("rebind"), st.sampled_from(["register", "join"]), good(IDS)),
    st.tuples(st.just("join"), bad(BAD_ROOMS), good(IDS)),
    st.tuples(st.just("join"), good(ROOMS), bad(BAD_IDS)),
    st.tuples(st.just("leave"), bad(BAD_ROOMS), st.just("")),
    st.tuples(st.just("leave"), good(ROOMS), st.just("")),
    st.tuples(st.just("get-peers"), good(BAD_LIMITS), good(CURSORS)),
    st.tuples(st.just("get-peers"), good(LIMITS), good(BAD_CURSORS)),
    st.tuples(st.just("direct"), bad(BAD_IDS), st.just("fresh")),
    st.tuples(st.just("direct"), good(IDS), st.sampled_from(
        ["grows", "oversize", "257-chars", "lone-surrogate", "nul"])),
    st.tuples(st.just("direct-unregistered"), good(IDS), st.just("fresh")),
    st.tuples(st.just("room"), bad(BAD_ROOMS), st.just("absent")),
    st.tuples(st.just("room"), good(ROOMS), bad(BAD_IDS)),
    st.tuples(st.just("room"), good(ROOMS), st.sampled_from(["grows", "oversize"])),
    st.tuples(st.just("ack"), st.sampled_from(["not-a-list", "numbers", "absent"]), st.just("")),
    st.tuples(st.just("server-type"), st.sampled_from(sorted(SERVER_TYPES)),
              st.sampled_from(["to", "roomId", "neither"])),
)
ACKS = ["received", "first-received", "bogus", "mixed", "empty-list"]


def step(function: Callable[..., None]) -> Callable[..., None]:
    """
    A rule's body, then the wait for everything it caused. The sequence
    counts as healthy (worth the final check at teardown) only while its
    last step ran to the end.
    """

    @functools.wraps(function)
    def run(self: "WebSocketMachine", **kwargs: Any) -> None:
        self.healthy = False
        TOTALS[f"rule {function.__name__}"] += 1
        function(self, **kwargs)
        self.settle()
        self.healthy = True

    return run


class WebSocketMachine(ServerModel, RuleBasedStateMachine):
    """Random steps of up to four clients against one server process."""

    def __init__(self) -> None:
        self.healthy = False
        self.restarts = 0
        TOTALS["sequences"] += 1
        super().__init__()
        self.healthy = True

    @staticmethod
    def pick(choices: list[Any], index: int) -> Any:
        """One of ``choices`` by a drawn index (rules draw indexes: the choices change)."""
        return choices[index % len(choices)]

    def register_somewhere(self, slot: int, peer_id: str, ack: bool, device: str) -> None:
        """
        ``peer_id`` registers on the first connection from ``slot`` on that
        is not bound to another id (a new one where there is none).
        """
        for candidate in [*range(slot, SLOTS), *range(slot)]:
            conn = self.conns.get(candidate)
            if conn is None or conn.identity in (None, nfc(peer_id)):
                slot = candidate
                break
        self.send_register(self.conn(slot), peer_id, ack, *DEVICES[device])

    # -- peers ------------------------------------------------------------------

    @rule(slot=st.integers(0, SLOTS - 1), peer=good(IDS), ack=st.booleans(),
          device=good(DEVICES))
    @step
    def register(self, slot, peer, ack, device):
        """A peer comes (back) online, or takes its id over from another connection."""
        self.register_somewhere(slot, IDS[peer], ack, device)

    def waiting_ids(self) -> list[str]:
        """
        Ids nobody holds that were sent messages for later. (Not "that have
        messages stored": after a SIGKILL that depends on timing, and a rule's
        precondition must depend only on the steps before it.)
        """
        return sorted({e.recipient for e in self.sent_offline} - set(self.holders))

    @precondition(lambda self: self.waiting_ids())
    @rule(which=st.integers(0, len(IDS) - 1), slot=st.integers(0, SLOTS - 1), ack=st.booleans())
    @step
    def backlog_comes_online(self, which, slot, ack):
        """A peer that was sent messages for later registers (``which``: an index among them)."""
        self.register_somewhere(slot, self.pick(self.waiting_ids(), which), ack, "absent")

    @rule(slot=st.integers(0, SLOTS - 1), limit=good(LIMITS), cursor=good(CURSORS))
    @step
    def get_peers(self, slot, limit, cursor):
        self.send_get_peers(self.conn(slot), LIMITS[limit], CURSORS[cursor])

    @precondition(lambda self: self.registered_peers())
    @rule(sender=st.integers(0, SLOTS - 1), to=good(IDS), kind=st.sampled_from(RELAYED_TYPES),
          payload=good(PAYLOADS), message_id=st.sampled_from(MESSAGE_IDS), spoof=st.booleans(),
          stamped=st.booleans())
    @step
    def direct_message(self, sender, to, kind, payload, message_id, spoof, stamped):
        """A message with ``to`` from a registered peer (``sender``: an index among them)."""
        self.send_direct(self.pick(self.registered_peers(), sender), IDS[to], kind,
                         PAYLOADS[payload], message_id_fields(message_id, self.nonce + 1),
                         spoof, stamped)

    @precondition(lambda self: self.registered_peers())
    @rule(peer=st.integers(0, SLOTS - 1), ids=st.sampled_from(ACKS))
    @step
    def ack(self, peer, ids):
        """An ack from a registered peer of what it received (or never received)."""
        conn = self.pick(self.registered_peers(), peer)
        received = conn.received_ids
        self.send_ack(conn, {
            "received": received, "first-received": received[:1], "bogus": ["zz-never-sent"],
            "mixed": received[-1:] + ["zz-never-sent"], "empty-list": [],
        }[ids])

    # -- rooms ------------------------------------------------------------------

    @rule(slot=st.integers(0, SLOTS - 1), room=good(ROOMS),
          sender=st.sampled_from(["absent"] + sorted(IDS)))
    @step
    def join_room(self, slot, room, sender):
        self.send_join(self.conn(slot), ROOMS[room], ABSENT if sender == "absent" else IDS[sender])

    @precondition(lambda self: self.room_conns())
    @rule(member=st.integers(0, SLOTS - 1), room=st.integers(0, len(ROOMS) - 1))
    @step
    def leave(self, member, room):
        """A member (an index among the connections in rooms) leaves one of its rooms."""
        conn = self.pick(self.room_conns(), member)
        self.send_leave(conn, self.pick(sorted(conn.rooms), room))

    @precondition(lambda self: self.room_conns())
    @rule(member=st.integers(0, SLOTS - 1), room=st.integers(0, len(ROOMS) - 1),
          kind=st.sampled_from(RELAYED_TYPES), payload=good(PAYLOADS),
          to=st.sampled_from(["absent"] + sorted(IDS)), spoof=st.booleans())
    @step
    def room_message(self, member, room, kind, payload, to, spoof):
        """A member sends to one of its rooms, or (``to``) to one member of it."""
        conn = self.pick(self.room_conns(), member)
        self.send_room(conn, self.pick(sorted(conn.rooms), room), kind, PAYLOADS[payload],
                       ABSENT if to == "absent" else IDS[to], spoof)

    # -- hostile input ------------------------------------------------------------

    @rule(slot=st.integers(0, SLOTS - 1), request=HOSTILE_REQUESTS)
    @step
    def hostile_request(self, slot, request):
        """A request with bad fields, spoofed types, or one that grows too large."""
        family, first, second = request
        conn = self.conns.get(slot) or self.conn(slot)
        if family == "register":
            self.send_register(conn, value(IDS, BAD_IDS, first), False,
                               *{**DEVICES, **BAD_DEVICES}[second])
        elif family == "rebind":
            bound = [c for _, c in sorted(self.conns.items()) if c.identity is not None]
            conn = self.pick(bound, slot) if bound else conn
            if first == "register":
                self.send_register(conn, IDS[second], False, *DEVICES["absent"])
            else:
                self.send_join(conn, ROOMS["r1"], IDS[second])
        elif family == "join":
            self.send_join(conn, value(ROOMS, BAD_ROOMS, first), value(IDS, BAD_IDS, second))
        elif family == "leave":
            self.send_leave(conn, value(ROOMS, BAD_ROOMS, first))
        elif family == "get-peers":
            self.send_get_peers(conn, {**LIMITS, **BAD_LIMITS}[first],
                                {**CURSORS, **BAD_CURSORS}[second])
        elif family.startswith("direct"):
            registered = self.registered_peers()
            unregistered = [s for s in range(SLOTS)
                            if s not in self.conns or not self.conns[s].registered]
            to = value(IDS, BAD_IDS, first)
            if family == "direct" and registered:
                # Hostile ids matter most where they are stored: for an id nobody holds.
                conn = self.pick(registered, slot)
                offline = sorted({nfc(i) for i in IDS.values()} - set(self.holders))
                if first in IDS and second != "oversize" and offline:
                    to = self.pick(offline, sorted(IDS).index(first))
            elif family == "direct-unregistered" and unregistered:
                conn = self.conn(self.pick(unregistered, slot))
            self.send_direct(conn, to, "offer",
                             OVERSIZE_PAYLOAD if second == "oversize" else PAYLOADS["small"],
                             message_id_fields(second if second in ("257-chars", "lone-surrogate",
                                                                    "nul")
                                               else "fresh", self.nonce + 1),
                             True, False, grows=second == "grows")
        elif family == "room":
            room_id = value(ROOMS, BAD_ROOMS, first)
            if self.room_conns():
                conn = self.pick(self.room_conns(), slot)
                if first in ROOMS:  # one of its own rooms, where a message is not refused early
                    room_id = self.pick(sorted(conn.rooms), sorted(ROOMS).index(first))
            self.send_room(conn, room_id, "chat",
                           OVERSIZE_PAYLOAD if second == "oversize" else PAYLOADS["small"],
                           ABSENT if second in ("absent", "grows", "oversize")
                           else value(IDS, BAD_IDS, second), True, grows=second == "grows")
        elif family == "ack":
            self.send_ack(conn, {"not-a-list": "m1", "numbers": [1, 2], "absent": ABSENT}[first])
        else:
            self.send_server_type(conn, first, second)

    def send_server_type(self, conn: Any, kind: str, where: str) -> None:
        """A client that sends a type only the server sends (server-shutdown...)."""
        message = {"type": kind, "reconnectAfterMs": 86400000, "status": "offline",
                   "peerId": "ann", "userId": "ann"}
        if where != "neither":
            message[where] = "r1" if where == "roomId" else "ann"
        self.send(conn, json.dumps(message).encode())
        self.expect_error(conn, "INVALID_FIELD", message)

    @rule(slot=st.integers(0, SLOTS - 1),
          kind=st.sampled_from(sorted(BAD_FRAMES) + sorted(PING_FRAMES)
                               + ["oversize", "invalid-utf8-text"]))
    @step
    def hostile_frame(self, slot, kind):
        """Frames that are not messages, pings in odd frames, frames that end the connection."""
        conn = self.conn(slot)
        if kind in BAD_FRAMES:
            frame, code, readable = BAD_FRAMES[kind]
            self.send(conn, frame, text=not kind.startswith("binary"))
            self.expect_error(conn, code, json.loads(frame) if readable else None)
        elif kind == "fragmented-binary-ping":
            conn.client.send_fragments([b'{"type"', b':"pi', b'ng"}'])
            self.expect_pong(conn)
        elif kind in PING_FRAMES:
            self.send(conn, PING_FRAMES[kind], text=not kind.startswith("binary"))
            self.expect_pong(conn)
        elif kind == "oversize":
            self.send(conn, b'{"type":"ping","pad":"' + b"p" * 65536 + b'"}')
            self.closed_by_server(conn, 1009)
        else:
            self.send(conn, b'{"type":"ping","x":"\xff\xfe"}')
            self.closed_by_server(conn, 1007)

    # -- connections and the process ------------------------------------------------

    @initialize(peers=st.lists(good(IDS), min_size=3, max_size=3, unique=True), ack=st.booleans(),
                room=good(ROOMS))
    @step
    def start_talking(self, peers, ack, room):
        """Two registered peers (the first in ack mode or not); the second and a third id in a room."""
        self.send_register(self.conn(0), IDS[peers[0]], ack, *DEVICES["phone"])
        self.send_register(self.conn(1), IDS[peers[1]], False, *DEVICES["absent"])
        self.settle()
        self.send_join(self.conn(1), ROOMS[room], ABSENT)
        self.settle()
        self.send_join(self.conn(2), ROOMS[room], IDS[peers[2]])

    @precondition(lambda self: self.conns)
    @rule(slot=st.integers(0, SLOTS - 1), clean=st.booleans())
    @step
    def disconnect(self, slot, clean):
        """A client goes (an index among the open connections): closing handshake or cut."""
        self.close_client(self.pick([c for _, c in sorted(self.conns.items())], slot), clean)

    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule(kill=st.booleans())
    @step
    def restart_server(self, kill):
        self.restarts += 1
        self.restart(kill)

    @precondition(lambda self: self.registered_peers() and self.restarts < MAX_RESTARTS)
    @rule(sender=st.integers(0, SLOTS - 1), to=good(IDS), count=st.integers(1, 12),
          answers=st.integers(0, 12))
    @step
    def kill_during_burst(self, sender, to, count, answers):
        """
        A registered peer sends ``count`` messages at once; the server gets
        SIGKILL as soon as ``answers`` of them were answered.
        """
        self.restarts += 1
        conn = self.pick(self.registered_peers(), sender)
        self.send_burst(conn, IDS[to], count)
        self.restart(kill=True, waiter=conn, answers=answers)

    @invariant()
    def server_is_running(self):
        assert self.server.running, (
            f"the server exited with {self.server.process.returncode}:\n{self.server.log}")

    def teardown(self) -> None:
        try:
            if self.healthy and self.server.running:
                self.healthy = False
                self.collect_and_check()
            elif self.server.process.popen is not None:
                print(f"\n--- the server's log (last run) ---\n{self.server.log[-30000:]}")
        finally:
            self.close_everything()


def test_websocket_state_machine():
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    config = settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        derandomize=SEED is None, database=None, phases=phases,
        suppress_health_check=list(HealthCheck), print_blob=True,
    )

    def factory() -> WebSocketMachine:
        return WebSocketMachine()

    if SEED is not None:
        seed(int(SEED))(factory)
    started = time.monotonic()
    TOTALS.clear()
    try:
        run_state_machine_as_test(factory, settings=config)
    finally:
        close_all()
        TOTALS["seconds"] = round(time.monotonic() - started)
        figures = json.dumps(dict(sorted(TOTALS.items())))
        print(f"\nwebsocket state machine: {figures}")
        if REPORT:
            with open(REPORT, "w") as f:
                f.write(figures + "\n")
