"""A client and a server SSLObject talking over memory BIOs in this process: no sockets."""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass

from tests.conftest import SERVER_NAME


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
