"""
Wire format: decoding, validation, encoding and the one error builder.

Every frame is one UTF-8 JSON object with a string ``type``. The full
protocol is described in ``docs/protocol.md``; this module only knows the
shape of single messages, never who receives them.
"""

from __future__ import annotations

import json
import math
import re
import sys
import unicodedata
from typing import Any

import orjson

from .config import MAX_ID_LENGTH, MAX_JSON_DEPTH as MAX_DEPTH, MAX_MESSAGE_ID_LENGTH

__all__ = [
    "ProtocolError",
    "decode",
    "encode",
    "error_message",
    "offline_delivery",
    "validate_id",
    "is_unicode",
    "lone_surrogate_field",
    "client_message_id",
    "CONTROL_TYPES",
    "RELAYED_TYPES",
    "SERVER_TYPES",
    "MAX_ID_LENGTH",
    "MAX_DEPTH",
]

# The one table of message types. Dispatch (signaling.hub) answers exactly
# CONTROL_TYPES; metrics label CONTROL_TYPES | RELAYED_TYPES by name and the
# rest as "other".

#: Types a client sends that the server answers itself.
CONTROL_TYPES = frozenset(
    {"register", "join-room", "leave-room", "get-peers", "ping", "ack"}
)

#: Relayed types common enough to be counted under their own name; any other
#: client type with ``to`` or ``roomId`` is relayed too.
RELAYED_TYPES = frozenset({"offer", "answer", "ice-candidate", "chat", "message"})

#: Types only the server sends.
SERVER_TYPES = frozenset(
    {
        "registered", "join-success", "leave-success", "user-joined", "user-left",
        "peer-status", "peers-list", "peer-offline", "offline-message", "pong",
        "error", "server-shutdown",
    }
)

# Close codes (PROTOCOL section 7). Autobahn sends 1002, 1007 and 1009 itself.

#: The server is shutting down.
CLOSE_GOING_AWAY = 1001
#: Policy: a bad handshake token, an ignored rate limit.
CLOSE_POLICY = 1008
#: A message over the size limit.
CLOSE_TOO_LARGE = 1009
#: Overloaded: a client that does not read what is sent to it.
CLOSE_SLOW_CONSUMER = 1013
#: Replaced by a newer connection for the same id.
CLOSE_REPLACED = 4001

# Error codes (PROTOCOL section 6).
INVALID_MESSAGE = "INVALID_MESSAGE"
INVALID_FIELD = "INVALID_FIELD"
UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
REGISTRATION_REQUIRED = "REGISTRATION_REQUIRED"
IDENTITY_MISMATCH = "IDENTITY_MISMATCH"
NOT_IN_ROOM = "NOT_IN_ROOM"
PEER_NOT_IN_ROOM = "PEER_NOT_IN_ROOM"
ROOM_FULL = "ROOM_FULL"
TOO_MANY_ROOMS = "TOO_MANY_ROOMS"
QUEUE_FULL = "QUEUE_FULL"
RATE_LIMITED = "RATE_LIMITED"
UNAUTHORIZED = "UNAUTHORIZED"
FORBIDDEN = "FORBIDDEN"
UNAVAILABLE = "UNAVAILABLE"
INTERNAL_ERROR = "INTERNAL_ERROR"

#: Every error code the server sends.
ERROR_CODES = frozenset(
    {
        INVALID_MESSAGE, INVALID_FIELD, UNKNOWN_MESSAGE_TYPE, REGISTRATION_REQUIRED,
        IDENTITY_MISMATCH, NOT_IN_ROOM, PEER_NOT_IN_ROOM, ROOM_FULL, TOO_MANY_ROOMS,
        QUEUE_FULL, RATE_LIMITED, UNAUTHORIZED, FORBIDDEN, UNAVAILABLE, INTERNAL_ERROR,
    }
)


class ProtocolError(Exception):
    """
    A request the server refuses; becomes one ``error`` message to the sender.

    ``extra`` holds additional fields for the error message (for example
    ``retryAfterMs``).
    """

    def __init__(self, code: str, text: str, **extra: Any) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.extra = extra
        #: What the error may echo of a request that was read but refused
        #: whole by :func:`decode` (its ``type`` and id), when that is known.
        self.request: dict[str, Any] | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _parse_int(text: str) -> int:
    value = int(text) if len(text) <= _MAX_INT_TEXT else None
    if value is None or not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        raise ValueError(f"number {text[:20]}... is out of range")
    return value


#: The largest finite float: a number beyond it, integer or not, has no
#: value a JavaScript client could read.
_FLOAT_MAX = sys.float_info.max
#: Characters of the longest integer within the float range (sign included).
_MAX_INT_TEXT = len(str(int(_FLOAT_MAX))) + 1

_decoder = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int
)


_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
_ascii_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


_fast_loads = orjson.loads
_fast_dumps = orjson.dumps

