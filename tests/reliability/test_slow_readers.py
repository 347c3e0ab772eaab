"""Clients that never read: a closing one gives its slot back, a stalled one holds one buffer's worth.

Both bugs come from the same peer: a client that sends its request and then keeps a zero TCP
window while the backend streams the answer (issue 13, items 1 and 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SERVER_NAME
from tests.reliability.conftest import StartProxy
from tests.reliability.support import (
    AsyncBackend,
    client_hello,
    closed_within,
    plaintext_alert,
    rss_kib,
    wait_until,
)
from tests.support.backends import free_port

# The bound documented for timeouts.close (config/proxy.yaml) when the key is not set.
DEFAULT_CLOSE = 5.0


class Stream:
    """Backend that streams up to `limit` bytes per connection as fast as the proxy takes them."""

    def __init__(self, limit: int = 64 * 1024 * 1024) -> None:
        self.limit = limit
        self.block = bytes(64 * 1024)
        self.total = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = 0
        while sent < self.limit:
            writer.write(self.block)
            await writer.drain()
            sent += len(self.block)
            self.total += len(self.block)
        await reader.read()


def metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not exported")


def stalled_client(host: str, port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS client that sends a request and then never reads (a small receive window)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect((host, port))
    sock = ctx.wrap_socket(raw, server_hostname=SERVER_NAME)
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: api\r\n\r\n")
    return sock


def test_never_reading_clients_give_their_slots_back(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """idle 2 s, max_connections 3: three never-reading clients are reset and new clients served."""
    metrics_port = free_port()
    with AsyncBackend(Stream()) as backend:
        proxy = start_proxy(
            backend.address, max_connections=3, metrics={"listen": f"127.0.0.1:{metrics_port}"},
            timeouts={"handshake": 2, "connect": 2, "idle": 2, "drain": 5},
        )
        stalled = [stalled_client(proxy.host, proxy.port, ctx) for _ in range(3)]
        try:
            assert wait_until(lambda: metric(metrics_port, "fopproxy_connections_active") == 3, 10)
            started = time.monotonic()
            freed = wait_until(lambda: metric(metrics_port, "fopproxy_connections_active") == 0, 20, 0.2)
            seconds = time.monotonic() - started
            print(f"never-reading clients: slots freed {seconds:.1f} s after the last one was served "
                  f"(idle 2 s + close bound {DEFAULT_CLOSE:.0f} s)")
            assert freed, "the closing connections kept their slots"
            assert seconds < 2 + DEFAULT_CLOSE + 3
            # A new client is served again, and reads its answer.
            with ctx.wrap_socket(socket.create_connection((proxy.host, proxy.port), timeout=10),
                                 server_hostname=SERVER_NAME) as fresh:
                fresh.sendall(b"GET /stream HTTP/1.1\r\nHost: api\r\n\r\n")
                assert len(fresh.recv(65536)) > 0
            log = proxy.wait_for_log("reason=idle_timeout", count=3)  # the lines are batched
            assert "Traceback" not in log
        finally:
            for sock in stalled:
                with contextlib.suppress(OSError):
                    sock.close()


def test_stalled_connections_hold_one_buffer_each(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """200 never-reading clients while the backend streams: RSS growth per connection <= 96 KiB."""
    count = 200
    stream = Stream()
    with AsyncBackend(stream) as backend:
        proxy = start_proxy(backend.address, timeouts={"handshake": 5, "connect": 2, "idle": 120, "drain": 5})
        for _ in range(3):  # warm: OpenSSL, the shared read buffer and the allocator's arenas
            with ctx.wrap_socket(socket.create_connection((proxy.host, proxy.port), timeout=10),
                                 server_hostname=SERVER_NAME) as warm:
                assert len(warm.recv(65536)) > 0
        time.sleep(0.5)
        before = rss_kib(proxy.pid)
        stalled: list[ssl.SSLSocket] = []
        try:
            for _ in range(count):
                stalled.append(stalled_client(proxy.host, proxy.port, ctx))
            # Stalled: the backend has written nothing more for a whole second.
            last = -1
            deadline = time.monotonic() + 60
            while stream.total != last and time.monotonic() < deadline:
                last = stream.total
                time.sleep(1.0)
            after = rss_kib(proxy.pid)
            per_connection = (after - before) / count
            print(f"{count} stalled connections: backend wrote {stream.total / 2**20:.1f} MiB, proxy RSS "
                  f"{before} -> {after} KiB, {per_connection:.1f} KiB per stalled connection")
            assert stream.total == last, "the backend never stalled"
            assert per_connection <= 96
        finally:
            for sock in stalled:
                with contextlib.suppress(OSError):
                    sock.close()


def _with_sni(hello: bytes, name: bytes) -> bytes:
    """The same ClientHello with its server_name host replaced by `name` (same length)."""
    old = SERVER_NAME.encode()
    assert len(name) == len(old)
    entry = struct.pack("!BH", 0, len(old)) + old  # host_name(0), length, name
    assert hello.count(entry) == 1
    return hello.replace(entry, struct.pack("!BH", 0, len(name)) + name)


def test_non_utf8_sni_is_refused_and_counted_without_traceback(start_proxy: StartProxy, ctx: ssl.SSLContext) -> None:
    """A ClientHello whose server_name is not ASCII: an alert, a counted reason, nothing on stderr."""
    metrics_port = free_port()
    with AsyncBackend(Stream(1024)) as backend:
        proxy = start_proxy(backend.address, metrics={"listen": f"127.0.0.1:{metrics_port}"},
                            timeouts={"handshake": 2, "connect": 2, "idle": 10, "drain": 5})
        bad = b"\xff\xfe" + SERVER_NAME.encode()[2:]
        for _ in range(3):
            with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
                sock.sendall(_with_sni(client_hello(ctx), bad))
                closed, seen, seconds = closed_within(sock, 5)
            assert closed and seconds < 1.5
            print(f"non-ASCII SNI: closed after {seconds:.3f}s, alert {plaintext_alert(seen)}")
            assert plaintext_alert(seen) == (2, 80)  # fatal internal_error, from the callback path
        proxy.wait_for_log("reason=handshake_error:invalid_sni", count=3)
        assert metric(metrics_port, "fopproxy_tls_handshake_errors_total", reason="invalid_sni") == 3
        log = proxy.log()
        assert "Exception ignored" not in log and "Traceback" not in log and "UnicodeDecodeError" not in log
        # A good client is still served.
        with ctx.wrap_socket(socket.create_connection((proxy.host, proxy.port), timeout=10),
                             server_hostname=SERVER_NAME) as good:
            assert len(good.recv(65536)) > 0
