"""Tests for signaling.auth: JWT verification and the grants it yields."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import tempfile

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.trial.unittest import SynchronousTestCase

from certs import pem_private_key
from credentials import public_pem
from signaling.auth import Grant, TokenVerifier, token_from_query
from signaling.messages import UNAUTHORIZED, ProtocolError

SECRET = "s" * 64
NOW = 1_700_000_000.0

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_token(claims: dict, key: bytes) -> str:
    """An HS256 token built by hand, so any key (even a PEM) can sign it."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


class VerifierMixin:
    def assertRefused(self, verifier, token, fragment, now=NOW):
        with self.assertRaises(ProtocolError) as caught:
            verifier.verify(token, now)
        self.assertEqual(caught.exception.code, UNAUTHORIZED)
        self.assertIn(fragment, caught.exception.text)
        return caught.exception


class SecretTests(VerifierMixin, SynchronousTestCase):
    """HS256 with a shared secret."""

    def setUp(self):
        self.verifier = TokenVerifier.from_secret(SECRET)

    def token(self, **claims):
        return jwt.encode(claims, SECRET, algorithm="HS256")

    def test_valid(self):
        grant = self.verifier.verify(self.token(sub="alice", exp=NOW + 60), NOW)
        self.assertEqual(grant, Grant("alice", None, NOW + 60))

    def test_no_exp_never_expires(self):
        grant = self.verifier.verify(self.token(sub="alice"), NOW + 10**9)
        self.assertIsNone(grant.expires_at)

    def test_time_is_injected(self):
        """Validity follows ``now``, not the machine's clock."""
        token = self.token(sub="alice", exp=1000, nbf=500)
        self.assertEqual(self.verifier.verify(token, 800).subject, "alice")
        self.assertRefused(self.verifier, token, "expired", now=1000 + 31)
        self.assertRefused(self.verifier, token, "not yet valid", now=500 - 31)

    def test_expiry_leeway(self):
        token = self.token(sub="alice", exp=NOW)
        self.assertEqual(self.verifier.verify(token, NOW + 30).subject, "alice")
        self.assertRefused(self.verifier, token, "token expired", now=NOW + 30.5)

    def test_not_before_leeway(self):
        token = self.token(sub="alice", nbf=NOW)
        self.assertEqual(self.verifier.verify(token, NOW - 30).subject, "alice")
        self.assertRefused(self.verifier, token, "not yet valid", now=NOW - 30.5)

    def test_custom_leeway(self):
        verifier = TokenVerifier.from_secret(SECRET, leeway=0)
        self.assertRefused(verifier, self.token(sub="a", exp=NOW), "expired", now=NOW + 0.1)

    def test_future_iat_is_not_checked_against_the_machine_clock(self):
        grant = self.verifier.verify(self.token(sub="alice", iat=NOW + 10**8), NOW)
        self.assertEqual(grant.subject, "alice")

    def test_wrong_secret(self):
        token = jwt.encode({"sub": "alice"}, "x" * 40, algorithm="HS256")
        self.assertRefused(self.verifier, token, "bad token signature")

    def test_tampered_payload(self):
        token = self.token(sub="alice")
        header, _, signature = token.split(".")
        forged = b64url(json.dumps({"sub": "mallory"}).encode())
        self.assertRefused(self.verifier, f"{header}.{forged}.{signature}", "signature")

    def test_alg_none_refused(self):
        token = jwt.encode({"sub": "alice"}, None, algorithm="none")
        self.assertRefused(self.verifier, token, "algorithm not allowed")

    def test_other_hmac_algorithm_refused(self):
        token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS512")
        self.assertRefused(self.verifier, token, "algorithm not allowed")

    def test_missing_sub(self):
        self.assertRefused(self.verifier, self.token(exp=NOW + 60), "no 'sub'")

    def test_invalid_sub(self):
        for sub in ("", "a\nb", "x" * 129, 42, ["alice"]):
            error = self.assertRefused(self.verifier, self.token(sub=sub), "'sub'")
            self.assertEqual(error.code, UNAUTHORIZED)

    def test_malformed(self):
        for token in ("", "abc", "a.b.c", "a.b", "\x00", "é.é.é"):
            self.assertRefused(self.verifier, token, "malformed")

    def test_not_a_string(self):
        self.assertRefused(self.verifier, None, "malformed")
        self.assertRefused(self.verifier, b"abc", "malformed")

    def test_too_long(self):
        token = self.token(sub="alice", pad="p" * 10000)
        self.assertRefused(self.verifier, token, "too long")

    def test_non_numeric_exp(self):
        self.assertRefused(self.verifier, self.token(sub="a", exp="soon"), "'exp'")
        self.assertRefused(self.verifier, self.token(sub="a", nbf=True), "'nbf'")

    def test_short_secret_refused(self):
        with self.assertRaises(ValueError) as caught:
            TokenVerifier.from_secret("secret")
        self.assertIn("32 bytes", str(caught.exception))

    def test_pem_as_secret_refused(self):
        self.assertRaises(ValueError, TokenVerifier.from_secret, public_pem(RSA_KEY))

    def test_audience(self):
        verifier = TokenVerifier.from_secret(SECRET, audience="signaling")
        self.assertEqual(
            verifier.verify(self.token(sub="a", aud="signaling"), NOW).subject, "a"
        )
        self.assertRefused(verifier, self.token(sub="a", aud="other"), "audience")
        self.assertRefused(verifier, self.token(sub="a"), "invalid token")

    def test_audience_ignored_when_not_configured(self):
        self.assertEqual(self.verifier.verify(self.token(sub="a", aud="x"), NOW).subject, "a")