#: Floats at least this large may be integers of more than 64 bits that
#: orjson read as floats.
_HUGE = 2.0 ** 63


def _inspect(message: dict[str, Any]) -> int:
    """
    One walk over ``message``: :data:`_TOO_DEEP` when it nests deeper than
    :data:`MAX_DEPTH`, :data:`_HUGE_FLOAT` when it holds a float of
    :data:`_HUGE` or more, else 0.
    """
    found = 0
    stack: list[tuple[Any, int]] = [(message, 1)]
    while stack:
        node, depth = stack.pop()
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind is float:
                if value >= _HUGE or value <= -_HUGE:
                    found = _HUGE_FLOAT
            elif kind is dict or kind is list:
                if depth == MAX_DEPTH:
                    return _TOO_DEEP
                stack.append((value, depth + 1))
    return found


_TOO_DEEP = 1
_HUGE_FLOAT = 2


def decode(payload: bytes | str) -> dict[str, Any]:
    """
    Parse one frame into a message dict.

    ``payload`` is the frame's bytes, or its text decoded from UTF-8. The
    fast parser (orjson) reads almost every message; what it refuses, and
    the rare message whose integers it would read inexactly, is read again
    by the standard parser, whose refusals name the problem
    (:func:`_decode_exactly`).

    :raises ProtocolError: ``INVALID_MESSAGE`` when the payload is not UTF-8,
        not JSON, not an object, nests deeper than :data:`MAX_DEPTH` or has
        no string ``type``; ``INVALID_FIELD`` naming the field when a string
        (a value or a key, at any depth) holds a lone surrogate, which is not
        Unicode text and could be neither stored nor sent as UTF-8. Escaped
        surrogate pairs are one character and welcome.
    """
    try:
        message = _fast_loads(payload)
    except orjson.JSONDecodeError:
        # Invalid UTF-8, a lone surrogate, or not JSON: let the standard
        # parser say which.
        return _decode_exactly(_text(payload))
    if _checked(message) == _HUGE_FLOAT:
        # Maybe an integer of more than 64 bits, which orjson reads as a
        # float and the standard parser keeps exact.
        return _decode_exactly(_text(payload))
    return message


def _checked(message: Any) -> int:
    """
    Refuse ``message`` unless it is an object with a string ``type``,
    nested at most :data:`MAX_DEPTH`; what else :func:`_inspect` found.
    """
    if type(message) is not dict:
        raise ProtocolError(INVALID_MESSAGE, "message must be a JSON object")
    found = _inspect(message)
    if found == _TOO_DEEP:
        raise ProtocolError(INVALID_MESSAGE, "message is nested too deeply")
    if type(message.get("type")) is not str:
        raise ProtocolError(INVALID_MESSAGE, "message needs a string field 'type'")
    return found


def _text(payload: bytes | str) -> str:
    """``payload`` as text. :raises ProtocolError: when it is not UTF-8."""
    if type(payload) is str:
        return payload
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_MESSAGE, "message is not valid UTF-8")


def _decode_exactly(payload: str) -> dict[str, Any]:
    """:func:`decode` with the standard parser: exact integers, errors that say why."""
    try:
        message = _decoder.decode(payload)
    except RecursionError:
        raise ProtocolError(INVALID_MESSAGE, "message is nested too deeply")
    except ValueError as e:
        raise ProtocolError(INVALID_MESSAGE, f"message is not valid JSON: {e}")
    _checked(message)
    if _SURROGATE_ESCAPE.search(payload) is not None:
        where = lone_surrogate_field(message)
        if where is not None:
            error = ProtocolError(
                INVALID_FIELD, f"{where} must be valid Unicode text (it holds a lone surrogate)"
            )
            error.request = _echoable(message)
            raise error
    return message


def _echoable(message: dict[str, Any]) -> dict[str, Any]:
    """
    The fields of a refused ``message`` its error echoes (``type``, and
    ``messageId`` or ``id``), left out where they are not Unicode text: an
    id that is itself refused is not sent back.
    """
    echo = {}
    for key in ("type", "messageId", "id"):
        value = message.get(key)
        if isinstance(value, str) and not is_unicode(value):
            if key != "type":
                break  # the client's id is the bad one: no id at all
            continue
        if key in message:
            echo[key] = value
    return echo


def encode(message: dict[str, Any]) -> bytes:
    """
    Serialize a message for the wire: compact JSON in UTF-8, characters
    written as themselves (a ``\\uXXXX`` escape would make non-Latin text up
    to three times larger), by the fast encoder (orjson). What it cannot
    write (an integer of more than 64 bits, a lone surrogate, which cannot
    be UTF-8) the standard encoder writes exactly, a lone surrogate as an
    escape. Messages never hold non-finite numbers: :func:`decode` refuses
    them.
    """
    try:
        return _fast_dumps(message)
    except TypeError:
        try:
            return _encoder.encode(message).encode("utf-8")
        except UnicodeEncodeError:
            return _ascii_encoder.encode(message).encode("ascii")


