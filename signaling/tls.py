"""
Native TLS (``wss://``): certificate loading, the TLS policy and hot reload.

``--tls-cert`` names a PEM file holding the server certificate, optionally
followed by its intermediates (certbot's ``fullchain.pem``); ``--tls-key``
its private key; ``--tls-chain`` an optional file of further intermediates.
Everything after the first certificate is sent to clients as the chain.

:class:`ReloadableTLS` is the object handed to the TLS endpoint: every new
handshake asks it for an OpenSSL connection, so :meth:`ReloadableTLS.reload`
(wired to SIGHUP by the service) swaps the certificate for new handshakes
while open connections keep the one they were made with.

Policy: TLS 1.2 or newer, forward-secret AEAD cipher suites only (TLS 1.3's
suites are always on), no compression, server cipher preference; ALPN
answers ``http/1.1`` (see :func:`negotiate_http11`).

Every TLS listener of the server gets its options from here: ``--tls-cert``
through :class:`ReloadableTLS`, ``--listen ssl:...`` through
:func:`listen_endpoint`, and anything else that wraps a socket in TLS should
use one of the two.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from .files import read_setting_file

__all__ = [
    "HTTP_1_1",
    "TLS_CIPHERS",
    "ReloadableTLS",
    "TLSConfigError",
    "check_listen_description",
    "listen_endpoint",
    "load_certificate_options",
    "negotiate_http11",
    "tls_from_options",
    "tls_server_endpoint",
    "tls_server_factory",
]

#: OpenSSL cipher string for TLS 1.2: ECDHE key exchange with AES-GCM or
#: ChaCha20-Poly1305 only (no CBC, no static RSA, no SHA-1 MACs).
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"

#: The application protocol spoken over TLS (WebSocket upgrades and the HTTP
#: endpoints), as named in ALPN.
HTTP_1_1 = b"http/1.1"

_log = Logger(namespace="signaling.tls")

_SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)
_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)

_CERT_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----\r?\n.+?\r?\n"
    rb"-----END \1-----",
    re.DOTALL,
)


class TLSConfigError(ValueError):
    """The TLS options or files cannot be used; the message says why, for humans."""


def _check_pairing(cert_path: str | None, key_path: str | None, chain_path: str | None) -> None:
    if cert_path and not key_path:
        raise TLSConfigError("--tls-cert was given without --tls-key: both are needed for TLS")
    if key_path and not cert_path:
        raise TLSConfigError("--tls-key was given without --tls-cert: both are needed for TLS")
    if chain_path and not cert_path:
        raise TLSConfigError("--tls-chain needs --tls-cert and --tls-key")


def _read(path: str, what: str) -> bytes:
    data = read_setting_file(path, f"{what} file", TLSConfigError)
    if b"-----BEGIN " not in data:
        raise TLSConfigError(f"{what} file {path!r} is not a PEM file (no '-----BEGIN' line)")
    return data


def _certificates(path: str, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    blocks = _CERT_BLOCK.findall(data)
    if not blocks:
        hint = (
            " (it holds a private key: are --tls-cert and --tls-key swapped?)"
            if _KEY_BLOCK.search(data)
            else ""
        )
        raise TLSConfigError(f"{what} file {path!r} contains no certificate{hint}")
    certificates = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            raise TLSConfigError(
                f"{what} file {path!r}: certificate number {number} is malformed"
            ) from None
    return certificates


def _private_key(path: str) -> _PrivateKey:
    data = _read(path, "TLS private key")
    match = _KEY_BLOCK.search(data)
    if match is None:
        hint = (
            " (it holds a certificate: are --tls-cert and --tls-key swapped?)"
            if _CERT_BLOCK.search(data)
            else ""
        )
        raise TLSConfigError(f"TLS private key file {path!r} is not a private key{hint}")
    try:
        key = serialization.load_pem_private_key(match.group(0), password=None)
    except TypeError:
        raise TLSConfigError(
            f"TLS private key file {path!r} is encrypted with a passphrase;"
            " the server needs an unencrypted key (keep the file readable by its user only)"
        ) from None
    except ValueError:
        raise TLSConfigError(f"TLS private key file {path!r} holds a malformed private key") from None
    if not isinstance(key, _SIGNING_KEYS):
        raise TLSConfigError(
            f"TLS private key file {path!r} holds a {type(key).__name__},"
            " which cannot sign TLS handshakes (use RSA, ECDSA or Ed25519)"
        )
    return key


def _spki(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _fingerprint(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _unique(certificates: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    seen: set[bytes] = set()
    result = []
    for certificate in certificates:
        der = _fingerprint(certificate)
        if der not in seen:
            seen.add(der)
            result.append(certificate)
    return result


def load_certificate_options(
    cert_path: str | None, key_path: str | None, chain_path: str | None = None
) -> CertificateOptions:
    """
    Load a certificate, its key and its chain into server TLS options.

    :param cert_path: PEM file: the server certificate first, then any
        intermediates (a certbot ``fullchain.pem`` works as is).
    :param key_path: PEM file holding the certificate's private key
        (unencrypted; PKCS#8, PKCS#1 or SEC1).
    :param chain_path: optional PEM file of further intermediates, appended
        after those of ``cert_path`` (duplicates are sent once).
    :return: a :class:`~twisted.internet.ssl.CertificateOptions`, usable as
        the context factory of ``SSL4ServerEndpoint``.
    :raises TLSConfigError: a file is missing, unreadable or not what it
        should be, or the key does not belong to the certificate.
    """
    _check_pairing(cert_path, key_path, chain_path)
    assert cert_path is not None and key_path is not None
    leaf, *chain = _certificates(cert_path, "TLS certificate")
    if chain_path:
        chain += _certificates(chain_path, "TLS chain")
    chain = [c for c in _unique(chain) if _fingerprint(c) != _fingerprint(leaf)]
    key = _private_key(key_path)
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSConfigError(
            f"the private key in {key_path!r} does not match the certificate in {cert_path!r}"
        )
    if chain and chain[0].subject != leaf.issuer:
        _log.warn(
            "TLS chain: the first chain certificate ({subject}) did not issue the"
            " server certificate (issuer {issuer}); clients may fail to verify it",
            subject=chain[0].subject.rfc4514_string(),
            issuer=leaf.issuer.rfc4514_string(),
        )
    options = CertificateOptions(
        **_openssl_objects(leaf, chain, key),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(TLS_CIPHERS),
    )
    try:
        # Build the OpenSSL context now so that any failure shows at load
        # time, not at the first handshake. CertificateOptions keeps this one
        # context for every connection, so the ALPN answer set here sticks.
        negotiate_http11(options.getContext())
    except SSL.Error as e:
        raise TLSConfigError(f"OpenSSL refused the TLS configuration: {e}") from None
    return options


class NoApplicationProtocol(SSL.Error):
    """The client offered ALPN protocols, none of them ``http/1.1``."""


def negotiate_http11(context: SSL.Context) -> SSL.Context:
    """
    Make ``context`` answer ALPN with ``http/1.1``; returns ``context``.

    Why this exists: Twisted (checked with 26.10) installs its own ALPN
    select callback on every server context, and when the listening factory
    does not provide ``IProtocolNegotiationFactory`` that callback selects an
    empty protocol name, which OpenSSL answers with an ``internal_error``
    alert. Browsers and curl always offer ALPN (``h2``, ``http/1.1``), so no
    browser could open ``wss://`` while clients offering no ALPN (Python's
    ``ssl``, ``curl --no-alpn``) worked. This callback replaces Twisted's:

    - ``http/1.1`` offered (with or without ``h2``): ``http/1.1`` is selected;
    - no ALPN offered: the handshake goes on without ALPN, as before;
    - only other protocols offered (``h2`` alone): the handshake is refused
      with the ``no_application_protocol`` alert RFC 7301 prescribes.
    """
    context.set_alpn_select_callback(_select_http11)
    return context


def _select_http11(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    if HTTP_1_1 in offered:
        return HTTP_1_1
    # pyOpenSSL turns an exception here into SSL_TLSEXT_ERR_ALERT_FATAL
    # (the no_application_protocol alert) and raises it again from the
    # handshake, where Twisted treats it as any failed handshake; it reads
    # an SSL.Error's argument as OpenSSL's error queue, hence its shape.
    raise NoApplicationProtocol(
        [("SSL routines", "alpn select", "no application protocol (only http/1.1 is spoken)")]
    )


def _openssl_objects(
    leaf: x509.Certificate, chain: list[x509.Certificate], key: _PrivateKey
) -> dict:
    """
    The certificate arguments of CertificateOptions, as the installed
    pyOpenSSL prefers them: ``cryptography`` objects where accepted (its own
    X509/PKey wrappers are deprecated there), the wrappers otherwise.
    """
    try:
        SSL.Context(SSL.TLS_METHOD).use_certificate(leaf)
    except TypeError:
        return {
            "certificate": crypto.X509.from_cryptography(leaf),
            "extraCertChain": [crypto.X509.from_cryptography(c) for c in chain],
            "privateKey": crypto.PKey.from_cryptography_key(key),
        }
    return {"certificate": leaf, "extraCertChain": chain, "privateKey": key}


def _leaf_of(options: CertificateOptions) -> x509.Certificate:
    certificate = options.certificate
    if isinstance(certificate, crypto.X509):
        return certificate.to_cryptography()
    return certificate


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadableTLS:
    """
    Server TLS options that can be re-read from their files while serving.

    Give an instance to ``SSL4ServerEndpoint`` (or :func:`tls_server_endpoint`)
    as its context factory. Each new handshake uses the options current at
    that moment; a connection keeps the certificate it started with.

    :raises TLSConfigError: from the constructor, when the files are unusable.
    """

    def __init__(self, cert_path: str, key_path: str, chain_path: str | None = None) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.chain_path = chain_path
        self._options = load_certificate_options(cert_path, key_path, chain_path)

    @property
    def options(self) -> CertificateOptions:
        """The options new handshakes use now."""
        return self._options

    @property
    def certificate(self) -> x509.Certificate:
        """The server certificate new handshakes present now."""
        return _leaf_of(self._options)

    def serverConnectionForTLS(self, protocol) -> SSL.Connection:
        """Create the OpenSSL connection for one new TLS connection."""
        return self._options.serverConnectionForTLS(protocol)

    def getContext(self) -> SSL.Context:
        """The current OpenSSL context (for APIs that predate connection creators)."""
        return self._options.getContext()

    def reload(self) -> bool:
        """
        Re-read the certificate, key and chain files.

        On success new handshakes present the new certificate and True is
        returned. On any failure the previous certificate stays in use, the
        reason is logged as an error and False is returned.
        """
        try:
            options = load_certificate_options(self.cert_path, self.key_path, self.chain_path)
        except TLSConfigError as e:
            _log.error(
                "TLS reload failed, still serving the previous certificate: {reason}",
                reason=str(e),
            )
            return False
        self._options = options
        leaf = _leaf_of(options)
        _log.info(
            "TLS certificate reloaded: {subject} serial {serial} valid until {not_after}",
            subject=leaf.subject.rfc4514_string(),
            serial=format(leaf.serial_number, "x"),
            # not_valid_after_utc needs cryptography >= 42
            not_after=getattr(leaf, "not_valid_after_utc", None) or leaf.not_valid_after,
        )
        return True


def tls_from_options(
    cert_path: str | None, key_path: str | None, chain_path: str | None = None
) -> ReloadableTLS | None:
    """
    Build the TLS context factory from the ``--tls-cert``, ``--tls-key`` and
    ``--tls-chain`` option values; None when TLS is not configured.

    :raises TLSConfigError: only one of cert and key given, or unusable files.
    """
    _check_pairing(cert_path, key_path, chain_path)
    if not cert_path:
        return None
    assert key_path is not None
    return ReloadableTLS(cert_path, key_path, chain_path)


def tls_server_endpoint(
    reactor, port: int, context_factory, interface: str = "", backlog: int = 1024
) -> SSL4ServerEndpoint:
    """
    A TLS listening endpoint on ``port`` using ``context_factory`` (a
    :class:`ReloadableTLS` or the result of :func:`load_certificate_options`).

    ``interface`` may be an IPv4 or IPv6 address (``"::"`` for all of IPv6).
    """
    return SSL4ServerEndpoint(
        reactor, port, context_factory, backlog=backlog, interface=interface
    )


def tls_server_factory(context_factory, factory) -> TLSMemoryBIOFactory:
    """
    ``factory`` wrapped so that its connections speak TLS as a server, with
    ``context_factory`` (a :class:`ReloadableTLS`, or Twisted's options of an
    ``ssl:`` description).

    Every listener that serves TLS on a socket it did not bind itself (the
    workers of ``--workers``, which inherit their sockets from the parent)
    is wrapped here, so a TLS setting that must hold for every handshake
    belongs in this function.
    """
    return TLSMemoryBIOFactory(context_factory, False, factory)


def _split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """Split an endpoint description the way Twisted does (``\\`` escapes)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.partition("=")
        if sep:
            keywords[name] = value
        else:
            positional.append(part)
    return positional, keywords


