"""The connection pump: TLS (tlspipe.py) on plain transports, relayed to a plain backend.

Network reads land in one buffer shared by every connection of the loop, and are fed to the
pipe's BIOs in slices (`SMALL_SLICE`, then `TLS_SLICE` for bulk), so a BIO (which never shrinks
on its own) stays small however large a burst was; once a relay has been quiet for a sweep, its
BIO buffers are freed outright (native.BioReleaser), so an idle connection costs its TLS state
whatever it carried. Each read is sized to what the other side can take (`WRITE_HIGH`), so a
peer that stops reading holds one write buffer, not a whole read.

One connection: accept -> limit check -> handshake (timeout) -> dial backend (timeout) -> relay
both ways with backpressure -> close (one method, a CloseReason; a closing client that takes
nothing is reset after `timeouts.close`) -> one log line + stats.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import re
import socket
import ssl
import sys
import termios
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import TYPE_CHECKING, Any

from fopproxy.clientauth import ClientIdentity, classify_failure
from fopproxy.config import TcpAddress, Timeouts, UnixAddress
from fopproxy.logs import connection_closed
from fopproxy.native import BioReleaser, bio_releaser
from fopproxy.peerverify import identity_of, take_refused
from fopproxy.proxyproto import ProxyProtocol, TLSDetails, header
from fopproxy.reasons import CloseReason
from fopproxy.resources import trim_heap
from fopproxy.stats import Stats
from fopproxy.tlsinfo import served_certificate
from fopproxy.tlspipe import BULK_AFTER, SMALL_SLICE, SSL_READ_SIZE, TLS_SLICE, TLSPipe

if TYPE_CHECKING:
    from fopproxy.certs import CertificateSet
    from fopproxy.tls import TicketContexts

log = logging.getLogger("fopproxy.conn")

# One network read may fill this much; shared by all connections of a loop, never per connection.
READ_BUFFER_SIZE = 256 * 1024
# Once relaying, a read from one side is sized to the room the other side's write buffer has
# below its high-water mark WRITE_HIGH (in whole records, at least one), so a peer that stops
# reading holds at most about WRITE_HIGH plus one record, never a whole 256 KiB read (each
# buffered byte costs about two in RSS: measured ≈65 KiB per stalled connection with 32 KiB).
# A client that keeps up leaves its write buffer empty: during bulk transfers the room its
# kernel send buffer still has is added (a getsockopt and an ioctl per read), so bulk reads
# stay up to 256 KiB; low-water 0 resumes a paused backend only once the buffer is empty.
ROOM_STEP = TLS_SLICE
WRITE_HIGH = 32 * 1024
_outq = bytearray(4)

HANDSHAKE, CONNECTING, OPEN, CLOSED = range(4)
# A freed BIO buffer is a few KiB in the middle of the heap; RSS falls only once the heap is
# trimmed (≈2.5 ms with 10,000 connections open), worth it when many were freed in one sweep.
TRIM_AFTER_RELEASES = 64


def classify_handshake_error(exc: ssl.SSLError) -> str:
    """Map OpenSSL's reason code to the bounded `reason` label set."""
    reason = exc.reason or ""
    if reason in {
        "UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "WRONG_SSL_VERSION",
        "TLSV1_ALERT_PROTOCOL_VERSION", "UNKNOWN_PROTOCOL", "NO_PROTOCOLS_AVAILABLE",
        "BAD_PROTOCOL_VERSION_NUMBER",
    }:
        return "unsupported_protocol"
    if reason in {"NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "NO_SUITABLE_SIGNATURE_ALGORITHM",
                  "NO_SHARED_SIGNATURE_ALGORITHMS", "NO_SUITABLE_KEY_SHARE", "NO_SHARED_GROUPS"}:
        return "no_shared_cipher"
    if reason in {"HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER",
                  "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH", "UNKNOWN_RECORD_TYPE"}:
        return "not_tls"
    if "CERTIFICATE" in reason or reason in {"TLSV1_ALERT_UNKNOWN_CA", "TLSV1_ALERT_DECRYPT_ERROR",
                                             "SSLV3_ALERT_BAD_CERTIFICATE"}:
        return "cert_rejected"
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return "client_eof"
    return "other"