class RoomsClaimTests(VerifierMixin, SynchronousTestCase):
    """The optional ``rooms`` claim."""

    def setUp(self):
        self.verifier = TokenVerifier.from_secret(SECRET)

    def grant(self, rooms):
        token = jwt.encode({"sub": "alice", "rooms": rooms}, SECRET, algorithm="HS256")
        return self.verifier.verify(token, NOW)

    def test_exact_and_prefix(self):
        grant = self.grant(["lobby", "team-*"])
        self.assertEqual(grant.rooms, frozenset({"lobby", "team-*"}))
        self.assertTrue(grant.allows_room("lobby"))
        self.assertTrue(grant.allows_room("team-"))
        self.assertTrue(grant.allows_room("team-red"))
        self.assertFalse(grant.allows_room("lobby2"))
        self.assertFalse(grant.allows_room("team"))

    def test_star_allows_all(self):
        self.assertTrue(self.grant(["*"]).allows_room("anything"))

    def test_empty_list_allows_none(self):
        self.assertFalse(self.grant([]).allows_room("lobby"))

    def test_no_claim_allows_all(self):
        self.assertTrue(Grant("alice").allows_room("anything"))

    def test_literal_star_is_not_a_wildcard_inside(self):
        grant = self.grant(["a*b"])
        self.assertFalse(grant.allows_room("axxb"))
        self.assertFalse(grant.allows_room("a"))

    def test_malformed_claim(self):
        for rooms in ("lobby", {"lobby": 1}, [1], [""], ["a\x01"], ["x" * 200]):
            token = jwt.encode({"sub": "a", "rooms": rooms}, SECRET, algorithm="HS256")
            self.assertRefused(self.verifier, token, "'rooms'")