#: ``ssl:`` description keywords and their defaults (Twisted's, except
#: that the TLS policy, chain handling and ALPN are this module's).
_SSL_KEYWORDS = {
    "port": None,
    "interface": "",
    "backlog": "50",
    "privateKey": "server.pem",
    "certKey": None,
    "extraCertChain": None,
}


def _ssl_description(description: str) -> dict[str, str | None] | None:
    """
    The settings of an ``ssl:`` endpoint description (None for other
    types), as Twisted's parser reads them.

    :raises TLSConfigError: an option this server does not take, or no port.
    """
    positional, keywords = _split_description(description)
    if positional[0].lower() != "ssl":
        return None
    settings = dict(_SSL_KEYWORDS)
    for name, value in zip(("port",), positional[1:]):
        settings[name] = value
    if len(positional) > 2:
        raise TLSConfigError(f"{description!r}: too many positional values")
    for name, value in keywords.items():
        if name not in settings:
            raise TLSConfigError(
                f"{description!r}: option {name!r} is not supported; ssl: listeners use"
                " the server's TLS policy (docs/tls.md) and take port, interface, backlog,"
                " privateKey, certKey and extraCertChain"
            )
        settings[name] = value
    if settings["certKey"] is None:
        settings["certKey"] = settings["privateKey"]
    for name in ("port", "backlog"):
        if not (settings[name] or "").isdigit():
            raise TLSConfigError(f"{description!r}: {name} must be a number")
    return settings


