"""Does a server ask for a client certificate, and which CAs does it name? (for `fopproxy scan`)

Python's ssl client cannot tell: the CertificateRequest message and its certificate_authorities
list are not exposed. In TLS 1.2 the server's first flight is plaintext, so one TLS 1.2
handshake without a client certificate, with the server's bytes kept, shows both the request and
the names (RFC 5246 §7.4.4); whether the server then completes the handshake without a
certificate tells `optional` from `require`. TLS 1.3 encrypts the request, so a TLS 1.3-only
server is reported as not determinable.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Literal

_HANDSHAKE, _CHANGE_CIPHER_SPEC, _ALERT = 22, 20, 21
_CERTIFICATE_REQUEST, _SERVER_HELLO_DONE = 13, 14
_MAX_CAPTURE = 256 * 1024

# Attribute types a CA's name is usually made of, as RFC 4514 spells them.
_ATTRIBUTE_NAMES = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O",
    "2.5.4.11": "OU", "2.5.4.5": "serialNumber", "0.9.2342.19200300.100.1.25": "DC",
}


class DerError(ValueError):
    """The bytes are not the DER this module reads."""


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `offset`."""
    if offset + 2 > len(data):
        raise DerError("element cut short")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 3 or offset + count > len(data):
            raise DerError("bad length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise DerError("element longer than its container")
    return tag, offset, offset + length


def _oid(value: bytes) -> str:
    if not value:
        raise DerError("empty OID")
    parts = [*divmod(value[0], 40)] if value[0] < 80 else [2, value[0] - 80]
    number = 0
    for byte in value[1:]:
        number = (number << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(number)
            number = 0
    return ".".join(map(str, parts))


def _escape(text: str) -> str:
    """RFC 4514 §2.4 escaping of an attribute value."""
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in text)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


def name_from_der(der: bytes) -> str:
    """A DER X.501 Name as an RFC 4514 string (last RDN first, as OpenSSL and cryptography
    print it); string types decoded, anything else as #hex."""
    tag, start, end = _tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise DerError("a Name is one SEQUENCE")
    rdns: list[str] = []
    offset = start
    while offset < end:
        tag, set_start, set_end = _tlv(der, offset)
        if tag != 0x31:
            raise DerError("an RDN is a SET")
        pairs: list[str] = []
        inner = set_start
        while inner < set_end:
            tag, seq_start, seq_end = _tlv(der, inner)
            oid_tag, oid_start, oid_end = _tlv(der, seq_start)
            if tag != 0x30 or oid_tag != 0x06:
                raise DerError("an attribute is SEQUENCE { OID, value }")
            value_tag, value_start, value_end = _tlv(der, oid_end)
            oid = _oid(der[oid_start:oid_end])
            raw = der[value_start:value_end]
            if value_tag == 0x1E:  # BMPString
                text = _escape(raw.decode("utf-16-be", "replace"))
            elif value_tag in (0x0C, 0x13, 0x14, 0x16, 0x1A, 0x1C):
                text = _escape(raw.decode("utf-8", "replace"))
            else:
                text = "#" + der[oid_end:value_end].hex()
            pairs.append(f"{_ATTRIBUTE_NAMES.get(oid, oid)}={text}")
            inner = seq_end
        rdns.append("+".join(pairs))
        offset = set_end
    return ",".join(reversed(rdns))


@dataclass(frozen=True)
class CertificateRequest:
    """What a TLS 1.2 CertificateRequest carried."""

    ca_names: tuple[str, ...]


def _handshake_messages(flight: bytes) -> list[tuple[int, bytes]]:
    """The plaintext handshake messages in the server's bytes, up to its ChangeCipherSpec."""
    stream = bytearray()
    offset = 0
    while offset + 5 <= len(flight):
        content_type = flight[offset]
        length = int.from_bytes(flight[offset + 3 : offset + 5], "big")
        body = flight[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if content_type in (_CHANGE_CIPHER_SPEC, _ALERT) or len(body) < length:
            break  # what follows a ChangeCipherSpec is encrypted
        if content_type == _HANDSHAKE:
            stream += body
    messages: list[tuple[int, bytes]] = []
    offset = 0
    while offset + 4 <= len(stream):
        kind = stream[offset]
        length = int.from_bytes(stream[offset + 1 : offset + 4], "big")
        if offset + 4 + length > len(stream):
            break
        messages.append((kind, bytes(stream[offset + 4 : offset + 4 + length])))
        offset += 4 + length
    return messages


def find_certificate_request(flight: bytes) -> CertificateRequest | None:
    """The TLS 1.2 CertificateRequest among the server's plaintext records, or None."""
    for kind, body in _handshake_messages(flight):
        if kind == _SERVER_HELLO_DONE:
            return None
        if kind != _CERTIFICATE_REQUEST:
            continue
        types_length = body[0] if body else 0
        offset = 1 + types_length
        algorithms_length = int.from_bytes(body[offset : offset + 2], "big")
        offset += 2 + algorithms_length
        total = int.from_bytes(body[offset : offset + 2], "big")
        offset += 2
        end = min(offset + total, len(body))
        names: list[str] = []
        while offset + 2 <= end:
            length = int.from_bytes(body[offset : offset + 2], "big")
            der = body[offset + 2 : offset + 2 + length]
            offset += 2 + length
            try:
                names.append(name_from_der(der))
            except DerError:
                names.append("#" + der.hex())
        return CertificateRequest(tuple(names))
    return None


ClientAuthState = Literal["required", "optional", "not_requested", "unknown"]


@dataclass(frozen=True)
class ClientAuthProbe:
    state: ClientAuthState
    ca_names: tuple[str, ...] = ()
    detail: str = ""


def probe_client_auth(
    host: str, port: int, server_name: str | None, timeout: float
) -> ClientAuthProbe:
    """One TLS 1.2 handshake without a client certificate, the server's bytes kept."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    captured = bytearray()
    failure: ssl.SSLError | None = None
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            while True:
                try:
                    tls.do_handshake()
                    tls.read(1)  # a refusal after our Finished arrives as an alert here
                    break
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    failure = exc
                    break
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                if tls.version() is not None and not incoming.pending:
                    break  # done, and the server sent nothing more: it serves us
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    break
                if not data or len(captured) > _MAX_CAPTURE:
                    break
                captured += data
                incoming.write(data)
    except OSError as exc:
        if not isinstance(exc, ssl.SSLError):
            return ClientAuthProbe("unknown", detail=f"connect: {exc.strerror or exc}")
    request = find_certificate_request(bytes(captured))
    if tls.version() is None and request is None:
        why = failure.reason if failure is not None else "no answer"
        return ClientAuthProbe(
            "unknown", detail=f"no TLS 1.2 handshake ({why}); TLS 1.3 encrypts the request"
        )
    if request is None:
        return ClientAuthProbe("not_requested", detail="no client certificate asked for")
    if failure is not None or tls.version() is None:
        why = failure.reason if failure is not None else "closed"
        return ClientAuthProbe(
            "required", request.ca_names, f"refused a client without a certificate ({why})"
        )
    return ClientAuthProbe(
        "optional", request.ca_names, "asks for a certificate, serves clients without one"
    )
