"""The request-aware pump: client plaintext in, requests to the backend one at a time, answers out.

It stands where tcp mode has the backend transport (it *is* an asyncio.Transport to the TLS
connection: `write` is client plaintext, `write_eof` the client's end, `pause_reading` the client
being full), and talks back through `ClientSide`. So the TLS pipe needs no http knowledge.

Rules, and why:
- One request on the backend at a time, in arrival order, over one backend connection per client
  connection, kept open between requests (keep-alive upstream) and never shared with another
  client: a backend that misbehaves can only confuse the client it answers.
- Pipelined requests are parsed as they arrive but wait (their bytes held) until the answer before
  them is complete; while one waits, the client is not read (so what waits is one read at most).
- Memory is bounded as in tcp mode: a body is written as it is parsed; when the backend's
  transport is full the client is paused; when the client's is full the backend is paused.
- A backend may close a kept-alive connection just as the next request goes out on it (its idle
  timer fired): an idempotent request (RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) whose
  bytes were all held (at most REPLAY_LIMIT) is sent again, once, on a new connection when a
  reused connection closes or resets before any byte of the answer; anything else is a 502.
- The proxy answers itself when the backend cannot: 502 when it cannot be reached or closes or
  resets before any byte of the answer, 504 when it said nothing for `timeouts.idle`, 400/431/501
  for refused requests (in order: after the answers to the requests before them). Every proxy
  answer says Connection: close and ends the connection.
- Once an answer has started, a failure can no longer be told in HTTP: the client connection is
  cut without close_notify, so the client sees a truncated answer, never a complete-looking one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Protocol

from fopproxy.http.accesslog import AccessLog
from fopproxy.http.answers import answer
from fopproxy.http.request import Request, RequestError, RequestReader
from fopproxy.http.response import ResponseError, ResponseTracker
from fopproxy.http.stats import HttpStats

log = logging.getLogger("fopproxy.http")

Connector = Callable[[Callable[[], asyncio.BaseProtocol]], Awaitable[object]]

# Requests that may be sent again when a reused backend connection dies before answering them.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# The most of one request held for that (head and body); a larger one is a 502 instead.
REPLAY_LIMIT = 64 * 1024


class ClientSide(Protocol):
    """What the pump needs from the client connection (the TLS pipe)."""

    def send(self, data: bytes | memoryview) -> None:
        """Plaintext to the client (encrypted and written by the TLS pipe)."""
        ...

    def pause_input(self, paused: bool) -> None:
        """Stop (True) or resume (False) reading from the client."""
        ...

    def read_buffer(self) -> memoryview:
        """Where the next backend read lands: sized to what the client can take now."""
        ...

    def finish(self, *, clean: bool, reason: str) -> None:
        """End the client connection: close_notify first when `clean`, a cut otherwise."""
        ...


class PumpSettings:
    """What every pump of a listener shares (built once per worker)."""

    __slots__ = (
        "access",
        "connect",
        "connect_failed",
        "connect_timeout",
        "forwarded",
        "max_header_bytes",
        "stats",
    )

    def __init__(
        self,
        *,
        connect: Connector,
        connect_timeout: float,
        max_header_bytes: int,
        forwarded: bool,
        stats: HttpStats,
        access: AccessLog,
        connect_failed: Callable[[BaseException], None],
    ) -> None:
        self.connect = connect
        self.connect_timeout = connect_timeout
        self.max_header_bytes = max_header_bytes
        self.forwarded = forwarded
        self.stats = stats
        self.access = access  # the access line (one per request), decided once per worker
        self.connect_failed = connect_failed  # counts and logs a failed dial (tcp mode's counters)


class BackendSide(asyncio.BufferedProtocol):
    """The backend connection's protocol: every event goes to its pump."""

    __slots__ = ("buffer", "pump", "read_buffer")

    def __init__(self, pump: HttpPump) -> None:
        self.pump = pump
        self.read_buffer = pump.client.read_buffer
        self.buffer = self.read_buffer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pump.backend_made(transport, self)  # type: ignore[arg-type]  # a stream's

    def get_buffer(self, sizehint: int) -> memoryview:
        # Like tcp mode's backend reads: no more than the client's side can take now.
        self.buffer = buffer = self.read_buffer()
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.pump.backend_data(self.buffer[:nbytes])

    def eof_received(self) -> bool:
        self.pump.backend_gone(None, self)
        return False

    def pause_writing(self) -> None:
        self.pump.backend_full(True)

    def resume_writing(self) -> None:
        self.pump.backend_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pump.backend_gone(exc, self)