def classify_connect_error(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, TimeoutError | asyncio.CancelledError):
        return "timeout"
    if isinstance(exc, OSError):
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return "refused"
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
            return "unreachable"
        if exc.errno == errno.ECONNRESET:
            return "reset"
    return "other"


class _SniDecodeGuard:
    """Turns CPython's "Exception ignored" report of an undecodable SNI into a flag.

    CPython decodes the ClientHello's server_name as ASCII before calling the SNI callback; on
    failure it prints a traceback to stderr (per handshake, outside the log) and fails the
    handshake. That happens inside `do_handshake`, synchronously, so the handshake that raises
    next is the one that carried the name: it is refused as `invalid_sni` instead.
    """

    def __init__(self) -> None:
        self.tripped = False
        self.previous: Callable[[Any], object] = sys.unraisablehook

    def __call__(self, unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, UnicodeDecodeError) and exc.encoding == "ascii" and isinstance(
            unraisable.object, bytes
        ):
            self.tripped = True
            return
        self.previous(unraisable)

    def take(self) -> bool:
        tripped, self.tripped = self.tripped, False
        return tripped


def _sni_guard() -> _SniDecodeGuard:
    """The process's guard, installed once as sys.unraisablehook."""
    hook = sys.unraisablehook
    if isinstance(hook, _SniDecodeGuard):
        return hook
    guard = _SniDecodeGuard()
    sys.unraisablehook = guard
    return guard


_PLAIN_SNI = re.compile(r"[A-Za-z0-9._*-]{1,253}").fullmatch


def _printable_sni(name: str | None) -> str:
    if not name:
        return "-"
    if _PLAIN_SNI(name):  # the usual case, checked in C
        return name
    return "".join(c if c.isalnum() or c in ".-_*" else "?" for c in name[:253])


def _kernel_queue(sock: Any) -> tuple[int, int]:
    """(SO_SNDBUF, bytes queued and not yet acknowledged) of a socket; (0, 0) if unknown."""
    try:
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _outq, True)  # SIOCOUTQ, into _outq
    except (OSError, AttributeError):
        return 0, 0
    return int(sndbuf), int.from_bytes(_outq, sys.byteorder)


