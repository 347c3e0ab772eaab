"""The relay in-process on uvloop, real loopback sockets and a real TLS client.

The integration tests drive the real `fopproxy` process; these look inside one connection where
the process cannot show it (what a quiet relay keeps allocated).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
from pathlib import Path

import uvloop

from fopproxy.config import Timeouts
from fopproxy.reasons import DETAILED, CloseReason
from fopproxy.relay import OPEN
from tests.conftest import SERVER_NAME, TLSFiles
from tests.support.backends import ThreadedBackend
from tests.support.memtls import FakeTransport, MemoryClient, deliver, opened_connection, relay_for
from tests.support.proxy import client_context


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
        relay = relay_for(tls_files, echo_backend, loop)
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


# ---- one connection in memory: a fake client transport, a real loopback backend ---------------


def test_readme_reason_list_is_the_close_reason_enum() -> None:
    """README's `reason` list and CloseReason name the same reasons, `:<detail>` on the same ones."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sentence = re.search(r"`reason` is one of (.+?)\. Keys", readme, re.S)
    assert sentence is not None, "README no longer lists the close reasons"
    listed = re.findall(r"`([a-z_]+)(:<[^`]+>)?`", sentence.group(1))
    assert {name for name, _ in listed} == {reason.value for reason in CloseReason}
    assert {name for name, detail in listed if detail} == {reason.value for reason in DETAILED}


async def _echoed(client: MemoryClient, size: int) -> bytes:
    got = b""
    for _ in range(500):
        got += client.received()
        if len(got) >= size:
            break
        await asyncio.sleep(0.01)
    return got


async def test_connection_relays_and_a_clean_close_is_done(tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """Echo both ways, close_notify from the client: the backend finishes, reason `done`."""
    relay, conn, client = await opened_connection(tls_files, echo_backend)
    payload = os.urandom(100_000)
    client.send(payload)
    assert await _echoed(client, len(payload)) == payload
    with contextlib.suppress(ssl.SSLWantReadError):
        client.tls.unwrap()
    client.pump()
    for _ in range(200):  # the backend sees the half-close, answers with EOF: close_notify back
        if client.transport.closed:
            break
        await asyncio.sleep(0.01)
    assert client.transport.closed and not client.transport.aborted
    conn.connection_lost(None)
    assert conn.close_reason == "done"
    assert not relay.active
    assert (relay.stats.bytes_to_backend, relay.stats.bytes_to_client) == (len(payload), len(payload))


async def test_idle_timeout_then_a_zero_window_is_reset_after_the_close_bound(tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """tick(): idle closes with close_notify; a client that takes nothing is reset at `close`."""
    relay, conn, client = await opened_connection(tls_files, echo_backend, idle=2, close=3)
    now = relay.time()
    assert not conn.tick(now, 2, None)  # activity noticed
    client.transport.buffered = 200_000  # from here the client reads nothing
    conn.tick(now + 1, 2, None)
    assert conn.state == OPEN
    conn.tick(now + 2.5, 2, None)
    assert conn.close_reason == "idle_timeout"
    assert client.transport.closed and not client.transport.aborted
    assert client.transport.eof  # close_notify, then FIN
    conn.tick(now + 2.6, 2, None)
    assert not client.transport.aborted  # still within timeouts.close
    conn.tick(relay.time() + 3.1, 2, None)
    assert client.transport.aborted
    conn.connection_lost(None)
    assert conn.close_reason == "idle_timeout"  # the reset keeps the reason the close was for
    assert not relay.active


async def test_handshake_deadline_and_a_bad_record(tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """A handshake past its deadline: handshake_error:timeout; a forged record: tls_error, reset backend."""
    loop = asyncio.get_running_loop()
    relay = relay_for(tls_files, echo_backend, loop, Timeouts(handshake=1), log_connections=True)
    slow = relay.protocol_factory()
    slow.connection_made(FakeTransport())
    slow.tick(relay.time() + 1.5, 60, None)
    assert slow.close_reason == "handshake_error:timeout"
    assert relay.stats.handshake_errors["timeout"] == 1

    _, conn, client = await opened_connection(tls_files, echo_backend)
    record = bytearray(client.tls_record(b"x" * 100))
    record[-1] ^= 1  # the tag no longer matches
    deliver(conn, bytes(record))
    assert conn.close_reason.startswith("tls_error:")  # OpenSSL's reason, e.g. bad_record_mac
    assert client.transport.closed


async def test_abort_is_one_close_for_every_reason(tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """abort_all resets both sides with the reason it was given."""
    relay, conn, client = await opened_connection(tls_files, echo_backend)
    relay.abort_all("drain_timeout")
    assert client.transport.aborted and conn.close_reason == "drain_timeout"
    conn.connection_lost(None)
    assert not relay.active


def test_dial_steps_its_coroutine_and_cancels_where_it_waits() -> None:
    """Dial (the backend dial without a Task): it runs to the first await at once, resumes when
    that future is done, and `cancel` raises CancelledError at the await, as Task.cancel does."""
    from fopproxy.relay import Dial

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        seen: list[object] = []

        async def waits(future: asyncio.Future[int]) -> None:
            seen.append("started")
            try:
                seen.append(await future)
                await asyncio.sleep(0)  # a bare yield: stepped again on the next pass
                seen.append("done")
            except asyncio.CancelledError:
                seen.append("cancelled")

        first: asyncio.Future[int] = loop.create_future()
        Dial(waits(first), loop)
        assert seen == ["started"]
        first.set_result(7)
        for _ in range(5):
            await asyncio.sleep(0)
        assert seen == ["started", 7, "done"]

        seen.clear()
        second: asyncio.Future[int] = loop.create_future()
        dial = Dial(waits(second), loop)
        dial.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert seen == ["started", "cancelled"]
        dial.cancel()  # finished: nothing to cancel, no error

    uvloop.run(scenario())


def test_backend_dial_past_timeouts_connect_is_cancelled_and_counted(tls_files: TLSFiles) -> None:
    """A backend whose accept queue is full never answers the SYN: past `timeouts.connect` the
    dial is cancelled, counted as backend_connect:timeout, and the client is closed."""
    from types import SimpleNamespace

    from fopproxy.relay import CLOSED

    async def scenario() -> None:
        listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):  # fill the accept queue: later SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.2)
        try:
            backend = SimpleNamespace(address=f"127.0.0.1:{port}")
            relay, conn, _ = await opened_connection(
                tls_files, backend, state=CLOSED, connect=0.4  # type: ignore[arg-type]
            )
            assert relay.stats.backend_connect_errors["timeout"] == 1
            assert conn.close_reason == "backend_connect:timeout"
        finally:
            for filler in fillers:
                filler.close()
            listener.close()

    uvloop.run(scenario())
