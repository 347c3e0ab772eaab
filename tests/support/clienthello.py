"""A ClientHello parser of our own (RFC 8446 §4.1.2), independent of fopproxy and of ssl.

What a TLS server in a test saw the client offer: cipher suites, groups, versions and SNI, read
from the raw bytes before the server's TLS stack answers (peeked, so the handshake goes on).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

# IANA code points of the suites and groups the tests name, written literally.
SUITE_NAMES = {
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
    0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
    0xC023: "ECDHE-ECDSA-AES128-SHA256",
    0xC027: "ECDHE-RSA-AES128-SHA256",
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x00FF: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
}
GROUP_NAMES = {0x001D: "x25519", 0x0017: "secp256r1", 0x0018: "secp384r1", 0x0019: "secp521r1",
               0x001E: "x448", 0x0100: "ffdhe2048", 0x0101: "ffdhe3072"}
VERSION_NAMES = {0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}


@dataclass
class ClientHello:
    suites: list[str]
    groups: list[str]
    versions: list[str]
    sni: str | None


def _name(table: dict[int, str], code: int) -> str:
    return table.get(code, f"0x{code:04x}")


def parse_client_hello(record: bytes) -> ClientHello:
    """Parse one TLS record holding a whole ClientHello."""
    if len(record) < 9 or record[0] != 0x16 or record[5] != 0x01:
        raise ValueError("not a ClientHello record")
    body = record[9:]
    pos = 2 + 32  # legacy_version, random
    pos += 1 + body[pos]  # session id
    (length,) = struct.unpack_from("!H", body, pos)
    suites = [_name(SUITE_NAMES, c) for c in struct.unpack_from(f"!{length // 2}H", body, pos + 2)]
    pos += 2 + length
    pos += 1 + body[pos]  # compression methods
    groups: list[str] = []
    versions: list[str] = []
    sni = None
    if pos < len(body):
        (total,) = struct.unpack_from("!H", body, pos)
        pos += 2
        end = pos + total
        while pos < end:
            kind, size = struct.unpack_from("!HH", body, pos)
            data = body[pos + 4 : pos + 4 + size]
            pos += 4 + size
            if kind == 0x000A:  # supported_groups
                count = struct.unpack_from("!H", data)[0] // 2
                groups = [_name(GROUP_NAMES, g) for g in struct.unpack_from(f"!{count}H", data, 2)]
            elif kind == 0x002B:  # supported_versions
                versions = [_name(VERSION_NAMES, v)
                            for v in struct.unpack_from(f"!{data[0] // 2}H", data, 1)]
            elif kind == 0x0000 and len(data) > 5:  # server_name: list, type 0, name
                (name_length,) = struct.unpack_from("!H", data, 3)
                sni = data[5 : 5 + name_length].decode("ascii")
    return ClientHello(suites, groups, versions, sni)


def peek_client_hello(sock: socket.socket, timeout: float = 5.0) -> ClientHello | None:
    """Peek (MSG_PEEK) until one whole record is there and parse it; None if none arrives."""
    sock.settimeout(timeout)
    want = 5
    data = b""
    for _ in range(200):
        try:
            data = sock.recv(want, socket.MSG_PEEK | socket.MSG_WAITALL)
        except OSError:
            return None
        if len(data) < want:
            return None
        if want == 5:
            want = 5 + struct.unpack_from("!H", data, 3)[0]
            continue
        return parse_client_hello(data)
    return None
