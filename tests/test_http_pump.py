"""The http pump with in-memory transports: ordering, backpressure, proxy answers, closing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from fopproxy.http.accesslog import AccessLog
from fopproxy.http.pump import BackendSide, HttpPump, PumpSettings
from fopproxy.http.stats import HttpStats


class FakeClient:
    """The TLS connection's side of the pump, in memory."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.paused = False
        self.finished: tuple[bool, str] | None = None
        self.buffer = memoryview(bytearray(4096))

    def send(self, data: bytes | memoryview) -> None:
        assert self.finished is None, "sent after finish"
        self.received += data

    def pause_input(self, paused: bool) -> None:
        self.paused = paused

    def finish(self, *, clean: bool, reason: str) -> None:
        assert self.finished is None
        self.finished = (clean, reason)

    def read_buffer(self) -> memoryview:
        return self.buffer


class FakeBackend(asyncio.Transport):
    """A backend connection in memory: records writes, answers via its protocol."""

    def __init__(self, protocol: BackendSide) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.written += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.written += chunk

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return len(self.written)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def answer(self, data: bytes) -> None:
        """The backend sends `data` (through the shared read buffer, as a real read does)."""
        buffer = self.protocol.get_buffer(len(data))
        for offset in range(0, len(data), len(buffer)):
            piece = data[offset : offset + len(buffer)]
            buffer[: len(piece)] = piece
            self.protocol.buffer_updated(len(piece))


class Harness:
    def __init__(self, *, refuse: bool = False, max_header_bytes: int = 16384, preamble: bytes = b"") -> None:
        self.backends: list[FakeBackend] = []
        self.dial_failures: list[BaseException] = []
        self.refuse = refuse
        self.stats = HttpStats()
        settings = PumpSettings(
            connect=self._connect,
            connect_timeout=1.0,
            max_header_bytes=max_header_bytes,
            forwarded=True,
            stats=self.stats,
            access=AccessLog(True),
            connect_failed=self.dial_failures.append,
        )
        self.client = FakeClient()
        self.pump = HttpPump(
            settings, self.client, client_text="192.0.2.7:5555", client_host="192.0.2.7",
            cert_headers=b"", cert_subject="-", preamble=preamble,
        )

    async def _connect(self, factory: Callable[[], asyncio.BaseProtocol]) -> object:
        if self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        protocol = factory()
        assert isinstance(protocol, BackendSide)
        transport = FakeBackend(protocol)
        self.backends.append(transport)
        protocol.connection_made(transport)
        return transport, protocol

    @property
    def backend(self) -> FakeBackend:
        return self.backends[-1]

    async def send(self, data: bytes) -> None:
        self.pump.write(data)
        for _ in range(3):  # let a dial task run
            await asyncio.sleep(0)


def ok(body: bytes, *, chunked: bool = False, extra: bytes = b"") -> bytes:
    if chunked:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + extra + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: api\r\n" + extra + b"\r\n"


async def test_one_request_relayed_and_counted() -> None:
    """The backend gets the rewritten head; the client gets the answer as the backend sent it."""
    h = Harness()
    await h.send(get("/a", b"X-Forwarded-For: 6.6.6.6\r\n"))
    assert h.backend.written.startswith(b"GET /a HTTP/1.1\r\nHost: api\r\n")
    assert b"6.6.6.6" not in h.backend.written and b"X-Forwarded-For: 192.0.2.7" in h.backend.written
    h.backend.answer(ok(b"hello"))
    assert bytes(h.client.received) == ok(b"hello")
    assert h.stats.requests == {("GET", 200): 1}
    assert h.stats.duration.count == 1 and h.stats.response_body_bytes == 5
    assert h.client.finished is None  # keep-alive


async def test_pipelined_requests_go_one_at_a_time_in_order() -> None:
    """Three requests in one read: each reaches the backend only after the answer before it."""
    h = Harness()
    await h.send(get("/1") + get("/2") + get("/3"))
    assert h.backend.written.count(b"GET ") == 1
    assert h.client.paused  # requests wait: stop reading the client
    h.backend.answer(ok(b"one"))
    assert h.backend.written.count(b"GET ") == 2 and b"GET /2 " in h.backend.written
    h.backend.answer(ok(b"two", chunked=True))
    h.backend.answer(ok(b"three"))
    assert bytes(h.client.received) == ok(b"one") + ok(b"two", chunked=True) + ok(b"three")
    assert not h.client.paused
    assert len(h.backends) == 1  # one backend connection, kept alive