def offline_delivery(
    message_id: str, body: bytes, stored_at_ms: int, delivered_at_ms: int
) -> bytes:
    """
    The encoded ``offline-message`` around a stored message that is already
    encoded (``body``), without decoding it again; the same bytes as
    encoding the whole envelope as a dict.
    """
    head = encode({"type": "offline-message", "messageId": message_id})
    return b'%s,"originalMessage":%s,"storedAt":%d,"deliveredAt":%d}' % (
        head[:-1], body, stored_at_ms, delivered_at_ms,
    )


def validate_id(value: Any, field: str) -> str:
    """
    Check a peer, user or room id and return it in Unicode normalization
    form NFC, the one form the server compares, stores and sends: ``josé``
    typed with a precomposed ``é`` and with ``e`` plus a combining accent is
    one id. The length limit counts the normalized characters.

    :raises ProtocolError: ``INVALID_FIELD`` naming ``field`` when the id is
        missing, not a string, empty, too long or holds control characters
        (or a lone surrogate).
    """
    if not isinstance(value, str) or not value:
        raise ProtocolError(INVALID_FIELD, f"'{field}' must be a non-empty string")
    if not value.isascii():  # ASCII text is always in NFC
        value = unicodedata.normalize("NFC", value)
    if len(value) > MAX_ID_LENGTH:
        raise ProtocolError(
            INVALID_FIELD, f"'{field}' must be at most {MAX_ID_LENGTH} characters"
        )
    if not value.isprintable():
        raise ProtocolError(
            INVALID_FIELD, f"'{field}' must not contain control characters"
        )
    return value


def error_message(
    code: str,
    text: str,
    now_ms: int,
    request: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """
    Build the one error shape of the protocol.

    The offending request's ``messageId`` (or ``id``) and ``type`` are
    echoed back as ``messageId`` and ``requestType`` when known.
    """
    message: dict[str, Any] = {
        "type": "error",
        "code": code,
        "error": text,
        "timestamp": now_ms,
    }
    if request is not None:
        # Echoed only when short: an error must stay smaller than its request.
        message_id = client_message_id(request)
        if message_id is not None and len(message_id) <= MAX_MESSAGE_ID_LENGTH:
            message["messageId"] = message_id
        request_type = request.get("type")
        if isinstance(request_type, str) and len(request_type) <= MAX_ID_LENGTH:
            message["requestType"] = request_type
    message.update(extra)
    return message


def client_message_id(message: dict[str, Any]) -> str | None:
    """The client's own id for a message (``messageId``, else ``id``), if any."""
    for key in ("messageId", "id"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


# -- Unicode checks of decoded strings ----------------------------------------

#: The JSON escape of a UTF-16 surrogate (``\\uD800`` to ``\\uDFFF``, any case).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

#: Longest key name quoted in an error that names a field.
_NAME_LIMIT = 32


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: no lone surrogate, so UTF-8 can hold it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lone_surrogate_field(message: dict[str, Any]) -> str | None:
    """
    Where ``message`` holds a string that is not valid Unicode (see
    :func:`is_unicode`), as words for an error text: ``'messageId'``,
    ``'payload.items[2]'``, or ``the key 'payload.?'`` (a bad key, its
    surrogates shown as U+FFFD, see :func:`_key_name`); ``None`` when every
    string and key is valid.
    """
    # A trail is (parent trail, key or index): the path is spelled out only
    # for the string that fails.
    stack: list[tuple[Any, Any]] = [(message, None)]
    while stack:
        node, trail = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str) and not is_unicode(key):
                return f"the key '{_path((trail, key))}'"
            if isinstance(value, str):
                if not is_unicode(value):
                    return f"'{_path((trail, key))}'"
            elif isinstance(value, (dict, list)):
                stack.append((value, (trail, key)))
    return None


def _path(trail: Any) -> str:
    """``(((None, 'a'), 2), 'b')`` as ``a[2].b``, each key as :func:`_key_name` shows it."""
    parts = []
    while trail is not None:
        trail, key = trail
        parts.append(f"[{key}]" if isinstance(key, int) else _key_name(key))
    text = ""
    for part in reversed(parts):
        text += part if part.startswith("[") or not text else "." + part
    return text


def _key_name(key: str) -> str:
    """
    A key as an error text (and a log line) can quote it: long keys cut,
    surrogates and other characters that are not printable shown as U+FFFD.
    """
    if len(key) > _NAME_LIMIT:
        key = key[:_NAME_LIMIT] + "\u2026"
    if key.isprintable():
        return key
    return "".join(c if c.isprintable() else "\ufffd" for c in key)