class PublicKeyTests(VerifierMixin, SynchronousTestCase):
    """RS256 and ES256 with a PEM public key file."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="signaling-auth-")
        self.addCleanup(shutil.rmtree, self.directory)

    def key_file(self, data: bytes) -> str:
        path = os.path.join(self.directory, f"key-{len(os.listdir(self.directory))}.pem")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def verifier_for(self, private_key) -> TokenVerifier:
        return TokenVerifier.from_public_key_file(self.key_file(public_pem(private_key)))

    def test_rs256(self):
        verifier = self.verifier_for(RSA_KEY)
        self.assertEqual(verifier.algorithm, "RS256")
        token = jwt.encode({"sub": "bob", "exp": NOW + 5}, RSA_KEY, algorithm="RS256")
        self.assertEqual(verifier.verify(token, NOW), Grant("bob", None, NOW + 5))

    def test_es256(self):
        verifier = self.verifier_for(EC_KEY)
        self.assertEqual(verifier.algorithm, "ES256")
        token = jwt.encode({"sub": "bob", "rooms": ["r"]}, EC_KEY, algorithm="ES256")
        self.assertEqual(verifier.verify(token, NOW), Grant("bob", frozenset({"r"})))

    def test_other_key_refused(self):
        verifier = self.verifier_for(EC_KEY)
        other = ec.generate_private_key(ec.SECP256R1())
        token = jwt.encode({"sub": "bob"}, other, algorithm="ES256")
        self.assertRefused(verifier, token, "bad token signature")

    def test_mismatched_algorithm_refused(self):
        rs_verifier = self.verifier_for(RSA_KEY)
        es_token = jwt.encode({"sub": "bob"}, EC_KEY, algorithm="ES256")
        self.assertRefused(rs_verifier, es_token, "expected RS256")
        es_verifier = self.verifier_for(EC_KEY)
        rs_token = jwt.encode({"sub": "bob"}, RSA_KEY, algorithm="RS256")
        self.assertRefused(es_verifier, rs_token, "expected ES256")
        ps_token = jwt.encode({"sub": "bob"}, RSA_KEY, algorithm="PS256")
        self.assertRefused(rs_verifier, ps_token, "algorithm not allowed")

    def test_public_key_as_hmac_secret_refused(self):
        """The classic algorithm-confusion forgery never verifies."""
        for private_key in (RSA_KEY, EC_KEY):
            pem = public_pem(private_key)
            verifier = TokenVerifier.from_public_key_pem(pem)
            forged = hs256_token({"sub": "mallory"}, pem)
            self.assertRefused(verifier, forged, "algorithm not allowed")

    def test_alg_none_refused(self):
        verifier = self.verifier_for(RSA_KEY)
        token = jwt.encode({"sub": "bob"}, None, algorithm="none")
        self.assertRefused(verifier, token, "algorithm not allowed")

    def test_wrong_curve_refused(self):
        key = ec.generate_private_key(ec.SECP384R1())
        with self.assertRaises(ValueError) as caught:
            self.verifier_for(key)
        self.assertIn("P-256", str(caught.exception))

    def test_small_rsa_key_refused(self):
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.assertRaises(ValueError, self.verifier_for, key)

    def test_unsupported_key_type(self):
        with self.assertRaises(ValueError) as caught:
            self.verifier_for(ed25519.Ed25519PrivateKey.generate())
        self.assertIn("unsupported", str(caught.exception))

    def test_private_key_file_refused(self):
        path = self.key_file(pem_private_key(EC_KEY))
        with self.assertRaises(ValueError) as caught:
            TokenVerifier.from_public_key_file(path)
        self.assertIn(path, str(caught.exception))

    def test_garbage_file_refused(self):
        self.assertRaises(
            ValueError, TokenVerifier.from_public_key_file, self.key_file(b"hello")
        )

    def test_missing_file(self):
        self.assertRaises(
            OSError, TokenVerifier.from_public_key_file, os.path.join(self.directory, "none")
        )


class TokenFromQueryTests(SynchronousTestCase):
    """The ``?token=`` argument of the upgrade URL."""

    def test_autobahn_params(self):
        self.assertEqual(token_from_query({"token": ["abc"], "x": ["1"]}), "abc")

    def test_twisted_args(self):
        self.assertEqual(token_from_query({b"token": [b"abc"]}), "abc")

    def test_absent(self):
        self.assertIsNone(token_from_query({}))
        self.assertIsNone(token_from_query(None))
        self.assertIsNone(token_from_query({"token": [""]}))

    def test_repeated_same_value(self):
        self.assertEqual(token_from_query({"token": ["abc", "abc"]}), "abc")

    def test_conflicting_values(self):
        with self.assertRaises(ProtocolError) as caught:
            token_from_query({"token": ["abc", "def"]})
        self.assertEqual(caught.exception.code, UNAUTHORIZED)

    def test_not_utf8(self):
        with self.assertRaises(ProtocolError) as caught:
            token_from_query({b"token": [b"\xff"]})
        self.assertEqual(caught.exception.code, UNAUTHORIZED)
