"""The relay in-process on uvloop, real loopback sockets and a real TLS client.

The integration tests drive the real `fopproxy` process; these look inside one connection where
the process cannot show it (what a quiet relay keeps allocated).
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import uvloop

from fopproxy.certs import load_certificate_set
from fopproxy.config import TcpAddress, Timeouts, parse_config
from fopproxy.relay import OPEN, Relay
from fopproxy.stats import Stats
from tests.conftest import SERVER_NAME, TLSFiles
from tests.support.backends import ThreadedBackend
from tests.support.proxy import client_context


def _relay_for(tls_files: TLSFiles, backend: ThreadedBackend, loop: asyncio.AbstractEventLoop) -> Relay:
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
    return Relay(loop, lambda: certs, config.backend, Timeouts(), 100, Stats(), False)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> None:
    payload = os.urandom(size)
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(size), 10) == payload


def test_quiet_relay_frees_its_bio_buffers_and_keeps_relaying(
    tls_files: TLSFiles, echo_backend: ThreadedBackend
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        relay = _relay_for(tls_files, echo_backend, loop)
        releaser = relay.bio_releaser
        assert releaser is not None
        server = await loop.create_server(relay.protocol_factory, "127.0.0.1", 0)
        sock: socket.socket = server.sockets[0]
        port = sock.getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(tls_files.cafile), server_hostname=SERVER_NAME
        )
        try:
            for _ in range(3):
                await _exchange(reader, writer, 64 * 1024)
                (conn,) = relay.active
                assert conn.state == OPEN
                assert releaser.allocated(conn.pipe.incoming) > 0
                assert releaser.allocated(conn.pipe.outgoing) > 0
                relay._sweep()  # notices the bytes moved since the last sweep: keeps the buffers
                assert releaser.allocated(conn.pipe.outgoing) > 0
                relay._sweep()  # quiet for a whole sweep: buffers freed
                assert releaser.allocated(conn.pipe.incoming) == 0
                assert releaser.allocated(conn.pipe.outgoing) == 0
            # and the freed connection relays again, byte-exact, in both directions
            await _exchange(reader, writer, 300 * 1024)
        finally:
            writer.close()
            relay.abort_all("drain_timeout")
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
