"""
Property tests for the wire codec: hostile input never escapes as anything
but ``ProtocolError(INVALID_MESSAGE)``, or ``INVALID_FIELD`` for a string
that is not valid Unicode (a lone surrogate); what decodes encodes back, and
every string it holds can be written as UTF-8.
"""

from __future__ import annotations

import json
import sys
import unicodedata

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from signaling.messages import (
    INVALID_FIELD,
    INVALID_MESSAGE,
    MAX_DEPTH,
    MAX_ID_LENGTH,
    ProtocolError,
    decode,
    encode,
    offline_delivery,
    validate_id,
)

settings.register_profile(
    "signaling-fuzz",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ = settings.get_profile("signaling-fuzz")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
#: Text that may hold lone surrogates (``st.text()`` never does).
surrogate_text = st.text(
    st.characters() | st.characters(categories=["Cs"]) | st.sampled_from("\ud83d\ude00"),
    max_size=8,
)
surrogate_values = st.recursive(
    st.none() | st.integers() | surrogate_text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(surrogate_text, children, max_size=4),
    max_leaves=20,
)
messages = st.builds(
    lambda type_, rest: {**rest, "type": type_},
    st.text(),
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
)

HOSTILE = [
    "1e400",
    "-1e400",
    "1E+999",
    "NaN",
    "Infinity",
    "-Infinity",
    "9" * 5000,
    "-" + "9" * 5000,
    "[" * 100000,
    "{" * 100000,
    '{"a":' * 5000,
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\u0000"',
    '"\\x41"',
    "\ud800",
    "\x00",
    "\ufeff",
    "tru",
    "]",
    "}",
    ",",
    '"',
    "'",
    "//",
]
HOSTILE_BYTES = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]


