"""The connection pump: TLS over memory BIOs on plain transports, relayed to a plain backend.

Why our own TLS layer instead of `create_server(ssl=...)`: asyncio's and uvloop's SSL transports
close without sending the alert OpenSSL queued (CPython gh-98078), so a TLS 1.1 client would see
an EOF instead of `protocol_version`. Driving `SSLObject` over `MemoryBIO` ourselves sends every
alert before the close, answers close_notify, keeps client half-close, and lets us bound the
per-connection buffers: network reads land in one buffer shared by every connection of the loop,
and are fed to the BIOs in slices (`SMALL_SLICE`, then `TLS_SLICE` for bulk), so a BIO (which
never shrinks on its own) stays small however large a burst was; and once a relay has been quiet
for a sweep, its BIO buffers are freed outright (biomem.py), so an idle connection costs its TLS
state whatever it carried.

One connection: accept -> limit check -> handshake (timeout) -> dial backend (timeout) -> relay
both ways with backpressure -> close both sides -> one log line + stats.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
import ssl
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from fopproxy.biomem import bio_releaser
from fopproxy.clientauth import ClientIdentity, classify_failure, identity_of
from fopproxy.config import TcpAddress, Timeouts, UnixAddress
from fopproxy.logs import connection_closed
from fopproxy.proxyproto import ProxyProtocol, TLSDetails, header
from fopproxy.resources import trim_heap
from fopproxy.stats import Stats
from fopproxy.tls import ServerSSLObject
from fopproxy.tlsinfo import served_certificate

if TYPE_CHECKING:
    from fopproxy.certs import CertificateSet

log = logging.getLogger("fopproxy.conn")

# One network read may fill this much; shared by all connections of a loop, never per connection.
READ_BUFFER_SIZE = 256 * 1024
# Memory BIOs keep their largest size for the life of the connection, so slice sizes decide the
# resident size: ciphertext is fed to the incoming BIO, and plaintext given to SSL_write (one
# record each, drained from the outgoing BIO at once), in slices of SMALL_SLICE until the
# connection has moved BULK_AFTER bytes that way, then in full 16 KiB records. API-sized
# exchanges keep ≈5 KiB BIOs; bulk transfers get the fewest records and calls per byte (measured
# trade-off in docs/PERFORMANCE.md). The same idea as dynamic TLS record sizing.
SMALL_SLICE = 4 * 1024
TLS_SLICE = 16 * 1024
BULK_AFTER = 256 * 1024
# SSL_read returns at most one record's plaintext; asking for more costs nothing.
SSL_READ_SIZE = 16 * 1024 + 256

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


_PLAIN_SNI = re.compile(r"[A-Za-z0-9._*-]{1,253}").fullmatch


def _printable_sni(name: str | None) -> str:
    if not name:
        return "-"
    if _PLAIN_SNI(name):  # the usual case, checked in C
        return name
    return "".join(c if c.isalnum() or c in ".-_*" else "?" for c in name[:253])


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
        self.buffer = memoryview(bytearray(READ_BUFFER_SIZE))
        # Before the relay is open, reads are at most one slice: what arrives while the backend
        # is dialled waits in the incoming BIO, which must stay small.
        self.small_buffer = self.buffer[:SMALL_SLICE]
        # One timer per listener instead of one per connection phase: creating and cancelling a
        # loop timer (a libuv handle) per phase cost more than scanning the open connections.
        self.sweep_interval = min(1.0, max(0.01, min(timeouts.handshake, timeouts.connect,
                                                     timeouts.idle) / 4))
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_rejection_log = 0.0
        self.bio_releaser = bio_releaser()

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
            state = conn.state
            if state == OPEN:
                # Activity is noticed here, from the byte counters, so the relay's hot path
                # never reads the clock.
                moved = conn.to_backend + conn.to_client
                if moved != conn._moved:
                    conn._moved = moved
                    conn._last = now
                    conn._lean = False
                elif now - conn._last >= idle:
                    conn._idle_timeout()
                elif not conn._lean and releaser is not None:
                    # Quiet for a whole sweep: its BIO buffers (sized by the largest slice,
                    # record or handshake flight it ever moved) go back until it moves again.
                    conn._lean = True
                    if releaser.release(conn._in) | releaser.release(conn._out):
                        released += 1
            elif state != CLOSED and now >= conn._deadline:
                conn._expired()
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
        for conn in list(self.active):
            conn.abort(reason)


class BackendProtocol(asyncio.BufferedProtocol):
    """The plain side; it only forwards events to its ClientConnection."""

    __slots__ = ("buffer", "buffer_updated", "conn")

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.buffer = conn.relay.buffer
        # Every backend read goes straight to the connection: one Python frame less per read.
        self.buffer_updated = conn.from_backend  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.backend_made(transport)  # type: ignore[arg-type]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def eof_received(self) -> bool:
        return self.conn.backend_eof()

    def pause_writing(self) -> None:
        self.conn.backend_full(True)

    def resume_writing(self) -> None:
        self.conn.backend_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.backend_lost(exc)


class ClientConnection(asyncio.BufferedProtocol):
    """One client: TLS state machine, relay both ways, timers, accounting."""

    __slots__ = (
        "_backend_full",
        "_client_done",
        "_connect_task",
        "_deadline",
        "_in",
        "_in_slice",
        "_last",
        "_lean",
        "_moved",
        "_out",
        "_out_slice",
        "_peer",
        "_preamble",
        "_reason",
        "_ssl",
        "_started",
        "_tls",
        "_transport",
        "backend",
        "backend_done",
        "cipher",
        "client_cert",
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
        self._connect_task: asyncio.Task[None] | None = None
        self._client_done = False
        self.backend_done = False
        self._backend_full = False
        self._reason = "done"
        self.to_backend = 0
        self.to_client = 0
        self._in_slice = SMALL_SLICE
        self._out_slice = SMALL_SLICE
        self.version = "-"
        self.cipher = "-"
        self._peer: Any = None
        self.client_cert: ClientIdentity | None = None
        self._preamble = b""

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
        stats.connections_accepted += 1
        stats.connections_active = len(relay.active)
        if relay.log_connections:
            self._peer = transport.get_extra_info("peername")
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        ctx = relay.certificates().context
        # The context's sslobject_class is ServerSSLObject (tls.build_context).
        ssl_object: ServerSSLObject = ctx.wrap_bio(  # type: ignore[assignment]
            self._in, self._out, server_side=True
        )
        self._ssl = ssl_object
        # SSLObject.read/write are one-line Python wrappers around the C object's methods (same
        # signatures); calling those directly saves a Python frame per record. Fall back to the
        # public object should a CPython ever not have it.
        self._tls: Any = getattr(ssl_object, "_sslobj", ssl_object)
        # Durations use a real clock: uvloop's loop.time() is cached per loop pass in whole
        # milliseconds, too coarse for handshake and dial histograms. Deadlines stay on it.
        self._started = perf_counter()
        self._deadline = relay.time() + relay.timeouts.handshake
        if relay._sweeper is None:
            relay._watch()

    def get_buffer(self, sizehint: int) -> memoryview:
        relay = self.relay
        return relay.buffer if self.state == OPEN else relay.small_buffer

    def buffer_updated(self, nbytes: int) -> None:
        step = self._in_slice
        if nbytes <= step and self.state == OPEN:  # the hot path: at most a slice, relaying
            incoming = self._in
            incoming.write(self.relay.buffer[:nbytes])
            try:
                data = self._tls.read(SSL_READ_SIZE)
            except ssl.SSLError as exc:
                self._read_failed(exc)
                return
            backend = self.backend
            if data and not incoming.pending and backend is not None and not self._out.pending:
                # One whole record, the usual request: straight on, no further frame.
                self.to_backend += len(data)
                backend.write(data)
                return
            self._decrypted(data)
            return
        write = self._in.write
        if nbytes <= step:
            write(self.relay.buffer[:nbytes])
            if self.state == HANDSHAKE:  # ClientHello, then the client's second flight
                self._handshake()
            else:
                self._advance()
            return
        if step < TLS_SLICE and self.to_backend >= BULK_AFTER:
            step = self._in_slice = TLS_SLICE
        view = self.relay.buffer[:nbytes]
        for offset in range(0, nbytes, step):
            if self.state == CLOSED:
                return
            write(view[offset : offset + step])
            self._advance()

    def _advance(self) -> None:
        state = self.state
        if state == OPEN:
            self._decrypt_to_backend()
        elif state == HANDSHAKE:
            self._handshake()
        elif state == CONNECTING and self._in.pending >= SMALL_SLICE and self._transport:
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
            self._reason = "handshake_error:client_eof"
        elif exc is not None and self._reason == "done":
            self._reason = "client_reset"
        self._finish(abort_backend=exc is not None or not self._client_done)

    # ---- handshake -------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # the alert OpenSSL produced goes out before the close
            refused = classify_failure(exc) if self.relay.client_auth else None
            if refused is not None:
                # A refused client certificate: counted as such, and as the handshake error it is.
                self.relay.stats.client_auth_failures[refused] += 1
                self._handshake_failed(classify_handshake_error(exc), f"client_auth:{refused}")
                return
            self._handshake_failed(classify_handshake_error(exc))
            return
        self._flush()
        relay = self.relay
        stats = relay.stats
        tls = self._tls
        self.version = tls.version() or "-"
        cipher = tls.cipher()
        self.cipher = cipher[0] if cipher else "-"
        stats.handshakes[(self.version, self.cipher)] += 1
        stats.handshake_duration.observe(perf_counter() - self._started)
        if relay.client_auth:
            # Verified by OpenSSL against the CA and by the allow-list, or absent (optional).
            der = tls.getpeercert(True)
            self.client_cert = identity_of(der) if der else None
        if relay.proxy_protocol != "off":
            self._preamble = self._proxy_header()
        self.state = CONNECTING
        self._deadline = relay.time() + relay.timeouts.connect
        self._connect_task = relay.loop.create_task(self._connect())

    def _proxy_header(self) -> bytes:
        """The PROXY header for this connection, built once, before the backend is dialled."""
        transport = self._transport
        if transport is None:
            return b""
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        tls = None
        if self.relay.proxy_protocol == "v2":
            sig_alg, key_alg = served_certificate(self._tls)
            identity = self.client_cert
            tls = TLSDetails(
                version=self.version,
                cipher=self.cipher,
                sni=getattr(self._ssl, "sni", None),
                sig_alg=sig_alg,
                key_alg=key_alg,
                cert_conn=identity is not None and not self._ssl.session_reused,
                cert_sess=identity is not None,
                verified=identity is not None,
                cn=identity.cn if identity is not None else None,
            )
        return header(self.relay.proxy_protocol, peer, local, tls)

    def _expired(self) -> None:
        """The handshake or the backend dial ran past its timeout (called by Relay._sweep)."""
        if self.state == HANDSHAKE:
            self._handshake_failed("timeout")
        elif self.state == CONNECTING and self._connect_task is not None:
            self._connect_task.cancel()

    def _count_handshake_error(self, reason: str) -> None:
        self.relay.stats.handshake_errors[reason] += 1

    def _handshake_failed(self, reason: str, logged: str | None = None) -> None:
        self._count_handshake_error(reason)
        self._reason = logged or f"handshake_error:{reason}"
        self.state = CLOSED
        if self._transport is not None:
            self._transport.close()

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
        self._connect_task = None
        if self.state != CONNECTING:
            return
        self.relay.stats.backend_connect_errors[reason] += 1
        log.warning(
            "backend %s unavailable (%s): %s", self.relay.backend, reason, exc or "timed out"
        )
        self._reason = f"backend_connect:{reason}"
        self.state = CLOSED
        # Nothing reached the client yet: close at once, no close_notify (it would read as a
        # clean, empty answer).
        if self._transport is not None:
            self._transport.close()

    def backend_made(self, transport: asyncio.Transport) -> None:
        self._connect_task = None
        if self.state != CONNECTING:  # the client went away while we dialled
            transport.abort()
            return
        self.backend = transport
        self.state = OPEN
        if self._preamble:
            # The PROXY header precedes every relayed byte: written before the first decrypt.
            transport.write(self._preamble)
        self._last = self.relay.time()
        self._moved = -1
        self._lean = False
        if self._in.pending:
            self._decrypt_to_backend()
        if self.state != OPEN:
            return
        if self._client_done:
            self._half_close_backend()
        else:
            self._update_client_reading()

    def from_backend(self, nbytes: int) -> None:
        self.to_client += nbytes
        view = self.relay.buffer[:nbytes]
        write = self._tls.write
        out = self._out
        transport = self._transport
        assert transport is not None
        step = self._out_slice
        try:
            if nbytes <= step:
                write(view)
                transport.write(out.read())
                return
            if step < TLS_SLICE and self.to_client >= BULK_AFTER:
                step = self._out_slice = TLS_SLICE
            chunks = []
            offset = 0
            while offset < nbytes:
                # SSL_MODE_ENABLE_PARTIAL_WRITE: one record per call, so honour the count.
                offset += write(view[offset : offset + step])
                chunks.append(out.read())
            transport.writelines(chunks)
        except ssl.SSLError as exc:
            log.debug("TLS write failed: %s", exc)
            self.abort("tls_write_error")

    def backend_eof(self) -> bool:
        """The backend finished its answer: end the client stream with close_notify."""
        self.backend_done = True
        self._send_close_notify()
        if self._client_done:
            self._close_both()
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
            self._reason = "backend_reset"
            self.state = CLOSED
            if self._transport is not None:
                self._transport.close()
        elif not self.backend_done:
            self.backend_done = True
            self._send_close_notify()
            self._close_both()

    # ---- relay -----------------------------------------------------------------------------

    def _decrypt_to_backend(self) -> None:
        try:
            data = self._tls.read(SSL_READ_SIZE)
        except ssl.SSLError as exc:
            self._read_failed(exc)
            return
        self._decrypted(data)

    def _decrypted(self, data: bytes) -> None:
        """Relay the record just read and every further one the incoming BIO holds."""
        incoming = self._in
        read = self._tls.read
        chunks: list[bytes] = []
        finished = False
        try:
            # One SSL_read returns one whole record (SSL_READ_SIZE is above the largest), so
            # nothing stays buffered inside OpenSSL: an empty incoming BIO means done, without
            # asking SSL_pending or waiting for SSLWantReadError.
            while data:
                chunks.append(data)
                if not incoming.pending:
                    break
                data = read(SSL_READ_SIZE)
            else:
                # CPython returns b"" (not SSLZeroReturnError) for a clean close_notify.
                finished = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            finished = True
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
        if self._out.pending:
            self._flush()
        if finished:
            self._client_finished()

    def _read_failed(self, exc: ssl.SSLError) -> None:
        """SSL_read raised: a partial record (wait), close_notify (EOF), or a bad record."""
        if isinstance(exc, ssl.SSLWantReadError | ssl.SSLZeroReturnError):
            if self._out.pending:
                self._flush()
            if isinstance(exc, ssl.SSLZeroReturnError):
                self._client_finished()
            return
        # A record failed (bad MAC, decode error, renegotiation...): its bytes were never
        # returned, so nothing unauthenticated reaches the backend. Send the alert, close.
        self._flush()
        log.info("TLS error from client %s: %s", self._peer_text(), exc.reason or exc)
        self._reason = f"tls_error:{(exc.reason or 'other').lower()}"
        self._close_both(abort_backend=True)

    def _flush(self) -> None:
        if self._out.pending and self._transport is not None:
            self._transport.write(self._out.read())

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
                self._close_both()
            else:
                self._half_close_backend()

    def _half_close_backend(self) -> None:
        backend = self.backend
        if backend is not None and backend.can_write_eof():
            backend.write_eof()
        elif backend is not None:
            backend.close()

    def _send_close_notify(self) -> None:
        try:
            self._ssl.unwrap()  # once per connection: the public API is worth its frame here
        except ssl.SSLWantReadError:
            pass  # close_notify written; the peer's answer is not needed to send ours
        except (ssl.SSLError, ValueError) as exc:
            log.debug("close_notify not sent: %s", exc)
        self._flush()
        if self._transport is not None and not self._client_done:
            # TCP FIN after close_notify; keep reading until the client closes its side.
            self._transport.write_eof()

    # ---- timers and closing ----------------------------------------------------------------

    def _idle_timeout(self) -> None:
        """No bytes either way for `timeouts.idle` (called by Relay._sweep)."""
        self._reason = "idle_timeout"
        if not self.backend_done:
            self._send_close_notify()
        self._close_both()

    def _close_both(self, *, abort_backend: bool = False) -> None:
        self.state = CLOSED
        self._release_backend(abort=abort_backend)
        if self._transport is not None:
            self._transport.close()

    def _release_backend(self, *, abort: bool) -> None:
        """Reset the backend (it must not mistake a cut stream for a finished one) or close it."""
        if self.backend is not None:
            if abort:
                self.backend.abort()
            else:
                self.backend.close()

    def abort(self, reason: str) -> None:
        """Drop the connection now (drain deadline, fatal error): both sides reset."""
        self._reason = reason
        self.state = CLOSED
        if self._connect_task is not None:
            self._connect_task.cancel()
        if self.backend is not None:
            self.backend.abort()
        if self._transport is not None:
            self._transport.abort()

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
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        self._release_backend(abort=abort_backend)
        stats = relay.stats
        stats.bytes_to_backend += self.to_backend
        stats.bytes_to_client += self.to_client
        relay.forget(self)
        if relay.log_connections and log.isEnabledFor(logging.INFO):
            connection_closed(
                log,
                self._peer_text(),
                _printable_sni(getattr(self._ssl, "sni", None)),
                self.version,
                self.cipher,
                self.to_backend,
                self.to_client,
                # Whole microseconds: no float repr (a decimal conversion) per connection.
                int((perf_counter() - self._started) * 1e6),
                self._reason,
                self.client_cert,
            )
