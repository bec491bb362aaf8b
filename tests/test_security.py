"""
The security options end to end: real clients on 127.0.0.1 observe tokens,
origin checks, rate limits, connection caps, the handshake deadline, slow
consumer protection, field caps, privacy, TURN credentials and option
validation.
"""

from __future__ import annotations

import json

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python import usage
from twisted.trial import unittest
from twisted.web.client import Agent

from credentials import turn_password, write_public_key
from helpers import ConnectionRefused, ServerTestCase, connect, http_get, wait_for
from signaling.tap import Options

SECRET = "a-shared-secret-of-at-least-32-bytes!!"
OTHER_SECRET = "another-secret-of-at-least-32-bytes!!!"


# -- authentication -------------------------------------------------------------


class AuthMixin:
    """
    Token tests shared by the HS256 and ES256 servers. Subclasses define
    ``mint(claims)`` and ``forge(claims)`` (same claims, wrong key).
    """

    def claims(self, sub, **extra):
        now = int(self.clock.seconds())
        return {"sub": sub, "iat": now, "exp": now + 300, **extra}

    def token(self, sub, **extra):
        return self.mint(self.claims(sub, **extra))

    @defer.inlineCallbacks
    def test_token_in_query(self):
        client = yield self.connect(f"/?token={self.token('alice')}")
        client.send({"type": "register", "peerId": "alice"})
        registered = yield client.expect("registered")
        self.assertEqual(registered["peerId"], "alice")

    @defer.inlineCallbacks
    def test_query_token_binds_sub(self):
        client = yield self.connect(f"/?token={self.token('alice')}")
        client.send({"type": "register", "peerId": "bob"})
        yield client.expect_error("FORBIDDEN")
        self.assertNotIn("bob", self.registry.identities)
        client.send({"type": "join-room", "roomId": "r", "sender": "bob"})
        yield client.expect_error("FORBIDDEN")
        self.assertEqual(self.registry.rooms, {})

    @defer.inlineCallbacks
    def test_token_in_register(self):
        client = yield self.connect()
        client.send({"type": "register", "peerId": "alice", "token": self.token("alice")})
        yield client.expect("registered")
        self.assertIn("alice", self.registry.peers)

    @defer.inlineCallbacks
    def test_token_in_join_room(self):
        client = yield self.connect()
        client.send({"type": "join-room", "roomId": "r", "sender": "alice",
                     "token": self.token("alice")})
        joined = yield client.expect("join-success")
        self.assertEqual(joined["userId"], "alice")

    @defer.inlineCallbacks
    def test_sub_binds_register(self):
        client = yield self.connect()
        client.send({"type": "register", "peerId": "bob", "token": self.token("alice")})
        yield client.expect_error("FORBIDDEN")
        self.assertNotIn("bob", self.registry.identities)
        self.assertNotIn("alice", self.registry.identities)

    @defer.inlineCallbacks
    def test_expired_token(self):
        token = self.token("alice")
        self.clock.advance(300 + 31)  # past exp and the 30 s leeway
        client = yield self.connect()
        client.send({"type": "register", "peerId": "alice", "token": token})
        error = yield client.expect_error("UNAUTHORIZED")
        self.assertIn("expired", error["error"])
        self.assertNotIn("alice", self.registry.identities)

    @defer.inlineCallbacks
    def test_bad_signature(self):
        client = yield self.connect()
        client.send({"type": "register", "peerId": "alice",
                     "token": self.forge(self.claims("alice"))})
        yield client.expect_error("UNAUTHORIZED")
        self.assertNotIn("alice", self.registry.identities)

    @defer.inlineCallbacks
    def test_bad_query_token_closes_with_1008(self):
        client = yield self.connect(f"/?token={self.forge(self.claims('alice'))}")
        yield client.expect_error("UNAUTHORIZED")
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 1008)
        self.assertEqual(self.registry.identities, {})

    @defer.inlineCallbacks
    def test_rooms_claim(self):
        client = yield self.connect(f"/?token={self.token('alice', rooms=['lobby', 'team-*'])}")
        client.send({"type": "join-room", "roomId": "lobby", "sender": "alice"})
        yield client.expect("join-success")
        client.send({"type": "join-room", "roomId": "team-red", "sender": "alice"})
        yield client.expect("join-success")
        client.send({"type": "join-room", "roomId": "secret", "sender": "alice"})
        yield client.expect_error("FORBIDDEN")
        self.assertNotIn("secret", self.registry.rooms)
        self.assertEqual(set(self.registry.rooms), {"lobby", "team-red"})


