"""
Test support: key material for token tests and the TURN REST password,
computed here independently of the server's own code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import serialization

__all__ = ["public_pem", "write_public_key", "turn_password"]


def public_pem(private_key) -> bytes:
    """The public half of ``private_key`` as a SubjectPublicKeyInfo PEM block."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_public_key(path: str | os.PathLike[str], private_key) -> str:
    """Write the public half of ``private_key`` to ``path`` (PEM); returns the path."""
    with open(path, "wb") as f:
        f.write(public_pem(private_key))
    return os.fspath(path)


def turn_password(secret: str, username: str) -> str:
    """The TURN REST API password: base64(HMAC-SHA1(secret, username))."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()
