"""Lifecycle under load: SIGTERM drains in-flight transfers, SIGHUP drops nothing, a killed worker
is replaced while the port keeps serving."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.conftest import SERVER_NAME
from tests.reliability.conftest import StartProxy
from tests.reliability.support import AsyncBackend, Canary, wait_until
from tests.support.proxy import ProxyProcess

CHUNK = 32 * 1024
CHUNKS = 64  # 2 MiB per transfer, paced over about 3 s


async def _paced_transfer(host: str, port: int, ctx: ssl.SSLContext, seed: int, started: asyncio.Event | None = None) -> bool:
    """Send 2 MiB in paced chunks through the echo backend; True when all of it came back intact."""
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=SERVER_NAME)
    sent = hashlib.sha256()
    received = hashlib.sha256()

    async def read_all() -> None:
        remaining = CHUNK * CHUNKS
        while remaining:
            data = await reader.read(min(65536, remaining))
            if not data:
                return
            received.update(data)
            remaining -= len(data)

    reading = asyncio.ensure_future(read_all())
    for index in range(CHUNKS):
        chunk = (seed * 1000 + index).to_bytes(4, "big") * (CHUNK // 4)
        sent.update(chunk)
        writer.write(chunk)
        await writer.drain()
        if index == 0 and started is not None:
            started.set()
        await asyncio.sleep(0.05)
    await asyncio.wait_for(reading, 60)
    writer.close()
    return sent.digest() == received.digest()


async def test_sigterm_drains_50_in_flight_transfers(start_proxy: StartProxy, echo_server: AsyncBackend, ctx: ssl.SSLContext) -> None:
    """SIGTERM mid-transfer: new connections are refused, all 50 finish byte-exact, exit 0."""
    proxy = start_proxy(echo_server.address, timeouts={"handshake": 5, "connect": 2, "idle": 60, "drain": 20})
    events = [asyncio.Event() for _ in range(50)]
    transfers = [asyncio.ensure_future(_paced_transfer(proxy.host, proxy.port, ctx, i, events[i])) for i in range(50)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
    signaled = time.monotonic()
    proxy.signal(signal.SIGTERM)
    # Logged right after the listener closed: from then on a new client must be refused.
    await asyncio.to_thread(proxy.wait_for_log, "draining 50 open connections")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=2).close()
    results = await asyncio.gather(*transfers)
    code = await asyncio.to_thread(proxy.proc.wait, 25)
    elapsed = time.monotonic() - signaled
    log = proxy.log()
    print(f"SIGTERM with 50 transfers in flight: {results.count(True)}/50 byte-exact, exit {code} "
          f"{elapsed:.1f}s after the signal (drain limit 20s)")
    assert all(results)
    assert code == 0
    assert elapsed < 20
    assert "draining 50 open connections" in log
    assert "drain_timeout" not in log
    assert log.count("reason=done") == 50


async def test_sighup_during_load_drops_nothing(start_proxy: StartProxy, echo_server: AsyncBackend, ctx: ssl.SSLContext) -> None:
    """Five SIGHUPs (certificate reloads) while 20 transfers stream: every byte arrives."""
    proxy = start_proxy(echo_server.address)
    transfers = [asyncio.ensure_future(_paced_transfer(proxy.host, proxy.port, ctx, i)) for i in range(20)]
    fresh = []
    for count in range(1, 6):
        proxy.signal(signal.SIGHUP)
        # Each reload is done (and logged) while the transfers still run; the next one follows.
        await asyncio.to_thread(proxy.wait_for_log, "SIGHUP: reloading certificates", count=count)
        fresh.append(asyncio.ensure_future(_paced_transfer(proxy.host, proxy.port, ctx, 99)))
    unfinished = sum(not t.done() for t in transfers)
    results = await asyncio.gather(*transfers, *fresh)
    log = proxy.log()
    assert unfinished == len(transfers), "the reloads must land while every transfer streams"
    print(f"5 SIGHUPs during 25 transfers: {results.count(True)}/25 byte-exact; "
          f"{log.count('reason=done')} clean closes, {log.count('client_reset')} resets")
    assert all(results)
    assert proxy.proc.poll() is None
    assert "ERROR" not in log


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_killed_worker_is_replaced_and_port_keeps_serving(start_proxy: StartProxy, echo_server: AsyncBackend, ctx: ssl.SSLContext) -> None:
    """`workers: 2`, one worker SIGKILLed: every connection after its death is served; it is replaced."""
    proxy: ProxyProcess = start_proxy(echo_server.address, workers=2)
    assert wait_until(lambda: len(_children(proxy.pid)) == 2, 10)
    before = _children(proxy.pid)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: _gone(victim), 5)
    served = 0
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # the replacement starts meanwhile
        canary = Canary(proxy.host, proxy.port, ctx)
        canary.check(4096)
        canary.close()
        served += 1
    log = proxy.wait_for_log("listening on", count=3)
    after = _children(proxy.pid)
    assert "starting a new one" in log
    assert len(after) == 2 and victim not in after
    for _ in range(20):
        canary = Canary(proxy.host, proxy.port, ctx)
        canary.check(4096)
        canary.close()
    print(f"worker {victim} killed: {served} connections served in the 3s after, workers {before} -> {after}")
    assert proxy.proc.poll() is None
