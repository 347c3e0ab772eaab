"""The metrics listener's own limits over loopback: the cap lets a probe in, every stage has a deadline."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.registry import CollectorRegistry

from fopproxy.config import TcpAddress
from fopproxy.metrics import http
from fopproxy.metrics.http import MetricsListener


async def get(port: int, path: str) -> tuple[float, bytes]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return time.monotonic() - started, answer


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def start(limit: int = http.MAX_CLIENTS) -> tuple[MetricsListener, int]:
    listener = await MetricsListener.start(TcpAddress("127.0.0.1", 0), CollectorRegistry(), lambda: True, limit=limit)
    return listener, listener.server.sockets[0].getsockname()[1]


async def test_a_full_listener_resets_the_oldest_waiting_client_for_a_new_one() -> None:
    """At the cap, a new connection gets in and the oldest one without a request head goes."""
    listener, port = await start(limit=3)
    try:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.05)  # let the listener accept all three before the probe
        _, answer = await get(port, "/healthz")
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert await closed(idle[0][0], 2)  # the oldest made room
        assert not await closed(idle[2][0], 0.2)  # the others still wait for their head
        assert len(listener.clients.open) <= 3
        for _, writer in idle:
            writer.close()
    finally:
        await listener.close()


async def test_a_request_head_must_arrive_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that trickles its head is reset at the head deadline, not served."""
    monkeypatch.setattr(http, "HEAD_TIMEOUT", 0.3)
    listener, port = await start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hea")
        started = time.monotonic()
        assert await closed(reader, 3)
        assert 0.25 < time.monotonic() - started < 2
        writer.close()
    finally:
        await listener.close()


async def test_healthz_does_not_wait_for_a_slow_scrape() -> None:
    """With answers offloaded (the supervisor), /healthz is answered while /readyz is still computing."""
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_ready() -> bool:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return True

    with ThreadPoolExecutor(1) as pool:
        listener = await MetricsListener.start(
            TcpAddress("127.0.0.1", 0), CollectorRegistry(), slow_ready, offload=pool
        )
        port = listener.server.sockets[0].getsockname()[1]
        try:
            slow = asyncio.ensure_future(get(port, "/readyz"))
            await asyncio.sleep(0.1)
            took, answer = await get(port, "/healthz")
            assert answer.startswith(b"HTTP/1.1 200 OK") and took < 1
            assert not slow.done()
            release.set()
            _, answer = await slow
            assert answer.startswith(b"HTTP/1.1 200 OK")
        finally:
            await listener.close()
