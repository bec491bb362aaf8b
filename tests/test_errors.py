"""Malformed input gets the error of PROTOCOL section 6 and never closes the connection."""

import json

from twisted.internet import defer

from helpers import ServerTestCase


class ErrorTests(ServerTestCase):
    config = {"max_message_size": 1024}

    @defer.inlineCallbacks
    def test_invalid_messages(self):
        self.clock.advance(7)
        client = yield self.connect()
        for payload in (b"not json", b"[1,2]", b'"text"', b'{"no":"type"}', b'{"type":5}',
                        b"{\"type\":\"ping\",\"x\":NaN}", b"[" * 500 + b"]" * 500):
            client.send(payload)
            error = yield client.expect_error("INVALID_MESSAGE")
            self.assertEqual(set(error), {"type", "code", "error", "timestamp"})
            self.assertEqual(error["timestamp"], 7000)
        # Still serving.
        yield self.roundtrip(client)

    @defer.inlineCallbacks
    def test_deep_nesting_and_huge_numbers(self):
        self.service.factory.setProtocolOptions(
            maxMessagePayloadSize=0, maxFramePayloadSize=0
        )
        self.service.factory.max_message_size = 0
        client = yield self.connect()
        client.send(b'{"type":"ping","x":' + b"[" * 100000 + b"]" * 100000 + b"}")
        yield client.expect_error("INVALID_MESSAGE")
        client.send(b'{"type":"ping","x":' + b"9" * 5000 + b"}")
        yield client.expect_error("INVALID_MESSAGE")
        client.send(b'{"type":"ping","x":1e400}')
        yield client.expect_error("INVALID_MESSAGE")
        client.send(b'{"type":"ping","x":1e300}')
        yield client.expect("pong")
        yield self.roundtrip(client)

    @defer.inlineCallbacks
    def test_binary_frames(self):
        client = yield self.connect()
        client.sendMessage(json.dumps({"type": "ping"}).encode(), isBinary=True)
        yield client.expect("pong")
        client.sendMessage(b"\xff\xfe{}", isBinary=True)
        yield client.expect_error("INVALID_MESSAGE")
        yield self.roundtrip(client)

    @defer.inlineCallbacks
    def test_unknown_type_without_target(self):
        client = yield self.register("p")
        client.send({"type": "dance", "messageId": "q1"})
        error = yield client.expect_error("UNKNOWN_MESSAGE_TYPE")
        self.assertEqual((error["messageId"], error["requestType"]), ("q1", "dance"))

    @defer.inlineCallbacks
    def test_a_message_refused_for_a_lone_surrogate_names_the_request(self):
        client = yield self.register("p")
        client.send('{"type":"offer","to":"q","messageId":"m7","payload":"a\\ud800"}')
        error = yield client.expect_error("INVALID_FIELD")
        self.assertEqual((error["messageId"], error["requestType"]), ("m7", "offer"))
        client.send('{"type":"chat","roomId":"r","id":"m8","x":{"\\udc00":1}}')
        error = yield client.expect_error("INVALID_FIELD")
        self.assertEqual((error["messageId"], error["requestType"]), ("m8", "chat"))
        # What is itself not Unicode text is not sent back.
        client.send('{"type":"message","to":"q","messageId":"\\ud800","id":"m9"}')
        error = yield client.expect_error("INVALID_FIELD")
        self.assertEqual((error.get("messageId"), error["requestType"]), (None, "message"))
        client.send('{"type":"\\ud800","messageId":"m10"}')
        error = yield client.expect_error("INVALID_FIELD")
        self.assertEqual((error["messageId"], error.get("requestType")), ("m10", None))
        yield self.roundtrip(client)

    @defer.inlineCallbacks
    def test_oversized_message_closes_with_1009(self):
        client = yield self.connect()
        client.send({"type": "ping", "pad": "x" * 2000})
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 1009)

    @defer.inlineCallbacks
    def test_message_at_the_limit_is_accepted(self):
        client = yield self.connect()
        message = {"type": "ping", "pad": ""}
        message["pad"] = "x" * (1024 - len(json.dumps(message)))
        client.send(message)
        yield client.expect("pong")