class HS256Tests(AuthMixin, ServerTestCase):
    config = {"auth_secret": SECRET}

    def mint(self, claims):
        return jwt.encode(claims, SECRET, algorithm="HS256")

    def forge(self, claims):
        return jwt.encode(claims, OTHER_SECRET, algorithm="HS256")

    @defer.inlineCallbacks
    def test_spoofed_from_and_sender_overwritten(self):
        alice = yield self.connect(f"/?token={self.token('alice')}")
        bob = yield self.connect(f"/?token={self.token('bob')}")
        for client, name in ((alice, "alice"), (bob, "bob")):
            client.send({"type": "register", "peerId": name})
            yield client.expect("registered", skip=("peer-status",))
            client.send({"type": "join-room", "roomId": "r", "sender": name})
            yield client.expect("join-success", skip=("peer-status",))
        alice.send({"type": "offer", "to": "bob", "from": "mallory", "offer": {"sdp": "x"}})
        offer = yield bob.expect("offer", skip=("peer-status", "user-joined"))
        self.assertEqual(offer["from"], "alice")
        alice.send({"type": "chat", "roomId": "r", "sender": "mallory", "message": "hi"})
        chat = yield bob.expect("chat")
        self.assertEqual(chat["sender"], "alice")

    @defer.inlineCallbacks
    def test_tokenless_connection_cannot_take_over(self):
        holder = yield self.connect(f"/?token={self.token('alice')}")
        holder.send({"type": "register", "peerId": "alice"})
        yield holder.expect("registered")
        intruder = yield self.connect()
        intruder.send({"type": "register", "peerId": "alice"})
        yield intruder.expect_error("FORBIDDEN")
        intruder.send({"type": "join-room", "roomId": "r", "sender": "alice"})
        yield intruder.expect_error("FORBIDDEN")
        yield self.roundtrip(holder)
        self.assertFalse(holder.closed.called)
        self.assertEqual(self.registry.peers["alice"].address.rsplit(":", 1)[1],
                         str(holder.transport.getHost().port))

    @defer.inlineCallbacks
    def test_token_holder_takes_over(self):
        old = yield self.connect(f"/?token={self.token('alice')}")
        old.send({"type": "register", "peerId": "alice"})
        yield old.expect("registered")
        new = yield self.connect()
        new.send({"type": "register", "peerId": "alice", "token": self.token("alice")})
        yield new.expect("registered")
        code, reason = yield old.wait_closed()
        self.assertEqual((code, reason), (4001, "replaced"))
        self.assertEqual(self.registry.peers["alice"].address.rsplit(":", 1)[1],
                         str(new.transport.getHost().port))


