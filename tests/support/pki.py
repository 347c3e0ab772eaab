"""Certificates for tests, made at run time (no key is ever committed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from fopproxy.selfsigned import generate_key, self_signed


@dataclass
class Pair:
    cert: Path
    key: Path
    serial: int
    cert_pem: bytes
    key_pem: bytes


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


class CA:
    """A tiny CA that issues leaves with any property a test needs (good or broken)."""

    def __init__(self, name: str = "fopproxy test CA", key_type: Literal["ecdsa", "rsa"] = "ecdsa") -> None:
        self.key = generate_key(key_type)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        names: list[str],
        key_type: Literal["ecdsa", "rsa"] = "ecdsa",
        *,
        rsa_bits: int = 2048,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        cn: str | None = None,
        san: bool = True,
        hash_algorithm: hashes.HashAlgorithm | None = None,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
        authority_key_id: bool = True,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]:
        if key is None:
            if key_type == "rsa":
                key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
            else:
                key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        start = not_before or now - timedelta(hours=1)
        end = not_after or now + timedelta(days=90)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or (names[0] if names else "x"))]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if authority_key_id:
            # What every real CA writes; Python 3.13's default client context (X509_STRICT)
            # refuses a CA-issued leaf without it.
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        if san and names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
        cert = builder.sign(self.key, hash_algorithm or hashes.SHA256())
        return cert, key

    def write(
        self,
        folder: Path,
        stem: str,
        names: list[str],
        key_type: Literal["ecdsa", "rsa"] = "ecdsa",
        *,
        chain: bool = True,
        password: bytes | None = None,
        **kwargs: object,
    ) -> Pair:
        cert, key = self.issue(names, key_type, **kwargs)  # type: ignore[arg-type]
        cert_pem = cert.public_bytes(serialization.Encoding.PEM) + (self.cert_pem if chain else b"")
        key_pem = _pem_key(key, password)
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        return Pair(cert_path, key_path, cert.serial_number, cert_pem, key_pem)


def write_self_signed(folder: Path, stem: str, names: list[str], key_type: Literal["ecdsa", "rsa"] = "ecdsa") -> Pair:
    issued = self_signed(names, key_type)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(issued.cert_pem)
    key_path.write_bytes(issued.key_pem)
    return Pair(cert_path, key_path, issued.certificate.serial_number, issued.cert_pem, issued.key_pem)