class Relay:
    """What every connection of one listener shares: policy, counters, the read buffer."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        certificates: Callable[[], CertificateSet],
        backend: TcpAddress | UnixAddress,
        timeouts: Timeouts,
        max_connections: int,
        stats: Stats,
        log_connections: bool,
        *,
        proxy_protocol: ProxyProtocol = "off",
        client_auth: bool = False,
    ) -> None:
        self.loop = loop
        # PROXY protocol header to send the backend first; read the verified client certificate.
        self.proxy_protocol = proxy_protocol
        self.client_auth = client_auth
        self.time = loop.time
        self.certificates = certificates
        self.backend = backend
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.stats = stats
        self.log_connections = log_connections
        self.active: set[ClientConnection] = set()
        self.accepting = True
        self.idle_waiters: list[asyncio.Future[None]] = []
        self.read_area = bytearray(READ_BUFFER_SIZE)
        self.buffer = memoryview(self.read_area)
        # Before the relay is open, reads are at most one slice: what arrives while the backend
        # is dialled waits in the incoming BIO, which must stay small.
        self.small_buffer = self.buffer[:SMALL_SLICE]
        # Views of the read buffer in whole ROOM_STEPs: sizing a read allocates nothing.
        self.sized_buffers = [self.buffer[: max(1, i) * ROOM_STEP]
                              for i in range(READ_BUFFER_SIZE // ROOM_STEP + 1)]
        # What a read may fill while the other side's write buffer is empty (the usual case).
        self.room_buffer = self.sized_buffers[WRITE_HIGH // ROOM_STEP]
        # One timer per listener instead of one per connection phase: creating and cancelling a
        # loop timer (a libuv handle) per phase cost more than scanning the open connections.
        self.sweep_interval = min(1.0, max(0.01, min(timeouts.handshake, timeouts.connect,
                                                     timeouts.idle) / 4))
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_rejection_log = 0.0
        self.bio_releaser = bio_releaser()
        self.sni_guard = _sni_guard()

    def note_rejected(self, reason: str) -> None:
        """Log shedding at most once a second: a flood must not become a flood of log lines."""
        now = self.time()
        if now >= self._next_rejection_log:
            self._next_rejection_log = now + 1.0
            log.warning(
                "rejecting new connections (%s): %d open, limit %d; %d rejected so far",
                reason, len(self.active), self.max_connections,
                self.stats.connections_rejected[reason],
            )

    def protocol_factory(self) -> ClientConnection:
        return ClientConnection(self)

    def _sweep(self) -> None:
        """Expire handshakes, backend dials and idle relays; release quiet relays' buffers."""
        self._sweeper = None
        now = self.time()
        idle = self.timeouts.idle
        releaser = self.bio_releaser
        released = 0
        for conn in list(self.active):
            if conn.tick(now, idle, releaser):
                released += 1
        if released >= TRIM_AFTER_RELEASES:
            trim_heap()
        if self.active:
            self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)

    def _watch(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)

    def forget(self, conn: ClientConnection) -> None:
        self.active.discard(conn)
        self.stats.connections_active = len(self.active)
        if not self.active and self.idle_waiters:
            for waiter in self.idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self.idle_waiters.clear()

    async def wait_idle(self) -> None:
        if self.active:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self.idle_waiters.append(waiter)
            await waiter

    def abort_all(self, reason: str) -> None:
        """Reset every open connection (the drain deadline): `reason` is a CloseReason value."""
        close_reason = CloseReason(reason)
        for conn in list(self.active):
            conn.abort(close_reason)


