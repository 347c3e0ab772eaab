"""Hostile or broken clients: each is closed and counted, and a canary connection never notices."""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import time

import pytest

from tests.conftest import SERVER_NAME
from tests.reliability.conftest import StartProxy
from tests.reliability.support import (
    AsyncBackend,
    Source,
    client_hello,
    closed_within,
    echo,
    figures,
    open_fds,
    plaintext_alert,
    rss_kib,
    wait_until,
)

FAST = {"handshake": 2, "connect": 2, "idle": 60, "drain": 5}


def _send_and_wait_close(host: str, port: int, data: bytes, timeout: float = 6.0) -> tuple[bool, bytes, float]:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(data)
        return closed_within(sock, timeout)


def _sslv2_hello() -> bytes:
    """An SSLv2-format ClientHello (the 2-byte header with the top bit set) offering TLS 1.2."""
    specs = bytes.fromhex("00c02b00c02f")  # ECDHE GCM suites as 3-byte SSLv2 cipher specs
    body = b"\x01\x03\x03" + struct.pack("!HHH", len(specs), 0, 16) + specs + os.urandom(16)
    return struct.pack("!H", 0x8000 | len(body)) + body


def _oversized_hello() -> bytes:
    """A ClientHello whose handshake header claims 200,000 bytes (OpenSSL's cap is 131,396)."""
    message = b"\x01" + (200_000).to_bytes(3, "big") + b"\x03\x03" + os.urandom(32)
    return b"\x16\x03\x01" + struct.pack("!H", len(message)) + message


@pytest.mark.parametrize(
    ("name", "make", "reason", "alert"),
    [
        ("plain-http", lambda ctx: b"GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n", "not_tls", None),
        ("sslv2-hello", lambda ctx: _sslv2_hello(), "no_shared_cipher", 40),
        ("oversized-hello", lambda ctx: _oversized_hello(), "other", 47),
        ("truncated-hello-then-eof", lambda ctx: client_hello(ctx)[:200], "client_eof", None),
    ],
)
def test_broken_hello_is_closed_and_counted(start_proxy: StartProxy, echo_server: AsyncBackend, canary_for, ctx: ssl.SSLContext, name: str, make, reason: str, alert: int | None) -> None:
    """Each broken opening gets its alert (where OpenSSL sends one) and a prompt close."""
    proxy = start_proxy(echo_server.address, timeouts=FAST)
    canary = canary_for(proxy)
    data = make(ctx)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(data)
        if name.endswith("then-eof"):
            sock.shutdown(socket.SHUT_WR)
        closed, seen, seconds = closed_within(sock, 6)
    print(f"{name}: closed={closed} after {seconds:.3f}s, answer={seen.hex()}")
    assert closed and seconds < 1.5
    assert plaintext_alert(seen) == ((2, alert) if alert is not None else None)
    proxy.wait_for_log(f"reason=handshake_error:{reason}")
    canary.check()
    assert echo_server.connections == 1, "no broken client may reach the backend"


def test_random_bytes_instead_of_hello(start_proxy: StartProxy, echo_server: AsyncBackend, canary_for) -> None:
    """40 seeded random openings: every one is closed within the handshake timeout and counted."""
    proxy = start_proxy(echo_server.address, timeouts=FAST)
    canary = canary_for(proxy)
    slowest = 0.0
    for seed in range(40):
        rng = random.Random(seed)
        data = rng.randbytes(rng.randint(1, 2048))
        closed, _, seconds = _send_and_wait_close(proxy.host, proxy.port, data)
        assert closed, f"seed {seed}: still open after 6s"
        slowest = max(slowest, seconds)
    log = proxy.wait_for_log("reason=handshake_error:", count=40)
    failures = log.count("reason=handshake_error:")
    print(f"40 random openings: slowest close {slowest:.3f}s, handshake_error lines {failures}, "
          f"not_tls {log.count('handshake_error:not_tls')}, timeout {log.count('handshake_error:timeout')}")
    assert failures == 40
    assert slowest < FAST["handshake"] + 2
    canary.check()
    assert echo_server.connections == 1


