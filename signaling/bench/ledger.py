"""The delivery ledgers: every sent message ends as exactly one of delivered, bad or missing.

Bad deliveries are counted under ``wrong_peer``, ``wrong_from``, ``wrong_type``,
``bad_payload`` (directed) or ``wrong_room``, ``wrong_sender``, ``bad_payload`` (chat);
``duplicate`` and ``unknown_seq`` are counted too. ``missing`` is only known after the drain,
see :meth:`DirectedLedger.finish` and :meth:`ChatLedger.finish`.
"""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Optional, Sequence

from signaling.bench.payload import Payloads, chat_seq, sdp_seq

PENDING, DELIVERED, UNSENT, BAD = 1, 2, 3, 4


class DirectedLedger:
    """Ledger of directed offers/answers between connections named by ``ids`` (index -> peer id)."""

    def __init__(self, ids: Sequence[str], payloads: Payloads, errors: Optional[Counter] = None) -> None:
        self.ids = ids
        self.payloads = payloads
        self.errors: Counter = errors if errors is not None else Counter()
        self.state = array("b")
        self.src = array("i")
        self.dst = array("i")
        self.kind = array("b")
        self.ts = array("q")
        self.t_send = array("d")
        self.t_sched = array("d")
        self.pending = 0
        self.delivered = 0

    def __len__(self) -> int:
        return len(self.state)

    def send(self, src: int, dst: int, kind: int, ts: int, t_send: float, t_sched: float) -> int:
        """Record a message about to be sent and return its sequence number."""
        seq = len(self.state)
        self.state.append(PENDING)
        self.src.append(src)
        self.dst.append(dst)
        self.kind.append(kind)
        self.ts.append(ts)
        self.t_send.append(t_send)
        self.t_sched.append(t_sched)
        self.pending += 1
        return seq

    def unsent(self, seq: int) -> None:
        """The send of ``seq`` failed locally: it is expected nowhere."""
        if self.state[seq] == PENDING:
            self.state[seq] = UNSENT
            self.pending -= 1

    def wire(self, seq: int) -> bytes:
        """The wire text of message ``seq``."""
        s, d = self.src[seq], self.dst[seq]
        return self.payloads.directed(self.kind[seq], seq, self.ts[seq], self.ids[s], self.ids[d])

    def receive(self, recipient: int, sender: object, kind: int, sdp: object) -> int:
        """Check one received message; return its seq when it is a correct delivery, else -1."""
        seq = sdp_seq(sdp)
        if not 0 <= seq < len(self.state):
            self.errors["bad_payload"] += 1
            return -1
        st = self.state[seq]
        if st != PENDING:
            self.errors["duplicate" if st in (DELIVERED, BAD) else "unknown_seq"] += 1
            return -1
        src = self.src[seq]
        if self.dst[seq] != recipient:
            bad = "wrong_peer"
        elif sender != self.ids[src]:
            bad = "wrong_from"
        elif kind != self.kind[seq]:
            bad = "wrong_type"
        elif not self.payloads.sdp_ok(sdp, seq, self.ts[seq], self.ids[src], self.ids[recipient]):
            bad = "bad_payload"
        else:
            bad = None
        self.pending -= 1
        if bad:
            self.errors[bad] += 1
            self.state[seq] = BAD
            return -1
        self.state[seq] = DELIVERED
        self.delivered += 1
        return seq

    def finish(self) -> int:
        """Count the messages still pending as ``missing`` and return how many there were."""
        missing = self.state.count(PENDING)
        if missing:
            self.errors["missing"] += missing
        return missing


class ChatLedger:
    """Ledger of room chats. ``ids``, ``rooms`` and ``member`` map a connection index to its
    user id, room index and position in the room; ``room_ids`` maps a room index to its id;
    every room has ``members`` members."""

    def __init__(
        self,
        ids: Sequence[str],
        rooms: Sequence[int],
        member: Sequence[int],
        room_ids: Sequence[str],
        members: int,
        payloads: Payloads,
        errors: Optional[Counter] = None,
    ) -> None:
        self.ids, self.rooms, self.member, self.room_ids = ids, rooms, member, room_ids
        self.members = members
        self.payloads = payloads
        self.errors: Counter = errors if errors is not None else Counter()
        self.ignored: Counter = Counter()
        self.src = array("i")
        self.ts = array("q")
        self.t_send = array("d")
        self.t_sched = array("d")
        self.got: list[int] = []
        self.expected = 0
        self.delivered = 0
        self.bad = 0

    def __len__(self) -> int:
        return len(self.src)

    def send(self, src: int, ts: int, t_send: float, t_sched: float) -> int:
        """Record a chat about to be sent by connection ``src``; return its seq."""
        seq = len(self.src)
        self.src.append(src)
        self.ts.append(ts)
        self.t_send.append(t_send)
        self.t_sched.append(t_sched)
        self.got.append(0)
        self.expected += self.members - 1
        return seq

    def unsent(self, seq: int) -> None:
        """The send of ``seq`` failed locally."""
        self.expected -= self.members - 1
        self.got[seq] = -1

    def wire(self, seq: int) -> bytes:
        """The wire text of chat ``seq``."""
        s = self.src[seq]
        return self.payloads.chat_message(self.room_ids[self.rooms[s]], self.ids[s], seq, self.ts[seq])

    def receive(self, recipient: int, room_id: object, sender: object, text: object) -> int:
        """Check one received chat; return its seq when it is a correct delivery, else -1."""
        seq = chat_seq(text)
        if not 0 <= seq < len(self.src) or self.got[seq] < 0:
            self.errors["unknown_seq"] += 1
            return -1
        src = self.src[seq]
        if src == recipient:
            self.ignored["self-echo"] += 1
            return -1
        room = self.rooms[src]
        if self.rooms[recipient] != room or room_id != self.room_ids[room]:
            self.errors["wrong_room"] += 1
            return -1
        bit = 1 << self.member[recipient]
        if self.got[seq] & bit:
            self.errors["duplicate"] += 1
            return -1
        self.got[seq] |= bit
        if sender != self.ids[src]:
            bad = "wrong_sender"
        elif text != self.payloads.chat(seq, self.ts[seq]):
            bad = "bad_payload"
        else:
            self.delivered += 1
            return seq
        self.errors[bad] += 1
        self.bad += 1
        return -1

    @property
    def outstanding(self) -> int:
        """Deliveries still expected."""
        return self.expected - self.delivered - self.bad

    def finish(self) -> int:
        """Count the deliveries still expected as ``missing`` and return how many there were."""
        missing = max(0, self.outstanding)
        if missing:
            self.errors["missing"] += missing
        return missing
