"""
Token authentication: verify a JWT and say which id and rooms it grants.

A deployment configures one verifier, either with a shared secret (HS256) or
with a PEM public key (RS256 for an RSA key, ES256 for a P-256 key). Exactly
one algorithm is accepted per verifier, so ``alg: none`` and algorithm
confusion (a public key used as an HMAC secret) can never verify.

Time is always passed in (``now``, seconds since the epoch): the verifier
never reads the system clock, so expiry is testable with a fake clock and
agrees with the server's own notion of time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signaling.config import MAX_TOKEN_LENGTH
from signaling.messages import (
    FORBIDDEN, INVALID_FIELD, UNAUTHORIZED, ProtocolError, validate_id,
)

__all__ = [
    "Authorizer",
    "DEFAULT_LEEWAY",
    "MAX_TOKEN_LENGTH",
    "MIN_SECRET_BYTES",
    "Grant",
    "TokenVerifier",
    "token_from_query",
]

#: Seconds of clock skew tolerated on ``exp`` and ``nbf``.
DEFAULT_LEEWAY = 30.0

#: Shortest HS256 secret accepted (RFC 7518 section 3.2: at least the hash size).
MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class Grant:
    """
    What a verified token allows.

    :ivar subject: the only id the connection may bind (the ``sub`` claim,
        in NFC like every id).
    :ivar rooms: the room ids and ``prefix*`` patterns it may join (in NFC),
        or ``None`` when the token has no ``rooms`` claim (every room).
    :ivar expires_at: the ``exp`` claim, or ``None`` when the token does not
        expire.
    """

    subject: str
    rooms: frozenset[str] | None = None
    expires_at: float | None = None

    def allows_room(self, room_id: str) -> bool:
        """Whether this grant lets its holder join ``room_id``."""
        if self.rooms is None:
            return True
        if room_id in self.rooms:
            return True
        return any(
            pattern.endswith("*") and room_id.startswith(pattern[:-1])
            for pattern in self.rooms
        )


def _unauthorized(text: str) -> ProtocolError:
    return ProtocolError(UNAUTHORIZED, text)


def _numeric_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _unauthorized(f"malformed token: '{name}' must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise _unauthorized(f"malformed token: '{name}' must be a finite number")
    return value


def _rooms_claim(claims: Mapping[str, Any]) -> frozenset[str] | None:
    if "rooms" not in claims:
        return None
    rooms = claims["rooms"]
    if not isinstance(rooms, list):
        raise _unauthorized("malformed token: 'rooms' must be a list of room ids")
    allowed = set()
    for room in rooms:
        if not isinstance(room, str) or not room:
            raise _unauthorized(
                "malformed token: 'rooms' entries must be room ids or 'prefix*'"
            )
        if room == "*":
            allowed.add(room)
            continue
        prefix = room.endswith("*")
        try:
            room = validate_id(room[:-1] if prefix else room, "rooms")
        except ProtocolError:
            raise _unauthorized(
                "malformed token: 'rooms' entries must be room ids or 'prefix*'"
            ) from None
        # In NFC, as the room ids they are compared with.
        allowed.add(room + "*" if prefix else room)
    return frozenset(allowed)


class TokenVerifier:
    """
    Verifies signed JWTs with one key and one algorithm.

    Build it with :meth:`from_secret` or :meth:`from_public_key_file`.
    """

    def __init__(
        self,
        key: Any,
        algorithm: str,
        leeway: float = DEFAULT_LEEWAY,
        audience: str | None = None,
    ) -> None:
        """
        Prefer the ``from_*`` constructors, which pick the algorithm from the
        key; ``audience``, when set, must appear in the token's ``aud``.
        """
        if algorithm not in ("HS256", "RS256", "ES256"):
            raise ValueError(f"unsupported token algorithm {algorithm!r}")
        if leeway < 0:
            raise ValueError("token leeway must not be negative")
        self.key = key
        self.algorithm = algorithm
        self.leeway = float(leeway)
        self.audience = audience

    @classmethod
    def from_secret(
        cls, secret: str | bytes, leeway: float = DEFAULT_LEEWAY, audience: str | None = None
    ) -> TokenVerifier:
        """
        An HS256 verifier for a shared secret of at least
        :data:`MIN_SECRET_BYTES` bytes.

        :raises ValueError: the secret is too short or is a PEM key.
        """
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the token secret must be at least {MIN_SECRET_BYTES} bytes long"
            )
        if key.lstrip().startswith(b"-----BEGIN"):
            raise ValueError(
                "the token secret looks like a PEM key; use a public key file instead"
            )
        return cls(key, "HS256", leeway, audience)

    @classmethod
    def from_public_key_pem(
        cls, pem: bytes, leeway: float = DEFAULT_LEEWAY, audience: str | None = None
    ) -> TokenVerifier:
        """
        An RS256 (RSA key) or ES256 (P-256 key) verifier for a PEM public key.

        :raises ValueError: the data is not a PEM public key of a supported type.
        """
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as e:
            raise ValueError(f"not a PEM public key: {e}") from None
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise ValueError("RSA token keys must be at least 2048 bits")
            return cls(key, "RS256", leeway, audience)
        if isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise ValueError(
                    f"EC token keys must use the P-256 curve (ES256), not {key.curve.name}"
                )
            return cls(key, "ES256", leeway, audience)
        raise ValueError(
            f"unsupported public key type {type(key).__name__}: use RSA or EC P-256"
        )

    @classmethod
    def from_public_key_file(
        cls, path: str, leeway: float = DEFAULT_LEEWAY, audience: str | None = None
    ) -> TokenVerifier:
        """
        :meth:`from_public_key_pem` for the PEM file at ``path``.

        :raises ValueError: as :meth:`from_public_key_pem`.
        :raises OSError: the file cannot be read.
        """
        with open(path, "rb") as f:
            pem = f.read()
        try:
            return cls.from_public_key_pem(pem, leeway, audience)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def verify(self, token: str, now: float) -> Grant:
        """
        Check ``token`` at time ``now`` and return what it grants.

        :raises ProtocolError: ``UNAUTHORIZED`` when the token is malformed,
            badly signed, signed with another algorithm, expired, not yet
            valid, or lacks a valid ``sub``.
        """
        if not isinstance(token, str) or not token:
            raise _unauthorized("malformed token: a token must be a non-empty string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _unauthorized("malformed token: too long")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "verify_aud": self.audience is not None,
                    "require": [],
                },
            )
        except jwt.InvalidSignatureError:
            raise _unauthorized("bad token signature") from None
        except jwt.InvalidAlgorithmError:
            raise _unauthorized(
                f"token algorithm not allowed (expected {self.algorithm})"
            ) from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("token audience not accepted") from None
        except jwt.DecodeError:
            raise _unauthorized("malformed token") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise _unauthorized("invalid token") from None
        return self._grant(claims, now)

    def _grant(self, claims: Mapping[str, Any], now: float) -> Grant:
        expires_at = _numeric_claim(claims, "exp")
        not_before = _numeric_claim(claims, "nbf")
        if expires_at is not None and now > expires_at + self.leeway:
            raise _unauthorized("token expired")
        if not_before is not None and now < not_before - self.leeway:
            raise _unauthorized("token not yet valid")
        subject = claims.get("sub")
        if subject is None:
            raise _unauthorized("token has no 'sub' claim")
        try:
            subject = validate_id(subject, "sub")  # in NFC, as every id it is compared with
        except ProtocolError as e:
            raise _unauthorized(f"token {e.text}") from None
        return Grant(subject, _rooms_claim(claims), expires_at)


def token_from_query(
    query_args: Mapping[Any, Sequence[Any]] | None,
) -> str | None:
    """
    The ``token`` query argument of an upgrade URL, or ``None``.

    Accepts both Autobahn's ``ConnectionRequest.params`` (``str`` keys and
    values) and twisted.web's ``Request.args`` (``bytes``).

    :raises ProtocolError: ``UNAUTHORIZED`` when several different tokens or
        a non-UTF-8 token are given.
    """
    if not query_args:
        return None
    values = list(query_args.get("token", ())) + list(query_args.get(b"token", ()))
    tokens = set()
    for value in values:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise _unauthorized("malformed token: not UTF-8") from None
        if value:
            tokens.add(value)
    if len(tokens) > 1:
        raise _unauthorized("more than one token given")
    return tokens.pop() if tokens else None


class Authorizer:
    """
    The token rules of the protocol (PROTOCOL section 8) for one server: which
    id and rooms a connection may bind, given the token it presented in the
    upgrade URL or in a ``token`` field. Without a verifier everything is
    allowed.
    """

    def __init__(self, verifier: TokenVerifier | None, required: bool, clock: Any) -> None:
        self.verifier = verifier
        self.required = required
        self._clock = clock

    def verify(self, token: Any) -> Grant:
        """
        What ``token`` grants now.

        :raises ProtocolError: ``INVALID_FIELD`` for a token that is not a
            string, ``UNAUTHORIZED`` for a bad one.
        """
        if not isinstance(token, str):
            raise ProtocolError(INVALID_FIELD, "'token' must be a string")
        assert self.verifier is not None
        return self.verifier.verify(token, self._clock.seconds())

    def authorize(self, session: Any, identity: str, message: Mapping[str, Any]) -> None:
        """
        Check that ``session`` may bind ``identity``; a ``token`` field in
        ``message`` replaces the session's grant first.

        :raises ProtocolError: ``UNAUTHORIZED`` (no or bad token where one is
            required), ``FORBIDDEN`` (the token names another id).
        """
        if self.verifier is None:
            return
        if "token" in message:
            session.grant = self.verify(message["token"])
        grant = session.grant
        if grant is None:
            if self.required:
                raise ProtocolError(UNAUTHORIZED, "a valid token is required")
            return
        if grant.subject != identity:
            raise ProtocolError(FORBIDDEN, f"the token does not allow the id '{identity}'")

    def check_room(self, session: Any, room_id: str) -> None:
        """:raises ProtocolError: ``FORBIDDEN`` when the session's grant excludes ``room_id``."""
        if session.grant is not None and not session.grant.allows_room(room_id):
            raise ProtocolError(FORBIDDEN, f"the token does not allow room '{room_id}'")