def test_slowloris_closed_at_handshake_timeout(start_proxy: StartProxy, echo_server: AsyncBackend, canary_for, ctx: ssl.SSLContext) -> None:
    """50 clients that connect and send nothing (or half a ClientHello) are closed at the timeout."""
    proxy = start_proxy(echo_server.address, timeouts=FAST)
    canary = canary_for(proxy)
    hello = client_hello(ctx)
    socks = []
    started = time.monotonic()
    for index in range(50):
        sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
        if index % 2:
            sock.sendall(hello[: len(hello) // 2])
        socks.append(sock)
    canary.check()  # service goes on while they hang
    for sock in socks:
        closed, _, _ = closed_within(sock, 8)
        assert closed
        sock.close()
    elapsed = time.monotonic() - started
    print(f"50 silent clients closed {elapsed:.2f}s after opening (handshake timeout {FAST['handshake']}s)")
    assert FAST["handshake"] - 0.5 < elapsed < FAST["handshake"] + 4
    proxy.wait_for_log("reason=handshake_error:timeout", count=50)
    canary.check()


def test_client_that_never_reads_is_bounded_by_backpressure(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """The backend offers 256 MiB to a client that never reads: the proxy stops reading the backend."""
    source = Source(256 * 1024 * 1024)
    with AsyncBackend(source) as backend:
        proxy = start_proxy(backend.address, timeouts=FAST | {"idle": 60})
        with ctx.wrap_socket(socket.create_connection((proxy.host, proxy.port), timeout=10), server_hostname=SERVER_NAME) as warm:
            assert len(warm.recv(65536)) > 0  # a first connection: OpenSSL and buffers allocated
        time.sleep(0.2)
        base_rss = rss_kib(proxy.pid)
        raw = socket.create_connection((proxy.host, proxy.port), timeout=10)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock = ctx.wrap_socket(raw, server_hostname=SERVER_NAME)
        peak = base_rss
        for _ in range(30):  # 3 s of not reading while the backend pushes
            time.sleep(0.1)
            peak = max(peak, rss_kib(proxy.pid))
        stalled_at = source.sent
        time.sleep(0.5)
        print(f"never-reading client: backend wrote {stalled_at / 2**20:.1f} MiB of 256 MiB then stalled "
              f"({source.sent - stalled_at} more bytes in 0.5s); proxy RSS {base_rss} -> peak {peak} KiB "
              f"(+{(peak - base_rss) / 1024:.1f} MiB)")
        assert stalled_at < 32 * 1024 * 1024, "backpressure did not stop the backend"
        assert source.sent == stalled_at
        assert peak - base_rss < 8 * 1024
        # It can still read everything afterwards, byte-exact in count.
        received = 0
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        assert received == 256 * 1024 * 1024
        sock.close()


def test_client_reset_mid_stream(start_proxy: StartProxy, canary_for, ctx: ssl.SSLContext) -> None:
    """A client that resets (SO_LINGER 0) mid-upload: counted as client_reset, backend released."""
    with AsyncBackend(echo) as backend:
        proxy = start_proxy(backend.address, timeouts=FAST)
        canary = canary_for(proxy)
        fds_before = open_fds(proxy.pid)
        for _ in range(10):
            raw = socket.create_connection((proxy.host, proxy.port), timeout=10)
            sock = ctx.wrap_socket(raw, server_hostname=SERVER_NAME)
            sock.sendall(os.urandom(512 * 1024))
            sock.recv(1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        log = proxy.wait_for_log("reason=client_reset", count=10)
        assert wait_until(lambda: open_fds(proxy.pid) == fds_before, 5)
        print(f"10 client resets: {log.count('reason=client_reset')} logged, proxy fds {fds_before} -> {open_fds(proxy.pid)}")
        canary.check()


def test_thousand_half_open_connections(start_proxy: StartProxy, echo_server: AsyncBackend, canary_for, ctx: ssl.SSLContext) -> None:
    """1,000 connections that stop mid-handshake at once; fds and RSS return to baseline."""
    proxy = start_proxy(echo_server.address, timeouts=FAST)
    canary = canary_for(proxy)
    base_rss, base_fds = figures(proxy.pid)
    hello = client_hello(ctx)
    socks = []
    for index in range(1000):
        sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
        sock.sendall(hello[: 100 + index % 300])
        socks.append(sock)
    assert wait_until(lambda: open_fds(proxy.pid) >= base_fds + 900, 10)
    peak_rss, peak_fds = figures(proxy.pid)
    canary.check()
    # Half of them vanish abruptly; the rest are left for the handshake timeout.
    for sock in socks[::2]:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert wait_until(lambda: open_fds(proxy.pid) <= base_fds, FAST["handshake"] + 8)
    for sock in socks[1::2]:
        sock.close()
    # The worker trims its heap once the burst is over (sampled every 0.5 s, checked every 5 s).
    wait_until(lambda: rss_kib(proxy.pid) - base_rss < 4 * 1024, 8, step=0.25)
    end_rss, end_fds = figures(proxy.pid)
    log = proxy.log()
    print(f"1000 half-open: fds {base_fds} -> {peak_fds} -> {end_fds}; RSS {base_rss} -> {peak_rss} -> {end_rss} KiB; "
          f"timeouts {log.count('handshake_error:timeout')}, client_eof {log.count('handshake_error:client_eof')}")
    assert end_fds <= base_fds  # no leak (the start-up count can include transient fds)
    assert end_rss - base_rss < 4 * 1024, "the heap was not given back after the burst"
    assert log.count("reason=handshake_error:timeout") + log.count("reason=handshake_error:client_eof") == 1000
    canary.check()
