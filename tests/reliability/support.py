"""Tools for the fault, load and abuse tests: process figures, a canary, fault backends, raw TLS.

Every helper here talks to loopback only and is bounded: reads have timeouts, loops have counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.conftest import SERVER_NAME

# --- figures from /proc -------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    """Number of open file descriptors of `pid` (entries in /proc/<pid>/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def figures(pid: int) -> tuple[int, int]:
    return rss_kib(pid), open_fds(pid)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def count(log: str, text: str) -> int:
    return log.count(text)


# --- clients ------------------------------------------------------------------------------------


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    got = 0
    while got < size:
        chunk = sock.recv(min(1 << 20, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def echo_roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def closed_within(sock: socket.socket, timeout: float) -> tuple[bool, bytes, float]:
    """Read until the peer closes (EOF or reset); returns (closed, bytes seen, seconds)."""
    sock.settimeout(timeout)
    started = time.monotonic()
    seen = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True, seen, time.monotonic() - started
            seen += chunk
    except (ConnectionResetError, BrokenPipeError):
        return True, seen, time.monotonic() - started
    except TimeoutError:
        return False, seen, time.monotonic() - started


class Canary:
    """A good TLS connection held open through an abuse; `check()` proves it still echoes."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection((host, port), timeout=20)
        self.sock = ctx.wrap_socket(raw, server_hostname=SERVER_NAME)
        self.checks = 0

    def check(self, size: int = 64 * 1024) -> None:
        payload = os.urandom(size)
        assert echo_roundtrip(self.sock, payload) == payload, "the canary connection was disturbed"
        self.checks += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class MemoryClient:
    """A TLS client over MemoryBIO on a plain socket, so a test can see and tamper with records."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self.raw = socket.create_connection((host, port), timeout=10)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=SERVER_NAME)

    def pump_in(self) -> bool:
        data = self.raw.recv(65536)
        if not data:
            return False
        self.incoming.write(data)
        return True

    def handshake(self) -> None:
        for _ in range(50):
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                if self.outgoing.pending:
                    self.raw.sendall(self.outgoing.read())
                if not self.pump_in():
                    raise ConnectionError("closed during the handshake") from None
            else:
                if self.outgoing.pending:
                    self.raw.sendall(self.outgoing.read())
                return
        raise AssertionError("handshake did not finish")

    def record(self, data: bytes) -> bytes:
        """Encrypt `data` and return the TLS record bytes without sending them."""
        self.tls.write(data)
        return self.outgoing.read()

    def read_until_close(self, timeout: float = 10.0) -> tuple[bytes, BaseException | None, float]:
        """Decrypt until the server closes: (plaintext, the TLS error seen or None, seconds)."""
        self.raw.settimeout(timeout)
        started = time.monotonic()
        plain = b""
        while True:
            try:
                plain += self.tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                return plain, exc, time.monotonic() - started
            try:
                if not self.pump_in():
                    return plain, None, time.monotonic() - started
            except (ConnectionResetError, TimeoutError) as exc:
                return plain, exc, time.monotonic() - started

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.raw.close()


def client_hello(ctx: ssl.SSLContext) -> bytes:
    """The ClientHello bytes this context would send (a real one, made with a MemoryBIO)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def records(data: bytes) -> list[tuple[int, bytes]]:
    """Split plaintext-framed TLS bytes into (content type, fragment); partial tails dropped."""
    out = []
    while len(data) >= 5:
        kind, _, length = struct.unpack("!BHH", data[:5])
        if len(data) < 5 + length:
            break
        out.append((kind, data[5 : 5 + length]))
        data = data[5 + length :]
    return out


def plaintext_alert(data: bytes) -> tuple[int, int] | None:
    """(level, description) of the first unencrypted alert record in `data`, or None."""
    for kind, fragment in records(data):
        if kind == 21 and len(fragment) == 2:
            return fragment[0], fragment[1]
    return None


# --- backends -----------------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class AsyncBackend:
    """A loopback backend on its own asyncio loop in a thread: thousands of connections, cheap."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", *, backlog: int = 4096) -> None:
        self.handler = handler
        self.host = host
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, args=(backlog,), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("backend did not start")
        assert self._server is not None
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self, backlog: int) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._writers.add(writer)
            try:
                await self.handler(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self._writers.discard(writer)
                writer.close()

        async def start() -> None:
            self._server = await asyncio.start_server(serve, self.host, 0, backlog=backlog, limit=1 << 16)
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()  # handlers see a reset and end on their own
            await asyncio.sleep(0.05)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> AsyncBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), the way a crashed peer's kernel would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Recorder:
    """Backend that records every byte it receives, per connection, and answers nothing."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.eof = threading.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        self.received.append(buffer)
        while data := await reader.read(65536):
            buffer += data
        self.eof.set()


class Sink:
    """Backend that reads (stalling first, then throttled), hashing what arrives.

    Once a connection has received `expect` bytes it answers their SHA-256 hex digest, so a TLS
    client can check integrity without a half-close. `totals` holds each connection's count.
    """

    def __init__(self, expect: int, stall: float = 0.0, chunk: int = 65536, pause: float = 0.0) -> None:
        self.expect = expect
        self.stall = stall
        self.chunk = chunk
        self.pause = pause
        self.totals: list[int] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        index = len(self.totals)
        self.totals.append(0)
        await asyncio.sleep(self.stall)
        digest = hashlib.sha256()
        while data := await reader.read(self.chunk):
            digest.update(data)
            self.totals[index] += len(data)
            if self.totals[index] >= self.expect:
                writer.write(digest.hexdigest().encode())
                await writer.drain()
            if self.pause:
                await asyncio.sleep(self.pause)


class Source:
    """Backend that sends `size` bytes per connection as fast as the proxy takes them.

    `sent` counts what the latest connection has written so far.
    """

    def __init__(self, size: int, block: int = 256 * 1024) -> None:
        self.size = size
        self.block = os.urandom(block)
        self.sent = 0
        self.finished = threading.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sent = 0
        while self.sent < self.size:
            piece = self.block[: self.size - self.sent]
            writer.write(piece)
            await writer.drain()
            self.sent += len(piece)
        self.finished.set()
        writer.write_eof()
        await reader.read()