class ES256Tests(AuthMixin, ServerTestCase):
    def setUp(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.other_key = ec.generate_private_key(ec.SECP256R1())
        self.config = {"auth_public_key": write_public_key(self.mktemp(), self.key)}
        return super().setUp()

    def mint(self, claims):
        return jwt.encode(claims, self.key, algorithm="ES256")

    def forge(self, claims):
        return jwt.encode(claims, self.other_key, algorithm="ES256")


class AuthRequiredTests(ServerTestCase):
    config = {"auth_secret": SECRET, "auth_required": True}

    @defer.inlineCallbacks
    def test_register_without_token_binds_nothing(self):
        now = int(self.clock.seconds())
        watcher = yield self.connect()
        watcher.send({"type": "register", "peerId": "watcher",
                      "token": jwt.encode({"sub": "watcher", "exp": now + 300}, SECRET,
                                          algorithm="HS256")})
        yield watcher.expect("registered")
        client = yield self.connect()
        client.send({"type": "register", "peerId": "alice"})
        yield client.expect_error("UNAUTHORIZED")
        client.send({"type": "join-room", "roomId": "r", "sender": "alice"})
        yield client.expect_error("UNAUTHORIZED")
        client.send({"type": "offer", "to": "watcher", "offer": {}})
        yield client.expect_error("REGISTRATION_REQUIRED")
        self.assertEqual(set(self.registry.identities), {"watcher"})
        self.assertEqual(self.registry.rooms, {})
        yield self.roundtrip(watcher)
        watcher.assert_quiet()  # no presence for alice


# -- origins -----------------------------------------------------------------------


class OriginPatternTests(ServerTestCase):
    config = {"allowed_origins": ("https://app.example.com", "https://*.example.org")}

    @defer.inlineCallbacks
    def test_allowed(self):
        for origin in ("https://app.example.com", "https://a.example.org",
                       "https://a.b.example.org", None):
            headers = {} if origin is None else {"Origin": origin}
            client = yield self.connect(headers=headers)
            yield self.roundtrip(client)

    @defer.inlineCallbacks
    def test_refused_with_403(self):
        for origin in ("https://evil.example.com", "https://example.org",
                       "http://a.example.org", "https://evil-example.org"):
            with self.assertRaises(ConnectionRefused) as refused:
                yield self.connect(headers={"Origin": origin})
            self.assertIn("403", str(refused.exception), origin)
        self.assertEqual(self.registry.sessions, set())
        self.assertEqual(self.service.factory.gate.open, 0)


    @defer.inlineCallbacks
    def test_null_origin_refused_with_403(self):
        """Sandboxed frames and file: pages send ``Origin: null``: not listed, so 403."""
        with self.assertRaises(ConnectionRefused) as refused:
            yield self.connect(headers={"Origin": "null"})
        self.assertIn("403", str(refused.exception))


class AnyOriginTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_every_origin_allowed_without_allow_list(self):
        """Without --allowed-origin every origin is accepted, ``null`` included."""
        for origin in ("https://anything.example", "null", "file://"):
            client = yield self.connect(headers={"Origin": origin})
            yield self.roundtrip(client)


# -- rate limits -----------------------------------------------------------------


class RateLimitTests(ServerTestCase):
    config = {"rate_limit": 5, "rate_burst": 3}

    @defer.inlineCallbacks
    def test_burst_then_limited_then_accepted_after_retry(self):
        client = yield self.connect()
        for _ in range(4):
            client.send({"type": "ping"})
        for _ in range(3):
            yield client.expect("pong")
        error = yield client.expect_error("RATE_LIMITED")
        self.assertGreater(error["retryAfterMs"], 0)
        self.clock.advance(error["retryAfterMs"] / 1000)
        client.send({"type": "ping"})
        yield client.expect("pong")
        self.assertFalse(client.closed.called)

    @defer.inlineCallbacks
    def test_ignoring_warnings_closes_with_1008(self):
        other = yield self.connect()
        abuser = yield self.connect()
        for _ in range(60):
            abuser.send({"type": "ping"})
        code, _ = yield abuser.wait_closed()
        self.assertEqual(code, 1008)
        kinds = []
        while abuser.inbox.pending:
            message = abuser.inbox.pending.pop(0)
            kinds.append(message.get("code", message["type"]))
        self.assertEqual(kinds[:3], ["pong"] * 3)
        self.assertEqual(set(kinds[3:]), {"RATE_LIMITED"})
        yield self.roundtrip(other)


# -- connection caps ----------------------------------------------------------------


class MaxConnectionsTests(ServerTestCase):
    config = {"max_connections": 3}

    @defer.inlineCallbacks
    def test_total_cap_and_release(self):
        clients = []
        for _ in range(3):
            clients.append((yield self.connect()))
        with self.assertRaises(ConnectionRefused) as refused:
            yield self.connect()
        self.assertIn("503", str(refused.exception))
        yield clients[0].drop()
        gate = self.service.factory.gate
        yield wait_for(lambda: gate.open == 2, "the closed connection to be released")
        client = yield self.connect()
        yield self.roundtrip(client)


class PerAddressFloodTests(ServerTestCase):
    config = {"max_connections_per_ip": 2}

    @defer.inlineCallbacks
    def test_flood_from_one_address(self):
        attempts = [connect(self.url) for _ in range(20)]
        results = yield defer.DeferredList(attempts, consumeErrors=True)
        opened = [value for ok, value in results if ok]
        self.clients.extend(opened)
        refused = [value.value for ok, value in results if not ok]
        self.assertEqual(len(opened), 2)
        self.assertEqual(len(refused), 18)
        for error in refused:
            self.assertIsInstance(error, ConnectionRefused)
            self.assertIn("503", str(error))
        for client in opened:
            yield self.roundtrip(client)
        # An HTTP request counts against the cap too, from accept on...
        response, body = yield self.http_get("/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"10"])
        # ...and /health from another address still counts open WebSockets only.
        response, body = yield http_get(self.http + "/health", agent=Agent(
            reactor, bindAddress=("127.0.0.2", 0)))
        self.assertEqual(json.loads(body)["connections"]["current"], 2)
        # The refused handshakes hold no slot: closing one admits a new one.
        yield opened[0].drop()
        gate = self.service.factory.gate
        yield wait_for(lambda: gate.open == 1, "the closed connection to be released")
        client = yield self.connect()
        yield self.roundtrip(client)


class TrustedProxyTests(ServerTestCase):
    config = {"max_connections_per_ip": 1, "trusted_proxies": ("127.0.0.1",)}

    @defer.inlineCallbacks
    def test_forwarded_for_counts_per_client(self):
        a = yield self.connect(headers={"X-Forwarded-For": "203.0.113.1"})
        b = yield self.connect(headers={"X-Forwarded-For": "203.0.113.2"})
        yield self.roundtrip(a)
        yield self.roundtrip(b)
        with self.assertRaises(ConnectionRefused) as refused:
            yield self.connect(headers={"X-Forwarded-For": "203.0.113.1"})
        self.assertIn("503", str(refused.exception))
        addresses = sorted(s.address.rsplit(":", 1)[0] for s in self.registry.sessions)
        self.assertEqual(addresses, ["203.0.113.1", "203.0.113.2"])


class UntrustedProxyTests(ServerTestCase):
    config = {"max_connections_per_ip": 1}

    @defer.inlineCallbacks
    def test_forwarded_for_ignored(self):
        a = yield self.connect(headers={"X-Forwarded-For": "203.0.113.1"})
        with self.assertRaises(ConnectionRefused) as refused:
            yield self.connect(headers={"X-Forwarded-For": "203.0.113.2"})
        self.assertIn("503", str(refused.exception))
        yield self.roundtrip(a)
        self.assertEqual([s.address.rsplit(":", 1)[0] for s in self.registry.sessions],
                         ["127.0.0.1"])


# -- handshake deadline --------------------------------------------------------------


class _Trickle(Protocol):
    """Sends the start of a request head, then nothing; records the disconnect."""

    def __init__(self) -> None:
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n")

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class HandshakeTimeoutTests(ServerTestCase):
    config = {"handshake_timeout": 1.0}

    @defer.inlineCallbacks
    def test_incomplete_request_head_is_cut(self):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        trickle = yield connectProtocol(endpoint, _Trickle())
        lost = trickle.lost

        def cleanup():
            if not lost.called:
                trickle.transport.abortConnection()
                return lost

        self.addCleanup(cleanup)
        yield wait_for(lambda: lost.called, "the server to cut the connection", timeout=5.0)
        client = yield self.connect()
        yield self.roundtrip(client)


# -- slow consumers ------------------------------------------------------------------


class SlowConsumerTests(ServerTestCase):
    config = {"max_send_buffer": 64 * 1024, "rate_limit": 0}

    @defer.inlineCallbacks
    def test_slow_consumer_closed_with_1013(self):
        slow = yield self.register("slow")
        sender = yield self.register("sender")
        healthy = yield self.register("healthy")
        slow_session = self.registry.peers["slow"]
        slow.transport.pauseProducing()
        payload = "x" * (16 * 1024)
        sent = 0
        while self.registry.identities.get("slow") is slow_session and sent < 2000:
            for _ in range(20):
                sender.send({"type": "message", "to": "slow", "payload": payload})
                sent += 1
            sender.send({"type": "message", "to": "healthy", "payload": sent})
            message = yield healthy.expect("message", skip=("peer-status",))
            self.assertEqual((message["from"], message["payload"]), ("sender", sent))
        yield wait_for(lambda: slow_session.conn.localCloseCode == 1013,
                       "the server to close the slow consumer")
        # A client that reads again promptly gets the close frame (docs/protocol.md).
        slow.transport.resumeProducing()
        yield slow.wait_closed()
        self.assertEqual(slow.close_code, 1013)
        yield wait_for(lambda: slow_session not in self.registry.sessions,
                       "the slow consumer's session to go")
        self.assertNotIn("slow", self.registry.peers)
        # Everyone else is still served.
        sender.send({"type": "message", "to": "healthy", "payload": "after"})
        message = yield healthy.expect("message", skip=("peer-status",))
        self.assertEqual(message["payload"], "after")


# -- field caps and privacy -----------------------------------------------------------


class FieldCapTests(ServerTestCase):
    config = {"max_device_info_bytes": 64}

    @defer.inlineCallbacks
    def test_device_info_cap(self):
        client = yield self.connect()
        client.send({"type": "register", "peerId": "a", "deviceInfo": {"model": "m" * 100}})
        error = yield client.expect_error("INVALID_FIELD")
        self.assertIn("deviceInfo", error["error"])
        self.assertNotIn("a", self.registry.identities)
        client.send({"type": "register", "peerId": "a", "deviceInfo": {"model": "m" * 10}})
        yield client.expect("registered")

    @defer.inlineCallbacks
    def test_device_type_cap(self):
        client = yield self.connect()
        client.send({"type": "register", "peerId": "a", "deviceType": "t" * 65})
        error = yield client.expect_error("INVALID_FIELD")
        self.assertIn("deviceType", error["error"])
        self.assertNotIn("a", self.registry.identities)
        client.send({"type": "register", "peerId": "a", "deviceType": "t" * 64})
        yield client.expect("registered")

    @defer.inlineCallbacks
    def test_id_length_cap(self):
        client = yield self.connect()
        client.send({"type": "register", "peerId": "p" * 129})
        error = yield client.expect_error("INVALID_FIELD")
        self.assertIn("peerId", error["error"])
        client.send({"type": "join-room", "roomId": "r" * 129, "sender": "u"})
        error = yield client.expect_error("INVALID_FIELD")
        self.assertIn("roomId", error["error"])
        self.assertEqual(self.registry.identities, {})
        client.send({"type": "register", "peerId": "p" * 128})
        yield client.expect("registered")


class HideDeviceInfoTests(ServerTestCase):
    config = {"hide_device_info": True}

    @defer.inlineCallbacks
    def test_presence_and_peer_list_without_device_fields(self):
        watcher = yield self.register("watcher", deviceType="desktop", deviceInfo={"os": "x"})
        phone = yield self.register("phone", deviceType="mobile", deviceInfo={"model": "y"})
        online = yield watcher.expect("peer-status")
        self.assertEqual((online["peerId"], online["status"]), ("phone", "online"))
        phone.send({"type": "get-peers"})
        peers = yield phone.expect("peers-list")
        self.assertEqual([p["peerId"] for p in peers["peers"]], ["watcher"])
        yield phone.drop()
        offline = yield watcher.expect("peer-status")
        self.assertEqual(offline["status"], "offline")
        for message in (online, offline, *peers["peers"]):
            self.assertNotIn("deviceType", message)
            self.assertNotIn("deviceInfo", message)


# -- /ice-servers ----------------------------------------------------------------------


TURN_SECRET = "s3cret"
ICE_CONFIG = {
    "stun_urls": ("stun:stun.example.org:3478",),
    "turn_urls": ("turn:turn.example.org:3478",),
    "turn_secret": TURN_SECRET,
}


class IceServersTests(ServerTestCase):
    config = ICE_CONFIG

    @defer.inlineCallbacks
    def test_credentials_without_auth(self):
        self.clock.advance(1_700_000_000)
        response, body = yield self.http_get("/ice-servers")
        self.assertEqual(response.code, 200)
        document = json.loads(body)
        stun, turn = document["iceServers"]
        self.assertEqual(stun["urls"], ["stun:stun.example.org:3478"])
        self.assertEqual(turn["urls"], ["turn:turn.example.org:3478"])
        self.assertEqual(turn["username"], str(1_700_000_000 + 86400))
        self.assertEqual(turn["credential"], turn_password(TURN_SECRET, turn["username"]))


class IceServersAuthTests(ServerTestCase):
    config = {**ICE_CONFIG, "auth_secret": SECRET}

    @defer.inlineCallbacks
    def test_token_required_and_names_credentials(self):
        self.clock.advance(1_700_000_000)
        response, body = yield self.http_get("/ice-servers")
        self.assertEqual(response.code, 401)
        self.assertNotIn(b"credential", body)
        token = jwt.encode({"sub": "alice", "exp": 1_700_000_300}, SECRET, algorithm="HS256")
        response, body = yield self.http_get(
            "/ice-servers", headers={b"authorization": [b"Bearer " + token.encode()]})
        self.assertEqual(response.code, 200)
        turn = json.loads(body)["iceServers"][1]
        self.assertEqual(turn["username"], f"{1_700_000_000 + 86400}:alice")
        self.assertEqual(turn["credential"], turn_password(TURN_SECRET, turn["username"]))
        forged = jwt.encode({"sub": "alice"}, OTHER_SECRET, algorithm="HS256")
        response, _ = yield self.http_get(
            "/ice-servers", headers={b"authorization": [b"Bearer " + forged.encode()]})
        self.assertEqual(response.code, 401)


# -- option validation -----------------------------------------------------------------


class SecurityOptionTests(unittest.SynchronousTestCase):
    def parse(self, *argv):
        options = Options(environ={})
        options.parseOptions(["--db", ":memory:", *argv])
        return options.config

    def assertUsageError(self, option, *argv):
        with self.assertRaises(usage.UsageError) as raised:
            self.parse(*argv)
        self.assertIn(option, str(raised.exception))

    def test_valid_security_options(self):
        config = self.parse("--auth-secret", SECRET, "--auth-required",
                            "--allowed-origin", "https://*.example.org",
                            "--trusted-proxy", "10.0.0.0/8", "--rate-limit", "5")
        self.assertTrue(config.auth_required)
        self.assertEqual(config.allowed_origins, ("https://*.example.org",))

    def test_short_auth_secret(self):
        self.assertUsageError("--auth-secret", "--auth-secret", "too-short")

    def test_secret_and_public_key(self):
        path = write_public_key(self.mktemp(), ec.generate_private_key(ec.SECP256R1()))
        self.assertUsageError("--auth-public-key", "--auth-secret", SECRET,
                              "--auth-public-key", path)

    def test_auth_required_without_key(self):
        self.assertUsageError("--auth-required", "--auth-required")

    def test_bad_allowed_origin(self):
        # Any scheme is a valid origin (browser extensions use their own), but
        # an origin never has a path.
        self.assertUsageError("--allowed-origin", "--allowed-origin", "https://app.example.com/path")

    def test_bad_trusted_proxy(self):
        self.assertUsageError("--trusted-proxy", "--trusted-proxy", "example.com")

    def test_turn_url_without_secret(self):
        self.assertUsageError("--turn-secret", "--turn-url", "turn:turn.example.org:3478")

    def test_negative_rate_limit(self):
        self.assertUsageError("--rate-limit", "--rate-limit", "-1")
