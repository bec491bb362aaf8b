"""The fake SDP and chat payloads; their wire text is byte-compatible with the reference load generator.

An SDP's ``o=`` line carries the ledger sequence number and the send timestamp (microseconds), its
``s=`` line ``from>to``; the rest is a fixed filler. A chat text is ``seq|ts|filler``. Peer ids are
alphanumeric (the bench makes them), so only the SDP's CR/LF need JSON escaping.
"""

from __future__ import annotations

import json

FILL_LINE = "a=x-bench-filler:0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP\r\n"
CHAT_WORDS = "lorem ipsum dolor sit amet "
KINDS = ("offer", "answer")


class Payloads:
    """Builders and checkers for one payload size."""

    def __init__(self, sdp_bytes: int = 1024, chat_bytes: int = 100) -> None:
        n = -(-sdp_bytes // len(FILL_LINE))
        self.sdp_fill = (FILL_LINE * n)[: max(0, sdp_bytes - 80)]
        self._sdp_fill_json = json.dumps(self.sdp_fill)[1:-1]
        m = -(-chat_bytes // len(CHAT_WORDS)) + 1
        self.chat_fill = (CHAT_WORDS * m)[: max(0, chat_bytes - 30)]

    @staticmethod
    def sdp_head(seq: int, ts: int, src: str, dst: str) -> str:
        """The variable first lines of an SDP."""
        return f"v=0\r\no=- {seq} {ts} IN IP4 127.0.0.1\r\ns={src}>{dst}\r\nt=0 0\r\n"

    def sdp(self, seq: int, ts: int, src: str, dst: str) -> str:
        """The whole fake SDP text."""
        return self.sdp_head(seq, ts, src, dst) + self.sdp_fill

    def directed(self, kind: int, seq: int, ts: int, src: str, dst: str) -> bytes:
        """The wire text of a directed offer (``kind`` 0) or answer (1) from ``src`` to ``dst``."""
        head = f"v=0\\r\\no=- {seq} {ts} IN IP4 127.0.0.1\\r\\ns={src}>{dst}\\r\\nt=0 0\\r\\n"
        name = KINDS[kind]
        return (
            f'{{"type":"{name}","to":"{dst}","from":"{src}",'
            f'"{name}":{{"type":"{name}","sdp":"{head}{self._sdp_fill_json}"}}}}'
        ).encode()

    def sdp_ok(self, sdp: object, seq: int, ts: int, src: str, dst: str) -> bool:
        """Whether ``sdp`` is byte-for-byte the SDP that was sent."""
        return sdp == self.sdp(seq, ts, src, dst)

    def chat(self, seq: int, ts: int) -> str:
        """The chat text of message ``seq``."""
        return f"{seq}|{ts}|{self.chat_fill}"

    def chat_message(self, room: str, sender: str, seq: int, ts: int) -> bytes:
        """The wire text of a room chat."""
        return json.dumps(
            {"type": "chat", "roomId": room, "sender": sender, "message": self.chat(seq, ts)},
            separators=(",", ":"),
        ).encode()


def sdp_seq(sdp: object) -> int:
    """The sequence number in a fake SDP, or -1."""
    if not isinstance(sdp, str) or not sdp.startswith("v=0\r\no=- "):
        return -1
    end = sdp.find(" ", 9)
    try:
        return int(sdp[9:end])
    except ValueError:
        return -1


def chat_seq(text: object) -> int:
    """The sequence number in a chat text, or -1."""
    if not isinstance(text, str):
        return -1
    head = text.split("|", 1)[0]
    return int(head) if head.isdigit() else -1
