"""
A throw-away public key infrastructure for tests that need real TLS.

A root CA signs an intermediate CA, which signs leaf certificates for
``localhost`` and ``127.0.0.1``: the same shape as a public CA's chain, so a
client that trusts only the root can verify the server only when the server
sends the intermediate.

Typical use in a trial test case::

    pki = PKI.create()
    files = pki.write(self.mktemp())
    # files.fullchain, files.cert, files.chain, files.key, files.root ...
    renewed = pki.write(files.directory, common_name="renewed")  # same paths, new leaf

Everything is generated in memory with ``cryptography``; only :meth:`PKI.write`
touches the file system.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertFiles", "Leaf", "PKI", "pem_certificate", "pem_private_key"]

_ONE_DAY = datetime.timedelta(days=1)


def pem_certificate(certificate: x509.Certificate) -> bytes:
    """Return ``certificate`` in PEM form."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Return ``key`` as an unencrypted PKCS#8 PEM block."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "signaling tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + 30 * _ONE_DAY)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )


def _ca_extensions(
    builder: x509.CertificateBuilder, path_length: int | None
) -> x509.CertificateBuilder:
    return builder.add_extension(
        x509.BasicConstraints(ca=True, path_length=path_length), critical=True
    ).add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )


@dataclass(frozen=True)
class Leaf:
    """A server certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def serial(self) -> int:
        """The certificate's serial number."""
        return self.certificate.serial_number

    @property
    def common_name(self) -> str:
        """The certificate subject's common name."""
        attribute = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attribute[0].value)


@dataclass(frozen=True)
class CertFiles:
    """
    Paths of the PEM files written by :meth:`PKI.write`, named like certbot's.

    :ivar directory: the directory holding all files.
    :ivar root: the root CA certificate: the only thing a client should trust.
    :ivar chain: the intermediate CA certificate (certbot's ``chain.pem``).
    :ivar cert: the leaf certificate alone (certbot's ``cert.pem``).
    :ivar fullchain: the leaf followed by the intermediate (``fullchain.pem``).
    :ivar key: the leaf's private key (``privkey.pem``).
    :ivar leaf: the leaf that was written.
    """

    directory: Path
    root: Path
    chain: Path
    cert: Path
    fullchain: Path
    key: Path
    leaf: Leaf


@dataclass(frozen=True)
class PKI:
    """
    A root CA and an intermediate CA that issue leaf certificates.

    :ivar root_certificate: self-signed root CA certificate.
    :ivar intermediate_certificate: intermediate CA certificate, signed by the root.
    """

    root_certificate: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    intermediate_certificate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "signaling test") -> PKI:
        """Generate a fresh root CA and an intermediate CA signed by it."""
        root_key = _new_key()
        root_name = _name(f"{name} root CA")
        root = _ca_extensions(
            _builder(root_name, root_name, root_key.public_key()), path_length=1
        ).sign(root_key, hashes.SHA256())
        intermediate_key = _new_key()
        intermediate = (
            _ca_extensions(
                _builder(
                    _name(f"{name} intermediate CA"),
                    root_name,
                    intermediate_key.public_key(),
                ),
                path_length=0,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        return cls(root, root_key, intermediate, intermediate_key)

    @property
    def root_pem(self) -> bytes:
        """The root CA certificate in PEM form (what a client trusts)."""
        return pem_certificate(self.root_certificate)

    @property
    def intermediate_pem(self) -> bytes:
        """The intermediate CA certificate in PEM form."""
        return pem_certificate(self.intermediate_certificate)

    def issue_leaf(
        self,
        common_name: str = "localhost",
        dns_names: tuple[str, ...] = ("localhost",),
        ip_addresses: tuple[str, ...] = ("127.0.0.1",),
    ) -> Leaf:
        """Issue a server certificate signed by the intermediate CA."""
        key = _new_key()
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        certificate = (
            _builder(
                _name(common_name),
                self.intermediate_certificate.subject,
                key.public_key(),
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.intermediate_key.public_key()
                ),
                critical=False,
            )
            .sign(self.intermediate_key, hashes.SHA256())
        )
        return Leaf(certificate, key)

    def write(
        self,
        directory: str | os.PathLike[str],
        common_name: str = "localhost",
        leaf: Leaf | None = None,
    ) -> CertFiles:
        """
        Write the root, the chain and a leaf (a new one unless ``leaf`` is
        given) into ``directory`` (created if missing) and return the paths.

        Writing again into the same directory replaces the files in place,
        as a certificate renewal does.
        """
        if leaf is None:
            leaf = self.issue_leaf(common_name)
        base = Path(directory)
        base.mkdir(parents=True, exist_ok=True)
        files = CertFiles(
            directory=base,
            root=base / "root.pem",
            chain=base / "chain.pem",
            cert=base / "cert.pem",
            fullchain=base / "fullchain.pem",
            key=base / "privkey.pem",
            leaf=leaf,
        )
        leaf_pem = pem_certificate(leaf.certificate)
        _replace(files.root, self.root_pem)
        _replace(files.chain, self.intermediate_pem)
        _replace(files.cert, leaf_pem)
        _replace(files.fullchain, leaf_pem + self.intermediate_pem)
        _replace(files.key, pem_private_key(leaf.key))
        return files


def _replace(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` atomically (readers never see half a file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(content)
    os.replace(partial, path)
