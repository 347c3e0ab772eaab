"""Where a verified client certificate comes from, and how the backend is told about it.

The pump asks its client side for `verified_chain()`: the DER certificates the TLS layer verified
(leaf first), or an empty tuple when the client sent none or none was verified. Only a verified
chain is ever put in a header: `client_auth` (another module) decides what "verified" means; here
an SSLObject whose context did not ask for a certificate never yields one, so a header can never
carry something nobody checked.

RFC 9440: `Client-Cert` is the leaf and `Client-Cert-Chain` the rest, each certificate a
Structured Field byte sequence (`:base64:`).
"""

from __future__ import annotations

import base64
import ssl
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


class VerifiedPeer(Protocol):
    """What the client side of a connection can tell about the client's certificate."""

    def verified_chain(self) -> tuple[bytes, ...]:
        """DER certificates, leaf first, that TLS verified; () when there are none."""
        ...


def chain_of(ssl_object: ssl.SSLObject) -> tuple[bytes, ...]:
    """The verified chain of a finished handshake, or () when the context verified nothing."""
    if ssl_object.context.verify_mode == ssl.CERT_NONE:
        return ()
    leaf = ssl_object.getpeercert(binary_form=True)
    if not leaf:
        return ()
    # Python 3.13 exposes the chain OpenSSL built; before it, the leaf is all we can vouch for.
    get_chain = getattr(ssl_object, "get_verified_chain", None)
    if get_chain is not None:
        chain = tuple(_der(cert) for cert in get_chain())
        if chain and chain[0] == leaf:
            return chain
    return (leaf,)


def _der(cert: object) -> bytes:
    # SSLObject.get_verified_chain (3.13) gives DER bytes; the C object's gives ssl.Certificate,
    # which writes PEM by default (its DER constant lives in private _ssl).
    if isinstance(cert, bytes):
        return cert
    pem = cert.public_bytes()  # type: ignore[attr-defined]
    return pem_to_der(pem.encode() if isinstance(pem, str) else pem)


def client_cert_headers(chain: tuple[bytes, ...]) -> bytes:
    """The RFC 9440 header lines for `chain` (CRLF-terminated), b"" for an empty chain."""
    if not chain:
        return b""
    lines = b"Client-Cert: :" + base64.b64encode(chain[0]) + b":\r\n"
    if len(chain) > 1:
        lines += (
            b"Client-Cert-Chain: "
            + b", ".join(b":" + base64.b64encode(c) + b":" for c in chain[1:])
            + b"\r\n"
        )
    return lines


def subject_of(chain: tuple[bytes, ...]) -> str:
    """The leaf's subject as RFC 4514 text for the access log; "-" without a certificate."""
    if not chain:
        return "-"
    try:
        subject = x509.load_der_x509_certificate(chain[0]).subject.rfc4514_string()
    except ValueError:
        return "?"
    return printable(subject)


def printable(subject: str) -> str:
    """A subject as a log field: no spaces or control characters, whatever it holds."""
    return "".join(c if c.isprintable() and c != " " else "_" for c in subject)[:256] or "-"


def pem_to_der(pem: bytes) -> bytes:
    """For tests and tools: one PEM certificate as DER."""
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