def holds_lone_surrogate(value) -> bool:
    """The oracle: a value holds a lone surrogate when UTF-8 cannot encode it."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def wire_form(payload):
    """
    ``payload`` as a WebSocket layer hands it to ``decode``: bytes stay
    bytes, text that UTF-8 can carry stays text, and text it cannot (a raw
    surrogate, which no frame can hold) arrives as the bytes a client would
    have to send for it.
    """
    if isinstance(payload, str) and holds_lone_surrogate(payload):
        return payload.encode("utf-8", "surrogatepass")
    return payload


def strict_loads(data: bytes):
    """Parse JSON the way a strict peer would: valid UTF-8, no NaN/Infinity."""

    def no_constant(name):
        raise AssertionError(f"encoder produced {name}")

    return json.loads(data.decode("utf-8"), parse_constant=no_constant)


class DecodeContractMixin:
    def assertDecodeContract(self, payload):
        """
        ``decode`` returns a message whose every string is valid Unicode, or
        raises INVALID_MESSAGE, or INVALID_FIELD exactly when the JSON holds
        a lone surrogate; nothing else.
        """
        payload = wire_form(payload)
        try:
            message = decode(payload)
        except ProtocolError as e:
            self.assertIsInstance(e.text, str)
            if e.code == INVALID_FIELD:
                self.assertIn("must be valid Unicode text", e.text)
                self.assertTrue(holds_lone_surrogate(json.loads(payload)), payload)
            else:
                self.assertEqual(e.code, INVALID_MESSAGE)
            return None
        self.assertIsInstance(message, dict)
        self.assertIsInstance(message["type"], str)
        self.assertFalse(holds_lone_surrogate(message))
        self.assertRoundTrip(message)
        return message

    def assertRoundTrip(self, message):
        wire = encode(message)
        self.assertIsInstance(wire, bytes)
        self.assertEqual(strict_loads(wire), message)
        self.assertEqual(decode(wire), message)
        self.assertEqual(encode(decode(wire)), wire)


class DecodePropertyTests(DecodeContractMixin, SynchronousTestCase):
    """Properties of ``decode`` over generated input."""

    @FUZZ
    @given(json_values)
    def test_any_json_value(self, value):
        message = self.assertDecodeContract(json.dumps(value))
        is_message = isinstance(value, dict) and isinstance(value.get("type"), str)
        self.assertEqual(message is not None, is_message)
        if is_message:
            self.assertEqual(message, value)

    @FUZZ
    @given(messages)
    def test_messages_round_trip(self, message):
        self.assertEqual(self.assertDecodeContract(encode(message)), message)
        self.assertEqual(self.assertDecodeContract(json.dumps(message).encode()), message)

    @FUZZ
    @given(st.binary(max_size=200))
    def test_any_bytes(self, payload):
        self.assertDecodeContract(payload)

    @FUZZ
    @given(st.text(max_size=200))
    def test_any_text(self, payload):
        self.assertDecodeContract(payload)

    @FUZZ
    @given(messages, st.sampled_from(HOSTILE), st.integers(min_value=0), st.booleans())
    def test_hostile_fragments(self, message, fragment, position, replace):
        """Hostile fragments spliced into a valid message anywhere."""
        text = json.dumps(message)
        at = position % (len(text) + 1)
        end = min(len(text), at + len(fragment)) if replace else at
        self.assertDecodeContract(text[:at] + fragment + text[end:])

    @FUZZ
    @given(messages, st.sampled_from(HOSTILE_BYTES), st.integers(min_value=0))
    def test_invalid_utf8(self, message, fragment, position):
        data = encode(message)
        at = position % (len(data) + 1)
        spliced = data[:at] + fragment + data[at:]
        try:
            spliced.decode("utf-8")
        except UnicodeDecodeError:
            with self.assertRaises(ProtocolError) as caught:
                decode(spliced)
            self.assertEqual(caught.exception.code, INVALID_MESSAGE)
        else:
            self.fail(f"{spliced!r} should not be UTF-8")

    @FUZZ
    @given(st.dictionaries(surrogate_text, surrogate_values, max_size=4), surrogate_text,
           st.booleans())
    def test_lone_surrogates_anywhere(self, rest, type_, as_bytes):
        """Refused with INVALID_FIELD naming where, wherever one hides; the rest is accepted."""
        message = {**rest, "type": type_}
        payload = json.dumps(message)  # lone surrogates become \\uXXXX escapes
        # What the text means: a high surrogate escape followed by a low one
        # is one character (a pair), whatever two code points made it.
        meaning = json.loads(payload)
        if as_bytes:
            payload = payload.encode()
        if not holds_lone_surrogate(meaning):
            self.assertEqual(self.assertDecodeContract(payload), meaning)
            return
        with self.assertRaises(ProtocolError) as caught:
            decode(payload)
        self.assertEqual(caught.exception.code, INVALID_FIELD)
        self.assertTrue(caught.exception.text.startswith(("'", "the key '")), caught.exception.text)
        # The error text itself is valid Unicode, so it can be sent.
        self.assertFalse(holds_lone_surrogate(caught.exception.text))

    @FUZZ
    @given(json_values, st.sampled_from(["x", "type"]))
    def test_wrong_type_field(self, value, key):
        payload = json.dumps({key: value} if key == "type" else {"type": value})
        message = self.assertDecodeContract(payload)
        self.assertEqual(message is not None, isinstance(value, str))


class DecodeExampleTests(DecodeContractMixin, SynchronousTestCase):
    """Named hostile inputs."""

    def assertInvalid(self, payload):
        with self.assertRaises(ProtocolError) as caught:
            decode(payload)
        self.assertEqual(caught.exception.code, INVALID_MESSAGE)

    def test_huge_floats(self):
        for number in ("1e400", "-1e400", "1E+999", "123456789e999999"):
            self.assertInvalid('{"type":"t","x":%s}' % number)

    def test_large_but_finite_float(self):
        self.assertEqual(decode('{"type":"t","x":1e308}')["x"], 1e308)
        self.assertRoundTrip(decode('{"type":"t","x":-1.7976931348623157e308}'))

    def test_huge_integers(self):
        huge = "9" * 5000
        for payload in ('{"type":"t","x":%s}' % huge, huge, "-" + huge):
            self.assertDecodeContract(payload)

    def test_integers_beyond_the_float_range_are_out_of_range(self):
        # A JavaScript peer would read them as Infinity; Python's own limit
        # on long integer text must not show through either.
        for number in ("1" + "0" * 309, "-" + "9" * 400, "9" * 5000):
            with self.assertRaises(ProtocolError) as caught:
                decode('{"type":"t","x":%s}' % number)
            self.assertEqual(caught.exception.code, INVALID_MESSAGE)
            self.assertIn("out of range", caught.exception.text)
            self.assertNotIn("sys.", caught.exception.text)
        largest = int(sys.float_info.max)
        self.assertEqual(decode('{"type":"t","x":%d}' % largest)["x"], largest)
        self.assertEqual(decode('{"type":"t","x":%d}' % 2**64)["x"], 2**64)
        self.assertRoundTrip(decode('{"type":"t","x":%s}' % ("9" * 300)))

    def test_nan_and_infinity_literals(self):
        for literal in ("NaN", "Infinity", "-Infinity"):
            self.assertInvalid('{"type":"t","x":%s}' % literal)
            self.assertInvalid(literal)

    def test_deep_nesting(self):
        for payload in ("[" * 100000, "{" * 100000, '{"a":' * 100000,
                        '{"type":"t","x":' + "[" * 100000 + "]" * 100000 + "}"):
            self.assertInvalid(payload)
            self.assertInvalid(payload.encode())

    def test_depth_limit(self):
        inside = MAX_DEPTH - 1
        ok = '{"type":"t","x":' + "[" * inside + "]" * inside + "}"
        self.assertRoundTrip(decode(ok))
        self.assertInvalid('{"type":"t","x":' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}")

    def test_brackets_in_strings_are_not_nesting(self):
        message = decode(json.dumps({"type": "t", "sdp": "[{" * 1000}))
        self.assertEqual(message["sdp"], "[{" * 1000)

    def test_deepest_message_encodes_on_a_deep_stack(self):
        """Re-encoding an accepted message never hits the recursion limit."""
        inside = MAX_DEPTH - 1
        message = decode('{"type":"t","x":' + "[" * inside + "]" * inside + "}")
        headroom = sys.getrecursionlimit() - 3 * MAX_DEPTH

        def nested(n):
            return nested(n - 1) if n else encode(message)

        self.assertEqual(decode(nested(headroom)), message)

    def assertField(self, payload, text):
        with self.assertRaises(ProtocolError) as caught:
            decode(payload)
        self.assertEqual((caught.exception.code, caught.exception.text),
                         (INVALID_FIELD, text + " must be valid Unicode text (it holds a lone surrogate)"))

    def test_the_store_poisoning_message(self):
        """The message of issue 11, item 1: refused, naming the field."""
        for payload in ('{"type":"message","to":"victim","messageId":"\\ud800"}',
                        b'{"type":"message","to":"victim","messageId":"\\ud800"}'):
            self.assertField(payload, "'messageId'")

    def test_lone_surrogates_are_refused_with_their_place(self):
        # (escape, the same text as a key is shown in the error)
        for escape, shown in (("\\ud800", "\ufffd"), ("\\udfff", "\ufffd"),
                              ("\\udfff\\ud800", "\ufffd\ufffd"), ("\\ud83d", "\ufffd"),
                              ("\\uDBFF", "\ufffd"), ("x\\uDC00y", "x\ufffdy"),
                              ("\\ud83d\\u0041", "\ufffdA")):
            self.assertField('{"type":"%s"}' % escape, "'type'")
            self.assertField('{"type":"t","x":"%s"}' % escape, "'x'")
            self.assertField('{"type":"t","p":{"a":[1,"ok",{"b":"%s"}]}}' % escape, "'p.a[2].b'")
            self.assertField('{"type":"t","p":{"%s":1}}' % escape, f"the key 'p.{shown}'")

    def test_long_keys_are_cut_in_the_error(self):
        self.assertField('{"type":"t","%s":"\\ud800"}' % ("k" * 1000), "'%s\u2026'" % ("k" * 32))

    def test_keys_are_printable_in_the_error(self):
        self.assertField('{"type":"t","p":{"a\\nb\\u0000\\u2028":"\\ud800"}}', "'p.a\ufffdb\ufffd\ufffd'")

    def test_surrogate_pairs_are_one_character(self):
        for text in ('{"type":"t","x":"\\ud83d\\ude00"}', '{"type":"t","x":"\\uD83D\\uDE00"}',
                     '{"type":"t","x":"\U0001f600"}', b'{"type":"t","x":"\xf0\x9f\x98\x80"}'):
            self.assertEqual(decode(text)["x"], "\U0001f600")

    def test_escaped_backslashes_are_not_escapes(self):
        """``\\\\ud800`` is a backslash and five letters, not a surrogate."""
        self.assertEqual(decode('{"type":"t","x":"\\\\ud800"}')["x"], "\\ud800")

    def test_utf8_encoded_lone_surrogates_are_not_utf8(self):
        """The only other way to spell one: invalid UTF-8, refused as a whole."""
        self.assertInvalid('{"type":"t","x":"\ud800"}'.encode("utf-8", "surrogatepass"))

    def test_every_other_code_point_is_accepted(self):
        for text in ("a\x00b", "\x7f", "\ufeff", "\uffff", "\U0010ffff", "\u2028", "\ue000"):
            for payload in (json.dumps({"type": "t", "messageId": text}),
                            json.dumps({"type": "t", "messageId": text}, ensure_ascii=False)):
                self.assertEqual(decode(payload)["messageId"], text)

    def test_utf8_encoded_surrogate_bytes(self):
        self.assertInvalid(b'{"type":"\xed\xa0\x80"}')

    def test_invalid_utf8(self):
        for data in (b"\xff", b'{"type":"\xff"}', b'{"type":"t"}\x80', b"\xc0\x80"):
            self.assertInvalid(data)

    def test_non_ascii_is_written_as_utf8(self):
        wire = encode(decode('{"type":"t","x":"zo\\u00eb 🎉"}'))
        self.assertEqual(wire, '{"type":"t","x":"zoë 🎉"}'.encode("utf-8"))
        cjk = "漢" * 15000
        self.assertEqual(len(encode({"type": "t", "x": cjk})), 45000 + len(b'{"type":"t","x":""}'))

    def test_memoryview_and_bytearray(self):
        self.assertEqual(decode(memoryview(b'{"type":"t"}')), {"type": "t"})
        self.assertEqual(decode(bytearray(b'{"type":"t"}')), {"type": "t"})

    def test_not_objects(self):
        for payload in ("", " ", "null", "1", '"t"', "[]", '[{"type":"t"}]', "{}",
                        '{"type":null}', '{"type":1}', '{"type":"t"} {}', "\ufeff{}"):
            self.assertInvalid(payload)


class ValidateIdTests(SynchronousTestCase):
    """``validate_id`` accepts exactly the ids of PROTOCOL section 2."""

    @FUZZ
    @given(st.one_of(json_values, st.text(min_size=1, max_size=200), surrogate_text))
    @example("")
    @example("a" * MAX_ID_LENGTH)
    @example("a" * (MAX_ID_LENGTH + 1))
    @example("a\x00")
    @example("a\u2028")
    @example("\ud800")
    @example("jose\u0301")
    @example("e\u0301" * MAX_ID_LENGTH)
    def test_contract(self, value):
        try:
            result = validate_id(value, "peerId")
        except ProtocolError as e:
            self.assertEqual(e.code, INVALID_FIELD)
            self.assertIn("'peerId'", e.text)
            self.assertFalse(
                isinstance(value, str)
                and 0 < len(unicodedata.normalize("NFC", value)) <= MAX_ID_LENGTH
                and value.isprintable()
            )
            return
        self.assertIsInstance(result, str)
        self.assertEqual(result, unicodedata.normalize("NFC", value))
        if result == value:
            self.assertIs(result, value)
        self.assertTrue(0 < len(result) <= MAX_ID_LENGTH)
        self.assertTrue(result.isprintable())
        self.assertFalse(holds_lone_surrogate(result))
        self.assertEqual(validate_id(result, "peerId"), result)

    def test_nfc(self):
        """Both spellings of josé are one id, the precomposed one."""
        self.assertEqual(validate_id("jose\u0301", "peerId"), "jos\u00e9")
        self.assertEqual(validate_id("jos\u00e9", "peerId"), "jos\u00e9")
        # Hangul syllables compose too; compatibility forms (NFKC) are left alone.
        self.assertEqual(validate_id("\u1100\u1161", "peerId"), "\uac00")
        self.assertEqual(validate_id("\ufb01", "peerId"), "\ufb01")

    def test_length_counts_the_normalized_id(self):
        decomposed = "e\u0301" * MAX_ID_LENGTH  # twice the limit before NFC
        self.assertEqual(validate_id(decomposed, "peerId"), "\u00e9" * MAX_ID_LENGTH)
        with self.assertRaises(ProtocolError):
            validate_id("e\u0301" * (MAX_ID_LENGTH + 1), "peerId")


class OfflineDeliveryTests(SynchronousTestCase):
    """The spliced offline-message envelope equals encoding it as a whole."""

    @given(st.text(min_size=1, max_size=20),
           st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=4),
           st.integers(0, 2**50), st.integers(0, 2**50))
    def test_same_bytes_as_encoding_the_envelope(self, message_id, original, stored, delivered):
        original = dict(original, type="offer")
        expected = encode({
            "type": "offline-message", "messageId": message_id, "originalMessage": original,
            "storedAt": stored, "deliveredAt": delivered,
        })
        self.assertEqual(offline_delivery(message_id, encode(original), stored, delivered), expected)
