"""TLS in memory: a client and a server SSLObject over BIOs, and a client for a relay connection
through a fake transport (the connection's backend side stays a real loopback socket)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fopproxy.certs import load_certificate_set
from fopproxy.config import TcpAddress, Timeouts, parse_config
from fopproxy.relay import OPEN, ClientConnection, Relay
from fopproxy.stats import Stats
from tests.conftest import SERVER_NAME, TLSFiles
from tests.support.backends import ThreadedBackend
from tests.support.proxy import client_context


@dataclass
class MemoryTLS:
    server: ssl.SSLObject
    client: ssl.SSLObject
    server_in: ssl.MemoryBIO
    server_out: ssl.MemoryBIO
    client_in: ssl.MemoryBIO
    client_out: ssl.MemoryBIO

    @property
    def bios(self) -> tuple[ssl.MemoryBIO, ...]:
        return (self.server_in, self.server_out, self.client_in, self.client_out)

    def to_server(self) -> None:
        """Move what the client wrote to the server's inbox."""
        self.server_in.write(self.client_out.read())

    def to_client(self) -> None:
        """Move what the server wrote to the client's inbox."""
        self.client_in.write(self.server_out.read())


def handshake_in_memory(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, rounds: int = 6) -> MemoryTLS:
    """Wrap both sides and run the full handshake by moving each flight across (`rounds` trips)."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    pair = MemoryTLS(
        server=server_ctx.wrap_bio(bios[0], bios[1], server_side=True),
        client=client_ctx.wrap_bio(bios[2], bios[3], server_hostname=SERVER_NAME),
        server_in=bios[0],
        server_out=bios[1],
        client_in=bios[2],
        client_out=bios[3],
    )
    for _ in range(rounds):
        for side in (pair.client, pair.server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        pair.to_server()
        pair.to_client()
    return pair


# ---- a relay connection driven without a client socket -----------------------------------------


class FakeTransport(asyncio.Transport):
    """The client side of a ClientConnection, in memory: records what the connection does.

    `buffered` plays a peer that does not read (what the kernel would leave queued); nothing
    calls the protocol back, the test does (`connection_lost`).
    """

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.peer = peer
        self.sent = bytearray()
        self.buffered = 0
        self.high = 64 * 1024
        self.eof = False
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.sent += data

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.high = high

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.high // 4, self.high

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer}.get(name, default)

    def take(self) -> bytes:
        """What the connection sent since the last take."""
        data = bytes(self.sent)
        self.sent.clear()
        return data


def deliver(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """Hand `data` to a buffered protocol the way a transport does: into its buffers, in turn."""
    while data:
        buffer = protocol.get_buffer(len(data))
        size = min(len(buffer), len(data))
        buffer[:size] = data[:size]
        protocol.buffer_updated(size)
        data = data[size:]


class MemoryClient:
    """A TLS client (SSLObject over memory BIOs) talking to a protocol through a FakeTransport."""

    def __init__(self, protocol: asyncio.BufferedProtocol, client_ctx: ssl.SSLContext) -> None:
        self.protocol = protocol
        self.transport = FakeTransport()
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = client_ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=SERVER_NAME)
        protocol.connection_made(self.transport)

    def pump(self) -> None:
        """Send what the client wrote; take in what the connection sent."""
        if self.outgoing.pending:
            deliver(self.protocol, self.outgoing.read())
        self.incoming.write(self.transport.take())

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.pump()
                continue
            self.pump()
            return
        raise AssertionError("the handshake did not finish")

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.pump()

    def tls_record(self, data: bytes) -> bytes:
        """Encrypt `data` and return its record without sending it."""
        self.tls.write(data)
        return self.outgoing.read()

    def received(self) -> bytes:
        """Plaintext the connection has sent so far (b"" once close_notify was read)."""
        self.incoming.write(self.transport.take())
        plain = b""
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            while chunk := self.tls.read(65536):
                plain += chunk
        return plain


def relay_for(
    tls_files: TLSFiles, backend: ThreadedBackend, loop: asyncio.AbstractEventLoop,
    timeouts: Timeouts | None = None, *, log_connections: bool = False,
) -> Relay:
    """A Relay on `loop` for the test certificates and `backend`, as a worker builds it."""
    config = parse_config(
        {
            "listen": "127.0.0.1:1",
            "backend": backend.address,
            "server_name": SERVER_NAME,
            "tls": {"certificates": tls_files.entries()},
        },
        Path("."),
    )
    certs = load_certificate_set(config.tls.certificates, config.server_name, config.tls.selection)
    assert isinstance(config.backend, TcpAddress)
    return Relay(loop, lambda: certs, config.backend, timeouts or Timeouts(), 100, Stats(), log_connections)


async def opened_connection(
    tls_files: TLSFiles, backend: ThreadedBackend, *, state: int = OPEN, **timeouts: float
) -> tuple[Relay, ClientConnection, MemoryClient]:
    """A relay on the running loop and one connection through its handshake, waited on (up to
    3 s) until it reaches `state`: OPEN once the backend dial succeeded."""
    loop = asyncio.get_running_loop()
    relay = relay_for(tls_files, backend, loop, Timeouts(**timeouts), log_connections=True)
    conn = relay.protocol_factory()
    client = MemoryClient(conn, client_context(tls_files.cafile))
    client.handshake()
    for _ in range(300):
        if conn.state == state:
            break
        await asyncio.sleep(0.01)
    assert conn.state == state
    return relay, conn, client