async def test_refused_request_answered_after_the_ones_before_it() -> None:
    """A smuggling attempt behind a good request: the good one is answered, then 400, then close."""
    h = Harness()
    await h.send(get("/good") + b"POST /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    h.backend.answer(ok(b"fine"))
    assert h.client.received.startswith(ok(b"fine"))
    assert h.client.received[len(ok(b"fine")) :].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in h.client.received
    assert h.client.finished == (True, "bad_request")
    assert b"/bad" not in h.backend.written
    assert h.stats.requests == {("GET", 200): 1, ("OTHER", 400): 1}
    assert h.stats.errors["bad_request"] == 1


async def test_bad_chunk_mid_body_aborts_the_backend_and_answers_400() -> None:
    """The head already went on; the cut-off request is reset at the backend, never completed."""
    h = Harness()
    await h.send(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert b"3\r\nabc\r\n" in h.backend.written
    await h.send(b"zz\r\n")
    assert h.backend.aborted
    assert b"0\r\n\r\n" not in h.backend.written
    assert h.client.received.startswith(b"HTTP/1.1 400 ")
    assert h.client.finished == (True, "bad_request")


async def test_backend_refused_is_502() -> None:
    h = Harness(refuse=True)
    await h.send(get("/a"))
    assert h.client.received.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert h.client.finished == (True, "backend_unavailable")
    assert len(h.dial_failures) == 1
    assert h.stats.requests == {("GET", 502): 1}


async def test_backend_reset_before_answer_is_502_after_partial_answer_is_a_cut() -> None:
    h = Harness()
    await h.send(get("/a"))
    h.backend.protocol.connection_lost(ConnectionResetError())
    assert h.client.received.startswith(b"HTTP/1.1 502 ")
    h = Harness()
    await h.send(get("/a"))
    h.backend.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    h.backend.protocol.connection_lost(ConnectionResetError())
    assert h.client.finished == (False, "backend_reset")  # no close_notify: visibly truncated


async def test_idle_with_request_outstanding_is_504_otherwise_clean_close() -> None:
    h = Harness()
    await h.send(get("/slow"))
    h.pump.idle()
    assert h.client.received.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert h.backend.aborted
    assert h.stats.errors["backend_timeout"] == 1
    h = Harness()
    await h.send(get("/a"))
    h.backend.answer(ok(b"x"))
    h.pump.idle()
    assert h.client.finished == (True, "idle_timeout")


async def test_answer_to_head_has_no_body_and_the_next_request_follows() -> None:
    h = Harness()
    await h.send(b"HEAD /a HTTP/1.1\r\nHost: a\r\n\r\n" + get("/b"))
    h.backend.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert b"GET /b" in h.backend.written
    h.backend.answer(ok(b"b"))
    assert h.stats.requests == {("HEAD", 200): 1, ("GET", 200): 1}


async def test_100_continue_is_relayed_before_the_final_answer() -> None:
    h = Harness()
    await h.send(b"POST /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert b"Expect: 100-continue\r\n" in h.backend.written
    h.backend.answer(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert h.client.received == b"HTTP/1.1 100 Continue\r\n\r\n"
    await h.send(b"abc")
    assert h.backend.written.endswith(b"\r\n\r\nabc")
    h.backend.answer(ok(b"done"))
    assert h.stats.requests == {("POST", 200): 1}


async def test_backpressure_both_ways() -> None:
    """A full backend pauses the client; a full client pauses the backend."""
    h = Harness()
    await h.send(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
    h.backend.protocol.pause_writing()
    assert h.client.paused
    h.backend.protocol.resume_writing()
    assert not h.client.paused
    h.pump.pause_reading()
    assert not h.backend.reading
    h.pump.resume_reading()
    assert h.backend.reading


async def test_read_until_close_answer_ends_at_eof() -> None:
    h = Harness()
    await h.send(get("/a"))
    h.backend.answer(b"HTTP/1.1 200 OK\r\n\r\nstream")
    assert h.client.finished is None
    h.backend.protocol.eof_received()
    assert h.client.finished == (True, "backend_close")
    assert h.stats.requests == {("GET", 200): 1}


async def test_early_answer_before_the_body_ends_closes() -> None:
    """An answer before the whole body: the rest of the body must not become a request."""
    h = Harness()
    await h.send(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    h.backend.answer(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert h.client.finished == (True, "early_response")
    await h.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert h.backend.written.count(b"GET ") == 0


async def test_backend_closing_between_requests_is_dialled_again() -> None:
    h = Harness()
    await h.send(get("/a"))
    h.backend.answer(ok(b"a"))
    h.backend.protocol.eof_received()  # keep-alive timeout at the backend
    assert h.client.finished is None
    await h.send(get("/b"))
    assert len(h.backends) == 2 and b"GET /b" in h.backends[1].written


@pytest.mark.parametrize("gone", ["eof", "reset"])
async def test_idempotent_request_on_a_reused_connection_the_backend_dropped_is_sent_again(gone: str) -> None:
    """The backend's keep-alive timer fires as the next request goes out: a GET is sent again,
    once, on a new connection, and answered; the client never sees the race."""
    h = Harness()
    await h.send(get("/a"))
    h.backend.answer(ok(b"a"))
    await h.send(get("/b"))
    first = h.backend
    assert b"GET /b" in first.written
    if gone == "eof":
        first.protocol.eof_received()
    else:
        first.protocol.connection_lost(ConnectionResetError())
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(h.backends) == 2
    second = h.backend
    assert second.written == first.written[first.written.index(b"GET /b") :]
    second.answer(ok(b"b"))
    assert bytes(h.client.received) == ok(b"a") + ok(b"b")
    assert h.client.finished is None
    assert h.stats.requests == {("GET", 200): 2}


async def test_no_second_try_for_a_post_a_first_request_or_a_second_failure() -> None:
    """A POST (not idempotent) and a request on a connection that never answered anything get
    the 502; a request sent again is not sent a third time."""
    h = Harness()
    await h.send(get("/a"))
    h.backend.answer(ok(b"a"))
    await h.send(b"POST /pay HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\n\r\nhi")
    h.backend.protocol.eof_received()
    assert b"HTTP/1.1 502 " in h.client.received
    assert len(h.backends) == 1

    h = Harness()
    await h.send(get("/first"))
    h.backend.protocol.eof_received()  # a new connection closed at once: the backend is down
    assert h.client.received.startswith(b"HTTP/1.1 502 ")
    assert len(h.backends) == 1

    h = Harness()
    await h.send(get("/a"))
    h.backend.answer(ok(b"a"))
    await h.send(get("/b"))
    h.backend.protocol.eof_received()
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(h.backends) == 2
    h.backend.protocol.eof_received()
    assert b"HTTP/1.1 502 " in h.client.received
    assert len(h.backends) == 2


async def test_backend_bytes_with_no_request_are_never_relayed() -> None:
    h = Harness()
    await h.send(get("/a"))
    h.backend.answer(ok(b"a"))
    h.backend.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
    assert bytes(h.client.received) == ok(b"a")
    assert h.backend.aborted


async def test_client_eof_mid_body_resets_the_backend() -> None:
    h = Harness()
    await h.send(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    h.pump.write_eof()
    assert h.backend.aborted
    assert h.client.finished == (True, "client_eof")


@pytest.mark.parametrize("close_by", ["client", "backend"])
async def test_connection_close_ends_after_the_answer(close_by: str) -> None:
    h = Harness()
    extra = b"Connection: close\r\n"
    await h.send(get("/a", extra if close_by == "client" else b""))
    h.backend.answer(ok(b"a", extra=b"" if close_by == "client" else extra))
    assert h.client.finished is not None and h.client.finished[0]


async def test_requests_after_a_connection_close_request_are_discarded() -> None:
    """RFC 9112 9.6: what follows a close request is not read; no 400 for it either."""
    h = Harness()
    await h.send(get("/a", b"Connection: close\r\n") + get("/b"))
    h.backend.answer(ok(b"a"))
    assert bytes(h.client.received) == ok(b"a")
    assert b"/b" not in h.backend.written
    assert h.client.finished == (True, "done")
    assert h.stats.requests == {("GET", 200): 1}


async def test_write_limits_and_buffer_size_are_the_backend_connections() -> None:
    """The TLS side sizes its reads by what waits for the backend, and sets the limits it uses."""
    h = Harness()
    h.pump.set_write_buffer_limits(high=65536, low=0)
    assert h.pump.get_write_buffer_size() == 0  # no backend yet
    await h.send(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
    assert h.backend.limits == (65536, 0)
    assert h.pump.get_write_buffer_size() == len(h.backend.written)


async def test_preamble_opens_every_backend_connection() -> None:
    """A PROXY header (proxy_protocol) goes first on each connection the pump dials."""
    h = Harness(preamble=b"PROXY TCP4 192.0.2.7 192.0.2.1 5555 443\r\n")
    await h.send(get("/a"))
    h.backend.answer(ok(b"a"))
    h.backend.protocol.eof_received()
    await h.send(get("/b"))
    assert [b.written.split(b"\r\n", 1)[0] for b in h.backends] == [b"PROXY TCP4 192.0.2.7 192.0.2.1 5555 443"] * 2


async def test_pipelining_is_bounded() -> None:
    """Thousands of tiny requests in one read: 64 wait, the next is refused after their answers."""
    h = Harness()
    await h.send(get("/x") * 1000)
    assert len(h.pump.requests) == 64
    for _ in range(64):
        h.backend.answer(ok(b"x"))
    assert h.client.received.count(b"HTTP/1.1 200 OK") == 64
    assert h.client.received.endswith(b"400 Bad Request\n")
    assert h.client.finished == (True, "pipeline_too_deep")


async def test_backend_head_that_never_ends_is_bounded() -> None:
    h = Harness()
    await h.send(get("/a"))
    h.backend.answer(b"HTTP/1.1 200 OK\r\nX-Long: ")
    for _ in range(100):
        if h.client.finished:
            break
        h.backend.answer(b"a" * 4096)
    assert h.client.received.startswith(b"HTTP/1.1 200 OK\r\nX-Long: ")  # relayed as it came
    assert h.client.finished == (False, "bad_response")  # then cut: the answer cannot end well
