"""A bounded soak: mixed good and bad traffic for FOPPROXY_SOAK_SECONDS (20 s when unset; CI sets
60), then no growth in RSS or open descriptors once the load has stopped."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import struct
import time

import pytest

from tests.conftest import SERVER_NAME
from tests.reliability.conftest import StartProxy
from tests.reliability.support import AsyncBackend, echo, figures, open_fds, rss_kib, wait_until

SOAK_SECONDS = float(os.environ.get("FOPPROXY_SOAK_SECONDS", "20"))
CLIENTS = 24


async def _good(host: str, port: int, ctx: ssl.SSLContext, rng: random.Random) -> str:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=SERVER_NAME)
    payload = rng.randbytes(rng.choice([100, 4096, 65536, 300_000]))
    writer.write(payload)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
    writer.close()
    return "good" if echoed == payload else "CORRUPT"


async def _garbage(host: str, port: int, rng: random.Random) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(rng.randbytes(rng.randint(1, 600)))
    await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return "garbage"


async def _reset_mid_stream(host: str, port: int, ctx: ssl.SSLContext, rng: random.Random) -> str:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=SERVER_NAME)
    writer.write(rng.randbytes(200_000))
    await reader.read(1000)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    return "reset"


async def _abandoned_handshake(host: str, port: int, rng: random.Random) -> str:
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(40))
    await asyncio.sleep(rng.uniform(0.05, 0.5))
    writer.close()
    return "abandoned"


async def _client(host: str, port: int, ctx: ssl.SSLContext, seed: int, until: float, tally: dict[str, int]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        pick = rng.random()
        try:
            if pick < 0.6:
                outcome = await _good(host, port, ctx, rng)
            elif pick < 0.75:
                outcome = await _garbage(host, port, rng)
            elif pick < 0.9:
                outcome = await _reset_mid_stream(host, port, ctx, rng)
            else:
                outcome = await _abandoned_handshake(host, port, rng)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
            outcome = f"error:{type(exc).__name__}"
        tally[outcome] = tally.get(outcome, 0) + 1


async def _load(host: str, port: int, ctx: ssl.SSLContext, seconds: float, seed: int) -> dict[str, int]:
    tally: dict[str, int] = {}
    until = time.monotonic() + seconds
    await asyncio.gather(*(_client(host, port, ctx, seed + i, until, tally) for i in range(CLIENTS)))
    return tally


async def _settle(pid: int, base_fds: int) -> tuple[int, int]:
    """Wait for the connections to close and one heap-trim period; return (RSS, fds)."""
    await asyncio.to_thread(wait_until, lambda: open_fds(pid) <= base_fds, 15)
    await asyncio.sleep(6)
    return figures(pid)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS * 3 + 120)
async def test_soak_mixed_traffic_no_growth(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """Good echoes, garbage, resets and abandoned handshakes from 24 clients; then RSS/fds flat."""
    with AsyncBackend(echo) as backend:
        proxy = start_proxy(backend.address, timeouts={"handshake": 2, "connect": 2, "idle": 30, "drain": 5})
        start_rss, base_fds = figures(proxy.pid)
        # Warm-up: a short burst of the same mix, so first-use allocations are in the baseline.
        await _load(proxy.host, proxy.port, ctx, min(5.0, SOAK_SECONDS / 4), seed=1000)
        base_rss, base_fds_after = await _settle(proxy.pid, base_fds)
        started = time.monotonic()
        samples: list[int] = []
        load = asyncio.ensure_future(_load(proxy.host, proxy.port, ctx, SOAK_SECONDS, seed=0))
        while not load.done():
            samples.append(rss_kib(proxy.pid))
            await asyncio.sleep(1)
        tally = await load
        elapsed = time.monotonic() - started
        end_rss, end_fds = await _settle(proxy.pid, base_fds)
    total = sum(tally.values())
    print(f"soak {SOAK_SECONDS:.0f}s: {total} connections in {elapsed:.1f}s ({total / elapsed:.0f}/s) {sorted(tally.items())}; "
          f"RSS start {start_rss}, after warm-up {base_rss}, peak {max(samples)}, after load {end_rss} KiB "
          f"({(end_rss - base_rss) / 1024:+.2f} MiB); fds {base_fds} -> {base_fds_after} -> {end_fds}")
    assert tally.get("CORRUPT", 0) == 0
    assert tally.get("good", 0) > 0
    bad = {k: v for k, v in tally.items() if k.startswith("error:") and k != "error:ConnectionResetError"}
    assert sum(bad.values()) <= total * 0.01, bad
    assert end_fds <= base_fds  # no leak (the start-up count can include transient fds)
    assert end_rss - base_rss < 6 * 1024, "RSS grew across the soak"
    assert proxy.proc.poll() is None
