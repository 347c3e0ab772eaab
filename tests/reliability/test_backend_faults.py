"""Backend faults: refused, reset, silent, slow, slow-reading, vanishing mid-stream."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading
import time

from tests.conftest import SERVER_NAME
from tests.reliability.conftest import StartProxy
from tests.reliability.support import (
    AsyncBackend,
    Sink,
    figures,
    reset,
    rss_kib,
    wait_until,
)
from tests.support.backends import free_port
from tests.support.proxy import read_to_end


def _connect(proxy, ctx: ssl.SSLContext) -> ssl.SSLSocket:  # type: ignore[no-untyped-def]
    return ctx.wrap_socket(socket.create_connection((proxy.host, proxy.port), timeout=20), server_hostname=SERVER_NAME, suppress_ragged_eofs=False)


def _wait_any(proxy, texts: tuple[str, ...], total: int, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    return wait_until(lambda: sum(proxy.log().count(t) for t in texts) >= total, timeout)


def _read_to_end(sock: ssl.SSLSocket) -> tuple[bytes, str]:
    """Read until the stream ends; says how: 'close_notify', 'eof-without-close_notify' or 'reset'."""
    return read_to_end(sock)


def test_backend_refused_closes_client_promptly(start_proxy: StartProxy, canary_for, echo_server: AsyncBackend, ctx: ssl.SSLContext) -> None:
    """Nothing listens on the backend port: every client is closed at once, without close_notify."""
    proxy = start_proxy(f"127.0.0.1:{free_port()}")
    times = []
    for _ in range(20):
        started = time.monotonic()
        with _connect(proxy, ctx) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            data, how = _read_to_end(sock)
        times.append(time.monotonic() - started)
        assert data == b"" and how != "close_notify"
    log = proxy.wait_for_log("reason=backend_connect:refused", count=20)
    print(f"refused backend: 20 clients closed, slowest {max(times):.3f}s, "
          f"{log.count('reason=backend_connect:refused')} logged")
    assert max(times) < 2.0


def test_backend_accepts_then_resets(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """The backend accepts and resets at once: the client sees a prompt end, no close_notify."""
    async def accept_and_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reset(writer)

    with AsyncBackend(accept_and_reset) as backend:
        proxy = start_proxy(backend.address)
        started = time.monotonic()
        with _connect(proxy, ctx) as sock:
            sock.sendall(b"hello")
            data, how = _read_to_end(sock)
        seconds = time.monotonic() - started
        print(f"backend reset: client saw {how} after {seconds:.3f}s")
        assert data == b"" and how != "close_notify"
        assert seconds < 2.0
        # Depending on timing the reset lands during the dial or just after it.
        assert _wait_any(proxy, ("reason=backend_reset", "reason=backend_connect:reset"), 1)


def test_backend_never_answers_hits_idle_timeout(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """The backend accepts and never answers: the connection ends at the idle timeout, not before."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    with AsyncBackend(silent) as backend:
        proxy = start_proxy(backend.address, timeouts={"handshake": 5, "connect": 2, "idle": 2, "drain": 5})
        with _connect(proxy, ctx) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            started = time.monotonic()
            data, how = _read_to_end(sock)
            seconds = time.monotonic() - started
        print(f"silent backend: closed by idle timeout after {seconds:.2f}s ({how})")
        assert data == b""
        assert 1.5 < seconds < 5.0
        proxy.wait_for_log("reason=idle_timeout")


def test_backend_answers_a_byte_at_a_time(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """300 bytes at 10 ms each (3 s) through a 1 s idle timeout: all arrive, in order, then close_notify."""
    answer = os.urandom(300)

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        for byte in answer:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write_eof()
        await reader.read()

    with AsyncBackend(dribble) as backend:
        proxy = start_proxy(backend.address, timeouts={"handshake": 5, "connect": 2, "idle": 1, "drain": 5})
        started = time.monotonic()
        with _connect(proxy, ctx) as sock:
            sock.sendall(b"go")
            data, how = _read_to_end(sock)
        print(f"byte-at-a-time backend: {len(data)} bytes in {time.monotonic() - started:.2f}s, ended by {how}")
        assert data == answer
        assert how == "close_notify"


def test_slow_reading_backend_bounds_proxy_memory(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """The client uploads 256 MiB to a backend that stalls, then reads slowly: proxy RSS stays flat."""
    size = 256 * 1024 * 1024
    sink = Sink(size, stall=2.0, chunk=256 * 1024, pause=0.002)
    block = os.urandom(1024 * 1024)
    with AsyncBackend(sink) as backend:
        proxy = start_proxy(backend.address, timeouts={"handshake": 5, "connect": 2, "idle": 60, "drain": 5})
        with _connect(proxy, ctx) as warm:  # allocate OpenSSL's and the loop's buffers first
            warm.sendall(b"x" * 65536)
        time.sleep(0.2)
        base = rss_kib(proxy.pid)
        sent = hashlib.sha256()
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(proxy.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        with _connect(proxy, ctx) as sock:
            for index in range(256):
                chunk = bytes([index]) + block[1:]
                sent.update(chunk)
                sock.sendall(chunk)
            digest = sock.recv(100).decode()
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
        print(f"256 MiB upload to a slow reader: {elapsed:.1f}s, proxy RSS {base} -> peak {peak[0]} KiB "
              f"(+{(peak[0] - base) / 1024:.2f} MiB)")
        assert sink.totals[-1] == size
        assert digest == sent.hexdigest()
        assert peak[0] - base < 4 * 1024
        assert elapsed < 120


def test_backend_vanishes_mid_stream(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """The backend resets after 1 MiB of its answer: the client sees the end at once, no close_notify."""
    async def half_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"a" * (1024 * 1024))
        await writer.drain()
        await asyncio.sleep(0.2)
        reset(writer)

    with AsyncBackend(half_then_reset) as backend:
        proxy = start_proxy(backend.address)
        with _connect(proxy, ctx) as sock:
            sock.sendall(b"go")
            started = time.monotonic()
            data, how = _read_to_end(sock)
            seconds = time.monotonic() - started
        print(f"backend gone mid-stream: client got {len(data)} bytes then {how} after {seconds:.2f}s")
        assert data == b"a" * (1024 * 1024)
        assert how == "eof-without-close_notify", "a truncated answer must not look complete"
        assert seconds < 5
        proxy.wait_for_log("reason=backend_reset")


def test_backend_faults_leave_no_fds_behind(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """200 connections to a backend that resets each: the proxy's fd count returns to its baseline."""
    async def accept_and_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reset(writer)

    with AsyncBackend(accept_and_reset) as backend:
        proxy = start_proxy(backend.address)
        base_rss, base_fds = figures(proxy.pid)
        for _ in range(200):
            with _connect(proxy, ctx) as sock:
                sock.sendall(b"x")
                _read_to_end(sock)
        assert _wait_any(proxy, ("reason=backend_reset", "reason=backend_connect:reset"), 200)
        time.sleep(0.2)
        rss, fds = figures(proxy.pid)
        print(f"200 backend resets: fds {base_fds} -> {fds}, RSS {base_rss} -> {rss} KiB")
        assert fds <= base_fds  # no leak (the start-up count can include transient fds)