def check_listen_description(description: str) -> None:
    """
    Check an ``ssl:`` endpoint description, as given to ``--listen``, and
    its certificate files; other endpoint types are left to Twisted.

    :raises TLSConfigError: the description or its certificate setup is unusable.
    """
    settings = _ssl_description(description)
    if settings is not None:
        load_certificate_options(
            settings["certKey"], settings["privateKey"], settings["extraCertChain"]
        )


def listen_endpoint(reactor: Any, description: str) -> Any:
    """
    The server endpoint for a ``--listen`` description.

    ``ssl:`` descriptions are built here rather than by Twisted's parser, so
    that they get the same certificate loading as ``--tls-cert`` (every
    certificate in ``certKey`` is sent, then ``extraCertChain``), the same
    TLS policy and :func:`negotiate_http11` (see :func:`ssl_description_options`).
    Other types go to Twisted's ``serverFromString``.

    :raises TLSConfigError: a bad ``ssl:`` description or unusable files.
    """
    settings = _ssl_description(description)
    if settings is None:
        return serverFromString(reactor, description)
    return SSL4ServerEndpoint(
        reactor, int(settings["port"]), ssl_description_options(description),
        backlog=int(settings["backlog"]), interface=settings["interface"],
    )


def ssl_description_options(description: str) -> CertificateOptions | None:
    """
    The TLS options of an ``ssl:`` description, loaded as ``--tls-cert``'s
    are (with :func:`negotiate_http11`); None for other descriptions.

    :raises TLSConfigError: a bad ``ssl:`` description or unusable files.
    """
    settings = _ssl_description(description)
    if settings is None:
        return None
    return load_certificate_options(
        settings["certKey"], settings["privateKey"], settings["extraCertChain"]
    )