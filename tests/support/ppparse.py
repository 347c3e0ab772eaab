"""A PROXY protocol v1/v2 reader written from the spec (proxy-protocol.txt), not from our encoder.

It shares no code or constants with fopproxy.proxyproto on purpose: a test that decodes our
header with this reader is evidence about the wire format, not about our own tables. It is also
the backend side of the integration tests: `read_header(sock)` consumes exactly the header.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field


class ProxyHeaderError(ValueError):
    """The bytes are not a well-formed PROXY header."""


@dataclass
class ProxyHeader:
    version: int
    command: str  # "PROXY" or "LOCAL"
    family: str  # "TCP4", "TCP6", "UNIX", "UNKNOWN" (v1) / "UNSPEC" (v2)
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    tlvs: list[tuple[int, bytes]] = field(default_factory=list)
    raw: bytes = b""

    def tlv(self, kind: int) -> bytes | None:
        return next((value for t, value in self.tlvs if t == kind), None)

    @property
    def authority(self) -> str | None:
        value = self.tlv(0x02)
        return value.decode() if value is not None else None

    @property
    def ssl(self) -> SslTlv | None:
        value = self.tlv(0x20)
        return parse_ssl_tlv(value) if value is not None else None


@dataclass
class SslTlv:
    client: int
    verify: int
    subs: dict[int, bytes]

    @property
    def is_ssl(self) -> bool:
        return bool(self.client & 1)

    @property
    def cert_conn(self) -> bool:
        return bool(self.client & 2)

    @property
    def cert_sess(self) -> bool:
        return bool(self.client & 4)

    def text(self, kind: int) -> str | None:
        value = self.subs.get(kind)
        return value.decode() if value is not None else None

    # Sub-type numbers from the spec, section 2.2.5.
    @property
    def version(self) -> str | None:
        return self.text(0x21)

    @property
    def cn(self) -> str | None:
        return self.text(0x22)

    @property
    def cipher(self) -> str | None:
        return self.text(0x23)

    @property
    def sig_alg(self) -> str | None:
        return self.text(0x24)

    @property
    def key_alg(self) -> str | None:
        return self.text(0x25)


def _walk_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    found = []
    i = 0
    while i < len(data):
        if len(data) - i < 3:
            raise ProxyHeaderError(f"TLV header cut short at offset {i}")
        kind, length = struct.unpack_from("!BH", data, i)
        i += 3
        if i + length > len(data):
            raise ProxyHeaderError(f"TLV 0x{kind:02x} claims {length} bytes, {len(data) - i} left")
        found.append((kind, data[i : i + length]))
        i += length
    return found


def parse_ssl_tlv(value: bytes) -> SslTlv:
    if len(value) < 5:
        raise ProxyHeaderError("PP2_TYPE_SSL shorter than client + verify")
    client, verify = struct.unpack_from("!BI", value, 0)
    return SslTlv(client, verify, dict(_walk_tlvs(value[5:])))


V2_MAGIC = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])


def _parse_v1(line: bytes) -> ProxyHeader:
    if not line.endswith(b"\r\n") or len(line) > 107:
        raise ProxyHeaderError(f"v1 line not CRLF-terminated within 107 bytes: {line!r}")
    words = line[:-2].decode("ascii").split(" ")
    if words[0] != "PROXY":
        raise ProxyHeaderError(f"v1 line does not start with PROXY: {line!r}")
    if words[1:2] == ["UNKNOWN"]:
        return ProxyHeader(1, "PROXY", "UNKNOWN", raw=line)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"v1 line has not 6 fields: {line!r}")
    _, fam, src, dst, sport, dport = words
    kind = socket.AF_INET if fam == "TCP4" else socket.AF_INET6
    for address in (src, dst):
        socket.inet_pton(kind, address)  # raises OSError for a malformed address
    for port in (sport, dport):
        if not port.isdigit() or (len(port) > 1 and port[0] == "0") or int(port) > 65535:
            raise ProxyHeaderError(f"bad v1 port {port!r}")
    return ProxyHeader(1, "PROXY", fam, src, dst, int(sport), int(dport), raw=line)


def _parse_v2(head: bytes, body: bytes) -> ProxyHeader:
    ver_cmd, fam = head[12], head[13]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"v2 version nibble is {ver_cmd >> 4}")
    command = {0: "LOCAL", 1: "PROXY"}.get(ver_cmd & 0x0F)
    if command is None:
        raise ProxyHeaderError(f"v2 command {ver_cmd & 0x0F} unknown")
    raw = head + body
    if command == "LOCAL":
        return ProxyHeader(2, "LOCAL", "UNSPEC", tlvs=_walk_tlvs(body), raw=raw)
    if fam == 0x11:
        if len(body) < 12:
            raise ProxyHeaderError("TCP4 address block cut short")
        src = socket.inet_ntop(socket.AF_INET, body[0:4])
        dst = socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
        return ProxyHeader(2, command, "TCP4", src, dst, sport, dport, _walk_tlvs(body[12:]), raw)
    if fam == 0x21:
        if len(body) < 36:
            raise ProxyHeaderError("TCP6 address block cut short")
        src = socket.inet_ntop(socket.AF_INET6, body[0:16])
        dst = socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
        return ProxyHeader(2, command, "TCP6", src, dst, sport, dport, _walk_tlvs(body[36:]), raw)
    if fam == 0x31:
        if len(body) < 216:
            raise ProxyHeaderError("UNIX address block cut short")
        src = body[0:108].split(b"\0", 1)[0].decode()
        dst = body[108:216].split(b"\0", 1)[0].decode()
        return ProxyHeader(2, command, "UNIX", src, dst, tlvs=_walk_tlvs(body[216:]), raw=raw)
    if fam == 0x00:
        return ProxyHeader(2, command, "UNSPEC", tlvs=_walk_tlvs(body), raw=raw)
    raise ProxyHeaderError(f"v2 family/transport byte 0x{fam:02x} not handled")


def parse(data: bytes) -> tuple[ProxyHeader, bytes]:
    """(header, the bytes after it) from a buffer that starts with a PROXY header."""
    if data.startswith(V2_MAGIC):
        if len(data) < 16:
            raise ProxyHeaderError("v2 fixed header cut short")
        (length,) = struct.unpack("!H", data[14:16])
        if len(data) < 16 + length:
            raise ProxyHeaderError(f"v2 header claims {length} bytes, {len(data) - 16} there")
        return _parse_v2(data[:16], data[16 : 16 + length]), data[16 + length :]
    end = data.find(b"\r\n")
    if end < 0:
        raise ProxyHeaderError("no CRLF: not a v1 header")
    return _parse_v1(data[: end + 2]), data[end + 2 :]


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    chunks = b""
    while len(chunks) < count:
        part = sock.recv(count - len(chunks))
        if not part:
            raise ProxyHeaderError(f"EOF after {len(chunks)} of {count} header bytes")
        chunks += part
    return chunks


def read_header(sock: socket.socket) -> ProxyHeader:
    """Consume exactly one header from a connected socket (the rest stays unread)."""
    first = _recv_exactly(sock, 12)
    if first == V2_MAGIC:
        fixed = first + _recv_exactly(sock, 4)
        (length,) = struct.unpack("!H", fixed[14:16])
        return _parse_v2(fixed, _recv_exactly(sock, length))
    line = first
    while not line.endswith(b"\r\n"):
        if len(line) >= 107:
            raise ProxyHeaderError(f"v1 line longer than 107 bytes: {line!r}")
        line += _recv_exactly(sock, 1)
    return _parse_v1(line)