class Dial:
    """The backend dial of one connection, stepped without an asyncio Task.

    A Task per connection (its registration in a WeakSet, its context copy, its wake-ups) cost
    about as much as the rest of the dial on short connections (≈6k instructions of a ≈670k
    resumed one). The connect coroutine is stepped the way a Task steps it: sent None at once,
    then again whenever the future it waits on is done. `cancel` cancels that future, so the
    coroutine gets CancelledError where it waits, as under Task.cancel.
    """

    __slots__ = ("_coro", "_loop", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
        self._coro = coro
        self._loop = loop
        self._waiting: asyncio.Future[Any] | None = None
        self._step()

    def _step(self, _done: object = None) -> None:
        self._waiting = None
        try:
            waiting = self._coro.send(None)
        except StopIteration:
            return
        if waiting is None:  # a bare yield: step again on the next loop pass
            self._loop.call_soon(self._step)
            return
        waiting._asyncio_future_blocking = False
        self._waiting = waiting
        waiting.add_done_callback(self._step)

    def cancel(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()


class BackendProtocol(asyncio.BufferedProtocol):
    """The plain side; it only forwards events to its ClientConnection."""

    __slots__ = (
        "buffer_updated", "conn", "connection_lost", "connection_made", "eof_received",
        "get_buffer",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        # Every event goes straight to the connection's method: one Python frame less each
        # (reads above all; the other three once per connection).
        self.buffer_updated = conn.from_backend  # type: ignore[method-assign]
        self.get_buffer = conn.backend_read_buffer  # type: ignore[method-assign]
        self.connection_made = conn.backend_made  # type: ignore[method-assign,assignment]
        self.eof_received = conn.backend_eof  # type: ignore[method-assign]
        self.connection_lost = conn.backend_lost  # type: ignore[method-assign]

    def pause_writing(self) -> None:
        self.conn.backend_full(True)

    def resume_writing(self) -> None:
        self.conn.backend_full(False)


class ClientConnection(asyncio.BufferedProtocol):
    """One client: its transports, state, deadlines and accounting; TLS is its `pipe`."""

    __slots__ = (
        "_backend_full",
        "_client_done",
        "_client_sock",
        "_deadline",
        "_detail",
        "_dial",
        "_kernel_peak",
        "_last",
        "_lean",
        "_moved",
        "_peer",
        "_preamble",
        "_reason",
        "_started",
        "_streaming",
        "_tickets",
        "_transport",
        "backend",
        "backend_done",
        "cipher",
        "client_cert",
        "pipe",
        "relay",
        "state",
        "to_backend",
        "to_client",
        "version",
    )

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.state = HANDSHAKE
        self.backend: asyncio.Transport | None = None
        self._transport: asyncio.Transport | None = None
        self._dial: Dial | None = None
        self._client_done = False
        self.backend_done = False
        self._backend_full = False
        self._reason = CloseReason.DONE
        self._detail: str | None = None
        self.to_backend = 0
        self.to_client = 0
        self._client_sock: Any = None
        self._kernel_peak = 0
        # The last backend read filled a whole room: the backend streams (a download), so the
        # next read may also use the client's free kernel send space.
        self._streaming = False
        self.version = "-"
        self.cipher = "-"
        self._peer: Any = None
        self.client_cert: ClientIdentity | None = None
        self._preamble = b""
        self._tickets: TicketContexts | None = None

    # ---- client transport events ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        relay = self.relay
        self._transport = transport  # type: ignore[assignment]  # a stream server's: a Transport
        stats = relay.stats
        if not relay.accepting or len(relay.active) >= relay.max_connections:
            # Shed before any TLS work: the cheapest refusal is an immediate reset.
            reason = "draining" if not relay.accepting else "limit"
            stats.connections_rejected[reason] += 1
            relay.note_rejected(reason)
            self.state = CLOSED
            transport.abort()  # type: ignore[attr-defined]  # a Transport, see above
            return
        relay.active.add(self)
        stats.connections_active = len(relay.active)
        if relay.log_connections:
            self._peer = transport.get_extra_info("peername")
        context, self._tickets = relay.certificates().start()
        self.pipe = TLSPipe(context, server_side=True)
        # Durations use a real clock: uvloop's loop.time() is cached per loop pass in whole
        # milliseconds, too coarse for handshake and dial histograms. Deadlines stay on it.
        self._started = perf_counter()
        self._deadline = relay.time() + relay.timeouts.handshake
        if relay._sweeper is None:
            relay._watch()

    def get_buffer(self, sizehint: int) -> memoryview:
        relay = self.relay
        if self.state != OPEN:
            return relay.small_buffer
        backend = self.backend
        if backend is None:
            return relay.small_buffer
        queued = backend.get_write_buffer_size()
        if not queued:  # the usual case, inlined: the whole room
            return relay.room_buffer
        return relay.sized_buffers[max(1, (WRITE_HIGH - queued) // ROOM_STEP)]

    def backend_read_buffer(self, sizehint: int = -1) -> memoryview:
        """A backend read may fill what the client's write buffer can take (see ROOM_STEP)."""
        transport = self._transport
        relay = self.relay
        if transport is None:
            return relay.small_buffer
        queued = transport.get_write_buffer_size()
        if queued:
            return relay.sized_buffers[max(1, (WRITE_HIGH - queued) // ROOM_STEP)]
        if not self._streaming or self.to_client < BULK_AFTER:
            # Answers, not a stream (the keep-alive case): the whole room, no system call.
            return relay.room_buffer
        # The kernel's free send space, counted only as far as it has been seen to hold: half
        # of SO_SNDBUF (the kernel counts its bookkeeping in it), or the most it has held
        # queued at once, less what it holds now.
        sock = self._client_sock
        if sock is None:  # asked for once, by a connection that streams
            sock = self._client_sock = transport.get_extra_info("socket")
        sndbuf, queued = _kernel_queue(sock)
        self._kernel_peak = max(self._kernel_peak, queued)
        free = max(sndbuf >> 1, self._kernel_peak) - queued
        room = (WRITE_HIGH + max(0, free)) // ROOM_STEP
        return relay.sized_buffers[min(room, len(relay.sized_buffers) - 1)]

    def buffer_updated(self, nbytes: int) -> None:
        pipe = self.pipe
        step = pipe.in_slice
        if nbytes <= step and self.state == OPEN:  # the hot path: at most a slice, relaying
            incoming = pipe.incoming
            incoming.write(self.relay.buffer[:nbytes])
            try:
                data = pipe.tls.read(SSL_READ_SIZE)
            except ssl.SSLError as exc:
                self._read_failed(exc)
                return
            backend = self.backend
            if data and not incoming.pending and backend is not None and not pipe.outgoing.pending:
                # One whole record, the usual request: straight on, no further frame.
                self.to_backend += len(data)
                backend.write(data)
                return
            self._decrypted(data)
            return
        if self._tickets is not None:  # a client's first bytes, older ticket keys in force
            pipe = self._route(nbytes)
        write = pipe.incoming.write
        if nbytes <= step:
            write(self.relay.buffer[:nbytes])
            if self.state == HANDSHAKE:  # ClientHello, then the client's second flight
                self._handshake()
            else:
                self._advance()
            return
        step = pipe.feed_slice(self.to_backend)
        view = self.relay.buffer[:nbytes]
        for offset in range(0, nbytes, step):
            if self.state == CLOSED:
                return
            write(view[offset : offset + step])
            self._advance()

    def _route(self, nbytes: int) -> TLSPipe:
        """Start on the context that opens every ticket key if the ClientHello names an older
        one (tls.TicketContexts); the usual client stays on the one that needs no Python."""
        tickets, self._tickets = self._tickets, None
        assert tickets is not None
        area = self.relay.read_area
        for name in tickets.older:
            if area.find(name, 0, nbytes) >= 0:
                # The keyed context of the very set the connection started on (a reload since
                # may have published another, whose keys are scoped to other certificates).
                self.pipe = TLSPipe(tickets.keyed, server_side=True)
                break
        return self.pipe

    def _advance(self) -> None:
        state = self.state
        if state == OPEN:
            self._decrypt_to_backend()
        elif state == HANDSHAKE:
            self._handshake()
        elif state == CONNECTING and self.pipe.incoming.pending >= SMALL_SLICE and self._transport:
            # Bytes wait in the incoming BIO until the backend is up; past one slice, stop
            # reading (backend_made resumes). Not pausing for the usual small first request
            # saves two epoll updates per connection.
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        if self.state == HANDSHAKE:
            self._handshake_failed("client_eof")
            return False
        self._client_finished()
        return not (self._client_done and self.backend_done)

    def pause_writing(self) -> None:
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None and self.state == OPEN:
            self.backend.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == HANDSHAKE:
            self._count_handshake_error("client_eof")
            self._reason, self._detail = CloseReason.HANDSHAKE_ERROR, "client_eof"
        elif exc is not None and self._reason is CloseReason.DONE:
            self._reason = CloseReason.CLIENT_RESET
        self._finish(abort_backend=exc is not None or not self._client_done)

    # ---- handshake -------------------------------------------------------------------------

    def _handshake(self) -> None:
        pipe = self.pipe
        try:
            pipe.tls.do_handshake()  # tlspipe.handshake, inlined: twice per connection
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # the alert OpenSSL produced goes out before the close
            # The guard is read (and cleared) on every failure; only a failed name callback
            # that tripped it is an undecodable SNI.
            bad_name = self.relay.sni_guard.take() and exc.reason == "CALLBACK_FAILED"
            refused = classify_failure(exc) if self.relay.client_auth else None
            if refused is not None:
                # A refused client certificate: counted as such, and as the handshake error it is.
                self.relay.stats.client_auth_failures[refused] += 1
                self.client_cert = take_refused()
                self._count_handshake_error(classify_handshake_error(exc))
                self.close(CloseReason.CLIENT_AUTH, refused)
                return
            self._handshake_failed("invalid_sni" if bad_name else classify_handshake_error(exc))
            return
        self._flush()
        relay = self.relay
        stats = relay.stats
        tls = pipe.tls  # the C object's methods: once per connection, no pipe frames
        self.version = version = tls.version() or "-"
        cipher = tls.cipher()
        self.cipher = cipher = cipher[0] if cipher else "-"
        stats.handshakes[(version, cipher)] += 1
        if tls.session_reused:
            stats.resumptions[version] += 1
        stats.handshake_duration.observe(perf_counter() - self._started)
        if relay.client_auth:
            # Verified by OpenSSL against the CA and by the allow-list, or absent (optional).
            der = pipe.tls.getpeercert(True)
            self.client_cert = identity_of(der) if der else None
        if relay.proxy_protocol != "off":
            self._preamble = self._proxy_header()
        self.state = CONNECTING
        self._deadline = relay.time() + relay.timeouts.connect
        self._dial = Dial(self._connect(), relay.loop)

    def _proxy_header(self) -> bytes:
        """The PROXY header for this connection, built once, before the backend is dialled."""
        transport = self._transport
        if transport is None:
            return b""
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        tls = None
        if self.relay.proxy_protocol == "v2":
            pipe = self.pipe
            sig_alg, key_alg = served_certificate(pipe.tls)
            identity = self.client_cert
            tls = TLSDetails(
                version=self.version,
                cipher=self.cipher,
                sni=pipe.server_name(),
                sig_alg=sig_alg,
                key_alg=key_alg,
                cert_conn=identity is not None and not pipe.ssl.session_reused,
                cert_sess=identity is not None,
                verified=identity is not None,
                cn=identity.cn if identity is not None else None,
            )
        return header(self.relay.proxy_protocol, peer, local, tls)

    def _count_handshake_error(self, reason: str) -> None:
        self.relay.stats.handshake_errors[reason] += 1

    def _handshake_failed(self, reason: str) -> None:
        self._count_handshake_error(reason)
        self.close(CloseReason.HANDSHAKE_ERROR, reason)

    # ---- backend ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        relay = self.relay
        started = perf_counter()
        target = relay.backend
        try:
            if isinstance(target, TcpAddress):
                await relay.loop.create_connection(
                    lambda: BackendProtocol(self), target.host, target.port
                )
            else:
                await relay.loop.create_unix_connection(
                    lambda: BackendProtocol(self), str(target.path)
                )
        except (OSError, asyncio.CancelledError) as exc:
            self._connect_failed(classify_connect_error(exc), exc)
            return
        relay.stats.backend_connect_duration.observe(perf_counter() - started)

    def _connect_failed(self, reason: str, exc: BaseException) -> None:
        self._dial = None
        if self.state != CONNECTING:
            return
        self.relay.stats.backend_connect_errors[reason] += 1
        log.warning(
            "backend %s unavailable (%s): %s", self.relay.backend, reason, exc or "timed out"
        )
        # Nothing reached the client yet: close at once, no close_notify (it would read as a
        # clean, empty answer).
        self.close(CloseReason.BACKEND_CONNECT, reason)

    def backend_made(self, transport: asyncio.Transport) -> None:
        self._dial = None
        if self.state != CONNECTING:  # the client went away while we dialled
            transport.abort()
            return
        self.backend = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=0)
        if self._transport is not None:
            self._transport.set_write_buffer_limits(high=WRITE_HIGH, low=0)
        self.state = OPEN
        if self._preamble:
            # The PROXY header precedes every relayed byte: written before the first decrypt.
            transport.write(self._preamble)
        self._last = self.relay.time()
        self._moved = -1
        self._lean = False
        if self.pipe.incoming.pending:
            self._decrypt_to_backend()
        if self.state != OPEN:
            return
        if self._client_done:
            self._half_close_backend()
        else:
            self._update_client_reading()

    def from_backend(self, nbytes: int) -> None:
        self.to_client += nbytes
        self._streaming = nbytes >= WRITE_HIGH
        view = self.relay.buffer[:nbytes]
        pipe = self.pipe
        transport = self._transport
        assert transport is not None
        try:
            if nbytes <= pipe.out_slice:
                pipe.tls.write(view)
                transport.write(pipe.outgoing.read())
                return
            transport.writelines(pipe.encrypt(view, self.to_client))
        except ssl.SSLError as exc:
            log.debug("TLS write failed: %s", exc)
            self.abort(CloseReason.TLS_WRITE_ERROR)

    def backend_eof(self) -> bool:
        """The backend finished its answer: end the client stream with close_notify."""
        self.backend_done = True
        self._send_close_notify()
        if self._client_done:
            self.close(CloseReason.DONE)
            return False
        return True  # the client may still be sending: keep the backend's write side open

    def backend_full(self, full: bool) -> None:
        self._backend_full = full
        self._update_client_reading()

    def backend_lost(self, exc: Exception | None) -> None:
        self.backend = None
        if self.state == CLOSED:
            return
        if exc is not None:
            # Reset mid-stream: no close_notify, so the client can tell the answer is truncated.
            self.close(CloseReason.BACKEND_RESET)
        elif not self.backend_done:
            self.backend_done = True
            self.close(CloseReason.DONE, notify=True)

    # ---- relay -----------------------------------------------------------------------------

    def _decrypt_to_backend(self) -> None:
        try:
            data = self.pipe.tls.read(SSL_READ_SIZE)
        except ssl.SSLError as exc:
            self._read_failed(exc)
            return
        self._decrypted(data)

    def _decrypted(self, data: bytes) -> None:
        """Relay the record just read and every further one the incoming BIO holds."""
        try:
            chunks, finished = self.pipe.read_records(data)
        except ssl.SSLError as exc:
            self._read_failed(exc)
            return
        backend = self.backend
        if chunks and backend is not None:
            if len(chunks) == 1:
                data = chunks[0]
                self.to_backend += len(data)
                backend.write(data)
            else:
                self.to_backend += sum(map(len, chunks))
                backend.writelines(chunks)
        if self.pipe.outgoing.pending:
            self._flush()
        if finished:
            self._client_finished()

    def _read_failed(self, exc: ssl.SSLError) -> None:
        """SSL_read raised: a partial record (wait), close_notify (EOF), or a bad record."""
        if isinstance(exc, ssl.SSLWantReadError | ssl.SSLZeroReturnError):
            self._flush()
            if isinstance(exc, ssl.SSLZeroReturnError):
                self._client_finished()
            return
        # A record failed (bad MAC, decode error, renegotiation...): its bytes were never
        # returned, so nothing unauthenticated reaches the backend. Send the alert, close.
        self._flush()
        log.info("TLS error from client %s: %s", self._peer_text(), exc.reason or exc)
        self.close(CloseReason.TLS_ERROR, (exc.reason or "other").lower(), reset_backend=True)

    def _flush(self) -> None:
        outgoing = self.pipe.outgoing
        if outgoing.pending and self._transport is not None:
            self._transport.write(outgoing.read())

    def _update_client_reading(self) -> None:
        transport = self._transport
        if transport is None or self.state != OPEN or self._client_done:
            return
        if self._backend_full:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _client_finished(self) -> None:
        """The client will send no more (close_notify or TCP FIN): pass the EOF on."""
        if self._client_done:
            return
        self._client_done = True
        if self.state == OPEN:
            if self.backend_done:
                self.close(CloseReason.DONE)
            else:
                self._half_close_backend()

    def _half_close_backend(self) -> None:
        backend = self.backend
        if backend is not None and backend.can_write_eof():
            backend.write_eof()
        elif backend is not None:
            backend.close()

    def _send_close_notify(self) -> None:
        data = self.pipe.close_notify()
        transport = self._transport
        if transport is not None:
            if data:
                transport.write(data)
            if not self._client_done:
                # TCP FIN after close_notify; keep reading until the client closes its side.
                transport.write_eof()

    # ---- the sweeper's view, and closing ---------------------------------------------------

    @property
    def close_reason(self) -> str:
        """The `reason=` its log line carries (`done` until a close says otherwise)."""
        return self._reason.text(self._detail)

    def tick(self, now: float, idle: float, releaser: BioReleaser | None) -> bool:
        """The sweeper's one call: notice activity, enforce the deadline of the current phase
        (handshake, dial, idle, close), give a quiet relay's BIO buffers back (True if freed)."""
        if self.state == OPEN:
            # Activity is noticed here, from the byte counters, so the relay's hot path never
            # reads the clock.
            moved = self.to_backend + self.to_client
            if moved != self._moved:
                self._moved = moved
                self._last = now
                self._lean = False
            elif now - self._last >= idle:
                # No bytes either way for `timeouts.idle`.
                self.close(CloseReason.IDLE_TIMEOUT, notify=not self.backend_done)
            elif not self._lean and releaser is not None:
                # Quiet for a whole sweep: its BIO buffers (sized by the largest slice, record
                # or handshake flight it ever moved) go back until it moves again.
                self._lean = True
                return self.pipe.release(releaser)
        elif now >= self._deadline:
            self._expired()
        return False

    def _expired(self) -> None:
        """The current phase ran past its deadline."""
        state = self.state
        if state == CLOSED:
            # Closing, but the client has not taken what is queued within `timeouts.close`
            # (a zero window): reset, so that it gives back its slot and buffers. The logged
            # reason stays the one the close was for.
            self._release_backend(abort=True)
            if self._transport is not None:
                self._transport.abort()
        elif state == HANDSHAKE:
            self._handshake_failed("timeout")
        elif state == CONNECTING and self._dial is not None:
            self._dial.cancel()

    def close(
        self,
        reason: CloseReason,
        detail: str | None = None,
        *,
        notify: bool = False,
        reset_backend: bool = False,
        reset: bool = False,
    ) -> None:
        """End the connection, the one way every path takes.

        `notify` sends our close_notify first; `reset_backend` resets the backend (it must not
        mistake a cut stream for a finished one) instead of closing it; `reset` resets both
        sides at once. Otherwise the client transport is closed gracefully, with
        `timeouts.close` to deliver what is queued before it is reset.
        """
        self._reason = reason
        self._detail = detail
        if notify:
            self._send_close_notify()
        if reset:
            self.state = CLOSED
            if self._dial is not None:
                self._dial.cancel()
            if self.backend is not None:
                self.backend.abort()
            if self._transport is not None:
                self._transport.abort()
            return
        self.state = CLOSED
        relay = self.relay
        self._deadline = relay.time() + relay.timeouts.close
        self._release_backend(abort=reset_backend)
        if self._transport is not None:
            self._transport.close()

    def abort(self, reason: CloseReason) -> None:
        """Drop the connection now (drain deadline, fatal error): both sides reset."""
        self.close(reason, reset=True)

    def _release_backend(self, *, abort: bool) -> None:
        if self.backend is not None:
            if abort:
                self.backend.abort()
            else:
                self.backend.close()

    def _peer_text(self) -> str:
        peer = self._peer
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return "-"

    def _finish(self, *, abort_backend: bool) -> None:
        """Runs once, when the client transport is gone: release everything, account, log."""
        relay = self.relay
        if self not in relay.active:
            return
        self.state = CLOSED
        if self._dial is not None:
            self._dial.cancel()
            self._dial = None
        self._release_backend(abort=abort_backend)
        stats = relay.stats
        stats.bytes_to_backend += self.to_backend
        stats.bytes_to_client += self.to_client
        relay.forget(self)
        if relay.log_connections and log.isEnabledFor(logging.INFO):
            connection_closed(
                log,
                self._peer_text(),
                _printable_sni(self.pipe.server_name()),
                self.version,
                self.cipher,
                self.to_backend,
                self.to_client,
                # Whole microseconds: no float repr (a decimal conversion) per connection.
                int((perf_counter() - self._started) * 1e6),
                self.close_reason,
                self.client_cert,
            )
