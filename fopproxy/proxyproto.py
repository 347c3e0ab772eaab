"""PROXY protocol v1 and v2 headers: the client's address and TLS identity, told to the backend.

A TLS-terminating proxy hides the client from a plain backend: the backend sees the proxy's
address and no certificate. HAProxy's PROXY protocol (haproxy.org/download/2.9/doc/
proxy-protocol.txt) is how HAProxy, nginx, hitch and ghostunnel pass both on at layer 4; backends
that read it from HAProxy's `send-proxy-v2-ssl-cn` today read ours unchanged.

The header is built once per connection, after the handshake, into one bytes object that is the
first thing written to the backend: the relay's per-chunk path never sees it.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass
from typing import Literal

ProxyProtocol = Literal["off", "v1", "v2"]
PROXY_PROTOCOLS: tuple[ProxyProtocol, ...] = ("off", "v1", "v2")

# What a socket's getpeername()/getsockname() returns: (host, port[, flowinfo, scope_id]) for
# TCP, a path for AF_UNIX, None where the transport had none.
SocketAddress = tuple[object, ...] | str | bytes | None

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL: the proxy's own connection (no client behind it)
_AF_UNSPEC, _TCP4, _TCP6, _UNIX_STREAM = 0x00, 0x11, 0x21, 0x31
_UNIX_PATH_SIZE = 108

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_MAX_VALUE = 0xFFFF


@dataclass(frozen=True, slots=True)
class TLSDetails:
    """What the v2 TLVs say about the client's TLS connection (all strings as OpenSSL names them).

    `sig_alg` and `key_alg` describe the certificate *this proxy* presented (as HAProxy's do),
    e.g. `ecdsa-with-SHA256` and `EC256`. `cn` is sent only for a verified client certificate.
    """

    version: str | None = None
    cipher: str | None = None
    sni: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    alpn: str | None = None
    # The client presented a certificate on this connection / in the TLS session it resumed.
    cert_conn: bool = False
    cert_sess: bool = False
    verified: bool = False
    cn: str | None = None


_V4_MAPPED = bytes(10) + b"\xff\xff"


@dataclass(frozen=True, slots=True)
class _Tcp:
    """One TCP endpoint: IP version, canonical text, packed address, port."""

    version: int
    text: str
    packed: bytes
    port: int


def _tcp(address: SocketAddress) -> _Tcp | None:
    # inet_pton/inet_ntop (C) rather than the ipaddress module: ~10x cheaper per connection.
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        return None
    host = host.partition("%")[0]  # drop an IPv6 zone id
    try:
        return _Tcp(4, host, socket.inet_pton(socket.AF_INET, host), port)
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return None
    return _Tcp(6, socket.inet_ntop(socket.AF_INET6, packed), packed, port)


def _unmapped(end: _Tcp) -> _Tcp | None:
    if end.version == 6 and end.packed[:12] == _V4_MAPPED:
        v4 = end.packed[12:]
        return _Tcp(4, socket.inet_ntop(socket.AF_INET, v4), v4, end.port)
    return None


def _pair(src: SocketAddress, dst: SocketAddress) -> tuple[_Tcp, _Tcp] | None:
    """Both TCP endpoints in one family, IPv4-mapped IPv6 unmapped (a dual-stack listener's
    IPv4 clients are IPv4 to the backend), or None where the spec says UNKNOWN/UNSPEC."""
    s, d = _tcp(src), _tcp(dst)
    if s is None or d is None:
        return None
    s4, d4 = _unmapped(s), _unmapped(d)
    if s4 is not None and d4 is not None:
        return s4, d4
    if s.version != d.version:
        return None
    return s, d


def header_v1(src: SocketAddress, dst: SocketAddress) -> bytes:
    """`PROXY TCP4|TCP6 src dst sport dport\\r\\n`, or `PROXY UNKNOWN\\r\\n` for anything else
    (a Unix socket, mixed families, an address the transport no longer has)."""
    pair = _pair(src, dst)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    s, d = pair
    family = "TCP4" if s.version == 4 else "TCP6"
    return f"PROXY {family} {s.text} {d.text} {s.port} {d.port}\r\n".encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


def _unix_path(address: SocketAddress) -> bytes | None:
    if isinstance(address, str):
        path = address.encode("utf-8", "surrogateescape")
    elif isinstance(address, bytes):
        path = address  # Linux abstract sockets start with NUL, which the fixed field keeps
    else:
        return None
    if len(path) > _UNIX_PATH_SIZE:
        return None
    return path.ljust(_UNIX_PATH_SIZE, b"\0")


def _addresses_v2(src: SocketAddress, dst: SocketAddress) -> tuple[int, bytes]:
    pair = _pair(src, dst)
    if pair is not None:
        s, d = pair
        family = _TCP4 if s.version == 4 else _TCP6
        return family, s.packed + d.packed + s.port.to_bytes(2, "big") + d.port.to_bytes(2, "big")
    s_unix, d_unix = _unix_path(src), _unix_path(dst)
    if s_unix is not None and d_unix is not None:
        return _UNIX_STREAM, s_unix + d_unix
    # The spec: with AF_UNSPEC the receiver must ignore the address block and use the real
    # connection's addresses; TLVs still follow.
    return _AF_UNSPEC, b""


def _text(value: str | None) -> bytes | None:
    if not value:
        return None
    data = value.encode("utf-8", "replace")
    # A value that cannot fit a TLV is left out, as HAProxy does; the header stays valid.
    return data if len(data) <= _MAX_VALUE - 64 else None


def _ssl_tlv(tls: TLSDetails) -> bytes:
    client = PP2_CLIENT_SSL
    if tls.cert_conn:
        client |= PP2_CLIENT_CERT_CONN
    if tls.cert_conn or tls.cert_sess:
        client |= PP2_CLIENT_CERT_SESS
    # `verify` is zero only for a presented, successfully verified client certificate.
    verify = 0 if (tls.verified and (tls.cert_conn or tls.cert_sess)) else 1
    body = bytearray((client,))
    body += verify.to_bytes(4, "big")
    for kind, value in (
        # HAProxy 2.6's order, so a byte-level diff against it shows only real differences.
        (PP2_SUBTYPE_SSL_VERSION, tls.version),
        (PP2_SUBTYPE_SSL_CN, tls.cn if verify == 0 else None),
        (PP2_SUBTYPE_SSL_KEY_ALG, tls.key_alg),
        (PP2_SUBTYPE_SSL_SIG_ALG, tls.sig_alg),
        (PP2_SUBTYPE_SSL_CIPHER, tls.cipher),
    ):
        data = _text(value)
        if data is not None and len(body) + 3 + len(data) <= _MAX_VALUE - 512:
            body += _tlv(kind, data)
    return _tlv(PP2_TYPE_SSL, bytes(body))


@functools.lru_cache(maxsize=256)
def _tlvs(tls: TLSDetails) -> bytes:
    """The TLV block; cached, since a proxy sees few distinct combinations (one SNI, a few
    suites, its two certificates, its few clients), so most connections only hash `tls`."""
    tlvs = b""
    alpn = _text(tls.alpn)
    if alpn is not None:
        tlvs += _tlv(PP2_TYPE_ALPN, alpn)
    sni = _text(tls.sni)
    if sni is not None:
        tlvs += _tlv(PP2_TYPE_AUTHORITY, sni)
    return tlvs + _ssl_tlv(tls)


def header_v2(
    src: SocketAddress,
    dst: SocketAddress,
    tls: TLSDetails | None = None,
    *,
    local: bool = False,
) -> bytes:
    """The binary v2 header: addresses (TCP4, TCP6, UNIX or UNSPEC), then the TLVs.

    `local`: the LOCAL command, for a connection the proxy makes on its own behalf (a health
    check); the receiver then uses the connection's real addresses, and no address is sent.
    """
    if local:
        return V2_SIGNATURE + bytes((_V2_LOCAL, _AF_UNSPEC)) + b"\0\0"
    family, addresses = _addresses_v2(src, dst)
    body = addresses if tls is None else addresses + _tlvs(tls)
    return V2_SIGNATURE + bytes((_V2_PROXY, family)) + len(body).to_bytes(2, "big") + body


def header(
    version: ProxyProtocol, src: SocketAddress, dst: SocketAddress, tls: TLSDetails | None
) -> bytes:
    """The header `proxy_protocol: version` sends (empty for `off`)."""
    if version == "v1":
        return header_v1(src, dst)
    if version == "v2":
        return header_v2(src, dst, tls)
    return b""