class HttpPump(asyncio.Transport):
    """One client connection's requests and their backend connection."""

    def __init__(
        self,
        settings: PumpSettings,
        client: ClientSide,
        *,
        client_text: str,
        client_host: str,
        cert_headers: bytes,
        cert_subject: str,
        preamble: bytes = b"",
    ) -> None:
        super().__init__()
        # Written first on every backend connection (a PROXY protocol header, where configured):
        # each connection the pump dials is a new one to the backend.
        self.preamble = preamble
        self.settings = settings
        self.client = client
        self.client_text = client_text
        self.cert_subject = cert_subject
        self.requests: deque[Request] = deque()
        self.reader = RequestReader(
            self.requests,
            max_header_bytes=settings.max_header_bytes,
            forwarded=settings.forwarded,
            client_host=client_host,
            cert_headers=cert_headers,
        )
        self.tracker = ResponseTracker()
        self.backend: asyncio.Transport | None = None
        self._backend_side: BackendSide | None = None
        self._dial: asyncio.Task[None] | None = None
        self.active = False  # requests[0] is on the backend
        self.answered = 0  # response bytes of requests[0] already sent to the client
        # The backend connection has answered a request before (a kept-alive one), and the
        # bytes of requests[0] as written, while it may still be sent again (None otherwise).
        self.reused = False
        self._replay: list[bytes] | None = None
        self._replay_size = 0
        self.input_closed = False  # the client sends no more requests we will read
        self.pending_error: RequestError | None = None  # to answer once the queue is empty
        self.closed = False
        self.draining = False
        self._backend_full = False
        self._client_full = False
        self._input_paused = False
        self._limits: tuple[int | None, int | None] | None = None

    # ---- the transport face: what the TLS connection calls -------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Client plaintext."""
        if self.input_closed:
            return  # after a refused request, or past a Connection: close request
        reader = self.reader
        try:
            reader.feed(data)
        except RequestError as error:
            self._refuse(error)
        if reader.finished:
            self.input_closed = True  # a Connection: close request was the last one
        self._advance()

    def writelines(self, chunks: object) -> None:
        for chunk in chunks:  # type: ignore[attr-defined]  # an iterable of bytes
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """The client sends no more."""
        if self.closed:
            return
        self.input_closed = True
        requests = self.requests
        if self.reader.mid_request and requests and not requests[-1].done:
            # A request cut short: whatever of it reached the backend must not look complete.
            requests.pop()
            if not requests and self.active:
                self.active = False
                self._end(clean=self.answered == 0, reason="client_eof", abort_backend=True)
                return
        self._advance()

    def pause_reading(self) -> None:
        """The client's transport is full: stop reading the backend."""
        self._client_full = True
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_reading(self) -> None:
        self._client_full = False
        if self.backend is not None and not self.closed:
            self.backend.resume_reading()

    def is_reading(self) -> bool:
        return not self._client_full

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        """The client connection is done: drop the backend connection with it."""
        self._shut(abort=False)

    def abort(self) -> None:
        self._shut(abort=True)

    def get_write_buffer_size(self) -> int:
        """What waits for the backend: the TLS connection sizes its reads by it."""
        backend = self.backend
        return backend.get_write_buffer_size() if backend is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Applied to each backend connection, now and when one is dialled."""
        self._limits = (high, low)
        if self.backend is not None:
            self.backend.set_write_buffer_limits(high, low)

    # ---- requests ------------------------------------------------------------------------------

    def _refuse(self, error: RequestError) -> None:
        """A request we will not pass on: answer it after the ones before it, then end."""
        self.input_closed = True
        requests = self.requests
        if requests and not requests[-1].done:
            # Its head passed and part of its body did not: it never reaches the backend whole.
            partial = requests.pop()
            if not requests and self.active:
                self.active = False
                self._drop_backend(abort=True)
                if self.answered:
                    self.settings.stats.errors[error.reason] += 1
                    self._end(clean=False, reason=error.reason)
                    return
            error.method, error.started = partial.method, partial.started
        self.pending_error = error

    def _advance(self) -> None:
        """Put the first waiting request on the backend, or end the connection when done."""
        if self.closed:
            return
        requests = self.requests
        if requests:
            front = requests[0]
            if not self.active:
                if self.backend is None:
                    if self._dial is None:
                        self._dial = asyncio.get_running_loop().create_task(self._connect())
                    self._update_input()
                    return
                self.active = True
                self.answered = 0
                self.tracker.reset(head_only=front.head_only)
                self._replay = [] if self.reused and front.method in IDEMPOTENT else None
                self._replay_size = 0
            out = front.out
            if out:
                replay = self._replay
                if replay is not None:
                    self._replay_size += sum(map(len, out))
                    if self._replay_size <= REPLAY_LIMIT:
                        replay.extend(out)  # bytes objects (httptools'), never a view
                    else:
                        self._replay = None
                if len(out) == 1:
                    self.backend.write(out[0])  # type: ignore[union-attr]  # active: connected
                else:
                    self.backend.writelines(out)  # type: ignore[union-attr]
                out.clear()
        elif self.pending_error is not None:
            error, self.pending_error = self.pending_error, None
            self._answer(error.status, error.reason, error.method, None, error.started)
            return
        elif self.input_closed and not self.reader.mid_request:
            self._end(clean=True, reason="done")
            return
        elif self.draining and not self.reader.mid_request:
            self._end(clean=True, reason="draining")
            return
        self._update_input()

    def _update_input(self) -> None:
        paused = (
            self._backend_full or len(self.requests) > 1
            or (bool(self.requests) and self.backend is None)
        )
        if paused != self._input_paused and not self.closed:
            self._input_paused = paused
            self.client.pause_input(paused)

    # ---- backend ---------------------------------------------------------------------------------

    async def _connect(self) -> None:
        settings = self.settings
        try:
            async with asyncio.timeout(settings.connect_timeout):
                await settings.connect(lambda: BackendSide(self))
        except (OSError, TimeoutError) as exc:
            self._dial = None
            if self.closed:
                return
            settings.connect_failed(exc)
            front = self.requests[0] if self.requests else None
            self._answer(502, "backend_unavailable", front.method if front else "OTHER", front)
            return
        except asyncio.CancelledError:
            self._dial = None
            raise
        self._dial = None

    def backend_made(self, transport: asyncio.Transport, side: BackendSide) -> None:
        if self.closed:
            transport.abort()
            return
        self.backend = transport
        self._backend_side = side
        self.reused = False
        if self._limits is not None:
            transport.set_write_buffer_limits(*self._limits)
        if self.preamble:
            transport.write(self.preamble)
        if self._client_full:
            transport.pause_reading()
        self._advance()

    def backend_full(self, full: bool) -> None:
        self._backend_full = full
        self._update_input()

    def backend_data(self, data: memoryview) -> None:
        requests = self.requests
        if not self.active or self.closed:
            # Bytes with no request outstanding: a broken backend; never pass them on.
            log.debug("unexpected %d bytes from the backend: closing it", len(data))
            self._drop_backend(abort=True)
            return
        tracker = self.tracker
        try:
            tracker.feed(data)
        except ResponseError as exc:
            log.warning("malformed response from the backend: %s", exc)
            self._backend_failed("bad_response")
            return
        self.answered += len(data)
        self.client.send(data)
        if tracker.complete:
            self._response_done(requests[0])

    def backend_gone(self, exc: Exception | None, side: BackendSide) -> None:
        """EOF or connection loss of the backend connection (`side` tells which one)."""
        if side is not self._backend_side:
            return  # a dropped connection's late event (or connection_lost after EOF)
        self._backend_side = None
        backend, self.backend = self.backend, None
        if backend is not None and exc is None:
            backend.close()
        self._backend_full = False
        if self.closed or not self.active:
            return  # idle keep-alive connection closed by the backend: dial again when needed
        if self.tracker.finish_at_eof():
            self._response_done(self.requests[0])
            return
        front = self.requests[0]
        replay, self._replay = self._replay, None
        if replay is not None and self.answered == 0 and front.done:
            # A kept-alive connection the backend closed as this request went out (see the
            # module docstring): once more, on a new connection.
            log.info(
                "backend closed a reused connection before answering %s %s; sent again on a "
                "new connection", front.method, front.path(),
            )
            front.out[:0] = replay
            self.active = False
            self._advance()
            return
        self._backend_failed("backend_reset")

    def _backend_failed(self, reason: str) -> None:
        self._drop_backend(abort=True)
        if self.answered == 0:
            front = self.requests[0] if self.requests else None
            self._answer(502, reason, front.method if front else "OTHER", front)
        else:
            self.settings.stats.errors[reason] += 1
            front = self.requests[0] if self.requests else None
            if front is not None:
                tracker = self.tracker
                self._account(front, tracker.final_status or 502, reason, tracker.body_bytes)
            self._end(clean=False, reason=reason)

    def _drop_backend(self, *, abort: bool) -> None:
        backend, self.backend = self.backend, None
        self._backend_side = None
        self._backend_full = False
        if backend is not None:
            if abort:
                backend.abort()
            else:
                backend.close()

    def _response_done(self, request: Request) -> None:
        tracker = self.tracker
        self.requests.popleft()
        self.active = False
        self._replay = None
        self._account(request, tracker.final_status, "-", tracker.body_bytes)
        if not request.done:
            # The backend answered before the whole body arrived: the rest of it must not be
            # read as a next request, by us or by the backend.
            self.input_closed = True
            self.requests.clear()
            self._drop_backend(abort=True)
            self._end(clean=True, reason="early_response")
            return
        if not tracker.keep_alive:
            self._drop_backend(abort=False)
            self._end(clean=True, reason="backend_close")
            return
        self.reused = True
        if not request.keep_alive:
            self.input_closed = True
        self._advance()

    # ---- answers, accounting, closing ----------------------------------------------------------

    def _answer(
        self, status: int, reason: str, method: str, request: Request | None,
        started: float | None = None,
    ) -> None:
        """Send a proxy answer (the connection ends after it)."""
        data = answer(status, head_only=method == "HEAD")
        stats = self.settings.stats
        stats.errors[reason] += 1
        self.client.send(data)
        self.answered += len(data)
        if request is None:
            duration = perf_counter() - started if started is not None else 0.0
            stats.requests[(method, status)] += 1
            stats.duration.observe(duration)
            access = self.settings.access
            if access.enabled:
                access.request(
                    method, "-", status, 0, len(data), int(duration * 1e6), self.client_text,
                    self.cert_subject, reason,
                )
        else:
            self._account(request, status, reason, 0)
        self._end(clean=True, reason=reason)

    def _account(self, request: Request, status: int, reason: str, response_body: int) -> None:
        duration = perf_counter() - request.started
        stats = self.settings.stats
        stats.requests[(request.method, status)] += 1
        stats.duration.observe(duration)
        stats.request_body_bytes += request.body_bytes
        stats.response_body_bytes += response_body
        access = self.settings.access
        if access.enabled:
            access.request(
                request.method, request.path(), status, request.body_bytes, self.answered,
                int(duration * 1e6), self.client_text, self.cert_subject, reason,
            )

    def idle(self) -> None:
        """Nothing moved for `timeouts.idle`: 504 for a request still waiting, else close."""
        if self.closed:
            return
        if self.active and self.answered == 0 and self.requests:
            self._drop_backend(abort=True)
            front = self.requests[0]
            self._answer(504, "backend_timeout", front.method, front)
            return
        self._end(clean=self.answered == 0 or not self.active, reason="idle_timeout")

    def drain(self) -> None:
        """The worker is shutting down: end after the current exchange, at once if there is none."""
        self.draining = True
        if not self.requests and not self.reader.mid_request:
            self._advance()

    def _end(self, *, clean: bool, reason: str, abort_backend: bool = False) -> None:
        if self.closed:
            return
        self.input_closed = True
        self._shut(abort=abort_backend or not clean)
        self.client.finish(clean=clean, reason=reason)

    def _shut(self, *, abort: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.input_closed = True
        if self._dial is not None:
            self._dial.cancel()
            self._dial = None
        self._drop_backend(abort=abort or self.active)
        self.requests.clear()
