"""One outbound connection: plain TCP from the local app, TLS to the server, relayed both ways.

Order, and why: the app's connection is accepted with reading paused, the server is dialled
(resolved anew each time, IPv6 and IPv4 in getaddrinfo's order), the handshake runs and the
server's name is checked; only then is the app read from. So a refused server never receives a
byte of the app's request: it stays in the kernel's socket buffer until the app is closed.

TLS runs over memory BIOs on a plain transport, as on the inbound side (relay.py explains why:
every alert goes out before a close, close_notify is ours to send, buffers stay bounded).
Backpressure: each side pauses reading the other while its write buffer is full. Half-close:
the app's EOF becomes close_notify toward the server (as ghostunnel's CloseWrite does); the
server's close_notify becomes a TCP FIN toward the app. A server reset mid-stream resets the app,
so a truncated answer is never mistaken for a whole one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from enum import StrEnum
from time import perf_counter

from fopproxy.config import OutboundConfig
from fopproxy.outbound.context import peer_name_problem
from fopproxy.outbound.material import OutboundStore, OutboundTLS
from fopproxy.outbound.reasons import classify_connect_error, classify_handshake_error
from fopproxy.outbound.stats import OutboundStats
from fopproxy.tlspipe import SSL_READ_SIZE, TLSPipe

log = logging.getLogger("fopproxy.conn")

DIALING, HANDSHAKE, OPEN, CLOSED = range(4)
READ_BUFFER_SIZE = 256 * 1024
# SO_LINGER on, 0 seconds: close() sends RST (and drops what was not sent yet).
RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class OutboundCloseReason(StrEnum):
    """The `reason=` of an outbound connection's log line (README, "Calling Google ...")."""

    DONE = "done"
    IDLE_TIMEOUT = "idle_timeout"
    APP_CLOSED = "app_closed"  # the app left before the server was verified
    APP_RESET = "app_reset"
    SERVER_RESET = "server_reset"
    DRAIN_TIMEOUT = "drain_timeout"
    TLS_ERROR = "tls_error"  # :<openssl reason>, a bad record from the server
    OUTBOUND_ERROR = "outbound_error"  # :<reason of fopproxy_outbound_tls_handshake_errors_total>

    def text(self, detail: str | None = None) -> str:
        return f"{self.value}:{detail}" if detail is not None else self.value
# What the app may send before the server is verified is held here, never sent; past this, the
# app is not read from until then.
EARLY_LIMIT = 64 * 1024


class OutboundListener:
    """What every connection of one outbound shares: the store of the current client context,
    counters, one read buffer, and one sweep timer for every deadline."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        entry: OutboundConfig,
        store: OutboundStore,
        stats: OutboundStats,
        *,
        max_connections: int,
        log_connections: bool,
    ) -> None:
        self.loop = loop
        self.time = loop.time
        self.entry = entry
        self.store = store
        self.stats = stats
        self.max_connections = max_connections
        self.log_connections = log_connections
        self.buffer = memoryview(bytearray(READ_BUFFER_SIZE))
        self.active: set[OutboundConnection] = set()
        self.accepting = True
        self.server: asyncio.AbstractServer | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        t = entry.timeouts
        self.sweep_interval = min(1.0, max(0.01, min(t.connect, t.handshake, t.idle) / 4))
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_rejection_log = 0.0

    def protocol_factory(self) -> OutboundConnection:
        return OutboundConnection(self)

    def full(self) -> bool:
        return len(self.active) >= self.max_connections

    def note_rejected(self, reason: str) -> None:
        """Log shedding at most once a second: a flood must not become a flood of log lines."""
        now = self.time()
        if now >= self._next_rejection_log:
            self._next_rejection_log = now + 1.0
            log.warning(
                "outbound %s: rejecting new connections (%s): %d open, limit %d",
                self.entry.name, reason, len(self.active), self.max_connections,
            )

    def add(self, conn: OutboundConnection) -> None:
        self.active.add(conn)
        self.stats.active = len(self.active)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)

    def discard(self, conn: OutboundConnection) -> bool:
        """Forget `conn`; False if it was already forgotten (so it is accounted once)."""
        if conn not in self.active:
            return False
        self.active.discard(conn)
        self.stats.active = len(self.active)
        if not self.active:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()
        return True

    def _sweep(self) -> None:
        """Expire dials and handshakes, close idle relays; one timer for all connections."""
        self._sweeper = None
        now = self.time()
        idle = self.entry.timeouts.idle
        for conn in list(self.active):
            if conn.state == OPEN:
                # Activity is noticed here, from the byte counters: the hot path reads no clock.
                moved = conn.to_server + conn.to_app
                if moved != conn.moved:
                    conn.moved = moved
                    conn.last = now
                elif now - conn.last >= idle:
                    conn.idle_timeout()
            elif conn.state != CLOSED and now >= conn.deadline:
                conn.expired()
        if self.active:
            self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)

    def stop_accepting(self) -> None:
        self.accepting = False
        if self.server is not None:
            self.server.close()

    async def wait_idle(self) -> None:
        if self.active:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def abort_all(self, reason: OutboundCloseReason) -> None:
        for conn in list(self.active):
            conn.abort(reason)

    def log_closed(self, conn: OutboundConnection, micros: int) -> None:
        """The connection line, `direction=outbound`; never any payload byte."""
        if not log.isEnabledFor(logging.INFO):
            return
        event = {
            "direction": "outbound",
            "outbound": self.entry.name,
            "client": conn.peer,
            "server": str(self.entry.connect),
            "sni": self.entry.server_name,
            "version": conn.version,
            "cipher": conn.cipher,
            "resumed": "yes" if conn.resumed else "no",
            "bytes_to_server": conn.to_server,
            "bytes_to_app": conn.to_app,
            "duration": micros / 1e6,  # seconds, a number in JSON as on the inbound line
            "reason": conn.reason,
        }
        log.info("connection closed", extra={"event": event})


class UpstreamProtocol(asyncio.BufferedProtocol):
    """The TLS server's side; it only forwards events to its OutboundConnection."""

    __slots__ = ("buffer", "buffer_updated", "conn")

    def __init__(self, conn: OutboundConnection) -> None:
        self.conn = conn
        self.buffer = conn.listener.buffer
        # Every server read goes straight to the connection: one Python frame less per read.
        self.buffer_updated = conn.from_server  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.upstream_made(transport)  # type: ignore[arg-type]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def eof_received(self) -> bool:
        return self.conn.server_eof()

    def pause_writing(self) -> None:
        self.conn.server_full(True)

    def resume_writing(self) -> None:
        self.conn.server_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(exc)


class OutboundConnection(asyncio.BufferedProtocol):
    """The app's side of one outbound connection, and the state of the whole connection.

    The TLS record layer is the relay's (tlspipe.TLSPipe), used here as a client.
    """

    def __init__(self, listener: OutboundListener) -> None:
        self.listener = listener
        self.state = DIALING
        self.app: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self._dial_task: asyncio.Task[None] | None = None
        self._pipe: TLSPipe | None = None
        self._tls: OutboundTLS | None = None  # the build this connection started with
        self._app_done = False
        self._early = bytearray()  # the app's bytes that arrived before the server was verified
        self._server_done = False
        self._sent_close_notify = False
        self._server_answered = False
        self._server_record_version: int | None = None
        self._reason = OutboundCloseReason.DONE.text()
        self.to_server = 0
        self.to_app = 0
        self.version = "-"
        self.cipher = "-"
        self.resumed = False
        self._peer = "-"
        self._started = perf_counter()
        self.deadline = 0.0
        self.last = 0.0
        self.moved = -1

    # ---- the app -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self.listener
        self.app = transport  # type: ignore[assignment]  # a stream server's: a Transport
        if not listener.accepting or listener.full():
            listener.note_rejected("draining" if not listener.accepting else "limit")
            self.state = CLOSED
            transport.abort()  # type: ignore[attr-defined]
            return
        # Nothing of the request may leave before the server is verified. (uvloop may deliver
        # one read despite this pause; buffer_updated holds such bytes back.)
        transport.pause_reading()  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = f"{peer[0]}:{peer[1]}"
        listener.add(self)
        self.deadline = listener.time() + listener.entry.timeouts.connect
        self._dial_task = listener.loop.create_task(self._dial())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.listener.buffer

    def buffer_updated(self, nbytes: int) -> None:
        """Plaintext from the app: encrypt it and send the records to the server."""
        if self.state != OPEN:
            self._hold(nbytes)
            return
        self._send(self.listener.buffer[:nbytes])

    def _hold(self, nbytes: int) -> None:
        """Keep bytes that came before the server was verified; they go once it is."""
        if self.state == CLOSED:
            return
        self._early += self.listener.buffer[:nbytes]
        if len(self._early) >= EARLY_LIMIT and self.app is not None:
            self.app.pause_reading()

    def _send(self, view: memoryview) -> None:
        pipe = self._pipe
        upstream = self.upstream
        if pipe is None or upstream is None:
            return
        nbytes = len(view)
        try:
            if nbytes <= pipe.out_slice:
                pipe.tls.write(view)
                upstream.write(pipe.outgoing.read())
            else:
                upstream.writelines(pipe.encrypt(view, self.to_server))
        except ssl.SSLError as exc:
            self._tls_error(exc)
            return
        self.to_server += nbytes
        self.listener.stats.bytes_to_server += nbytes

    def eof_received(self) -> bool:
        """The app sent all it will: tell the server with close_notify, keep reading its answer."""
        self._app_done = True
        if self.state in (DIALING, HANDSHAKE):
            return True  # passed on once the server is verified
        if self.state == OPEN:
            self._send_close_notify()
            if self._server_done:
                self._close_both()
                return False
        return True

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.state == OPEN:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        done = OutboundCloseReason.DONE.text()
        if self.state in (DIALING, HANDSHAKE) and self._reason == done:
            self._reason = OutboundCloseReason.APP_CLOSED.text()
        elif exc is not None and self._reason == done:
            self._reason = OutboundCloseReason.APP_RESET.text()
        self.app = None
        self._finish(abort_upstream=exc is not None or not self._app_done)

    # ---- dialling the server -------------------------------------------------------------

    async def _dial(self) -> None:
        """Resolve `connect` now (DNS may have moved) and try each address in turn."""
        listener = self.listener
        loop = listener.loop
        target = listener.entry.connect
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            error: OSError | None = None
            for family, kind, proto, _, address in infos:
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    await loop.sock_connect(sock, address)
                except OSError as exc:
                    sock.close()
                    error = exc
                    continue
                except BaseException:
                    sock.close()
                    raise
                await loop.create_connection(lambda: UpstreamProtocol(self), sock=sock)
                return
            raise error or OSError("no address to connect to")
        except (OSError, asyncio.CancelledError) as exc:
            self._dial_task = None
            if self.state == DIALING:
                self._refuse(classify_connect_error(exc), f"connect {target}: {exc or 'timed out'}")

    # ---- the server ----------------------------------------------------------------------

    def upstream_made(self, transport: asyncio.Transport) -> None:
        self._dial_task = None
        if self.state != DIALING:  # the app went away while we dialled
            transport.abort()
            return
        self.upstream = transport
        listener = self.listener
        tls = self._tls = listener.store.current
        pipe = self._pipe = TLSPipe(
            tls.context, server_side=False, server_hostname=listener.entry.server_name
        )
        if tls.session is not None:
            pipe.ssl.session = tls.session  # resume: fewer full handshakes toward the server
        self.state = HANDSHAKE
        self.deadline = listener.time() + listener.entry.timeouts.handshake
        self._handshake()

    def from_server(self, nbytes: int) -> None:
        pipe = self._pipe
        if pipe is None:
            return
        buffer = self.listener.buffer
        if self.state == OPEN:
            pipe.incoming.write(buffer[:nbytes])
            self._decrypt()
        elif self.state == HANDSHAKE:
            if self._server_record_version is None and nbytes >= 3:
                # The first record's header (type, version): what version the server speaks.
                self._server_record_version = buffer[1] << 8 | buffer[2]
            pipe.incoming.write(buffer[:nbytes])
            # More than one alert record (7 bytes): the server's first flight came.
            self._server_answered = self._server_answered or pipe.incoming.pending > 7
            self._handshake()

    def server_eof(self) -> bool:
        """TCP FIN from the server: with or without close_notify, its stream ends here."""
        if self.state == HANDSHAKE:
            self._handshake_failed("peer_closed", "the server closed the connection")
            return False
        if self.state == OPEN:
            self._server_finished()
            return not self._app_done
        return False

    def server_full(self, full: bool) -> None:
        app = self.app
        if app is None or self.state != OPEN or self._app_done:
            return
        if full:
            app.pause_reading()
        else:
            app.resume_reading()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if self.state == HANDSHAKE:
            self._handshake_failed("peer_closed", str(exc or "the server closed the connection"))
        elif self.state == OPEN:
            if exc is not None:
                # A reset mid-answer: reset the app too, so it cannot take a cut answer as whole.
                self._reason = OutboundCloseReason.SERVER_RESET.text()
                self.state = CLOSED
                self._reset_app()
            else:
                self._server_finished()
                self._close_both()

    # ---- handshake -----------------------------------------------------------------------

    def _handshake(self) -> None:
        pipe = self._pipe
        assert pipe is not None
        try:
            finished = pipe.handshake()
        except ssl.SSLError as exc:
            self._flush()  # our alert goes out before the close
            reason = classify_handshake_error(
                exc,
                server_answered=self._server_answered,
                server_record_version=self._server_record_version,
            )
            detail = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else None
            self._handshake_failed(reason, str(detail or exc.reason or exc))
            return
        self._flush()
        if not finished:
            return
        listener = self.listener
        peer = pipe.ssl.getpeercert()
        problem = peer_name_problem(peer, listener.entry.server_name)  # type: ignore[arg-type]
        if problem is not None:
            self._handshake_failed("hostname_mismatch", problem)
            return
        stats = listener.stats
        self.version = pipe.version()
        self.cipher = pipe.cipher()
        self.resumed = pipe.ssl.session_reused
        stats.handshakes[(self.version, self.cipher)] += 1
        if self.resumed:
            stats.resumed += 1
        not_after = peer.get("notAfter") if peer else None
        if isinstance(not_after, str):
            stats.peer_not_after = float(ssl.cert_time_to_seconds(not_after))
        self._keep_session()
        self.state = OPEN
        self.last = listener.time()
        if self._early:
            early, self._early = self._early, bytearray()
            self._send(memoryview(early))
        if pipe.incoming.pending and self.state == OPEN:
            self._decrypt()
        if self.state != OPEN or self.app is None:
            return
        if self._app_done:
            self._send_close_notify()
            if self._server_done:
                self._close_both()
        else:
            self.app.resume_reading()

    def _keep_session(self) -> None:
        """Offer this session to the next connection (TLS 1.3 tickets arrive after the end)."""
        pipe = self._pipe
        current = self.listener.store.current
        if pipe is not None and pipe.ssl.session is not None and self._tls is current:
            current.session = pipe.ssl.session

    def _refuse(self, reason: str, detail: str) -> None:
        """Dial or handshake failed: count it, close the app without a byte sent either way."""
        self.listener.stats.handshake_errors[reason] += 1
        log.warning("outbound %s refused (%s): %s", self.listener.entry.name, reason, detail)
        self._reason = OutboundCloseReason.OUTBOUND_ERROR.text(reason)
        self.state = CLOSED
        self._close_upstream()
        if self.app is not None:
            self.app.close()

    def _handshake_failed(self, reason: str, detail: str) -> None:
        self._refuse(reason, f"{self.listener.entry.connect}: {detail}")

    def expired(self) -> None:
        """The dial or the handshake ran past its timeout (called by the listener's sweep)."""
        if self.state == DIALING and self._dial_task is not None:
            self._dial_task.cancel()
        elif self.state == HANDSHAKE:
            self._handshake_failed("timeout", "no handshake within the timeout")

    # ---- relay ---------------------------------------------------------------------------

    def _decrypt(self) -> None:
        pipe = self._pipe
        assert pipe is not None
        try:
            data = pipe.tls.read(SSL_READ_SIZE)
            chunks, finished = pipe.read_records(data)
        except ssl.SSLWantReadError:
            chunks, finished = [], False
        except ssl.SSLZeroReturnError:
            chunks, finished = [], True
        except ssl.SSLError as exc:
            self._tls_error(exc)
            return
        if chunks and self.app is not None:
            count = sum(map(len, chunks))
            self.to_app += count
            self.listener.stats.bytes_to_app += count
            if len(chunks) == 1:
                self.app.write(chunks[0])
            else:
                self.app.writelines(chunks)
        if pipe.outgoing.pending:
            self._flush()
        if finished:
            self._server_finished()

    def _tls_error(self, exc: ssl.SSLError) -> None:
        """A bad record from the server: nothing of it reached the app; reset the app."""
        self._flush()
        self._reason = OutboundCloseReason.TLS_ERROR.text((exc.reason or "other").lower())
        self.state = CLOSED
        self._close_upstream()
        self._reset_app()

    def _server_finished(self) -> None:
        if self._server_done:
            return
        self._server_done = True
        self._keep_session()
        if self._app_done:
            self._close_both()
        elif self.app is not None and self.app.can_write_eof():
            self.app.write_eof()

    def _send_close_notify(self) -> None:
        if self._sent_close_notify or self._pipe is None:
            return
        self._sent_close_notify = True
        data = self._pipe.close_notify()
        if data and self.upstream is not None:
            self.upstream.write(data)

    def _flush(self) -> None:
        pipe = self._pipe
        if pipe is not None and pipe.outgoing.pending and self.upstream is not None:
            self.upstream.write(pipe.outgoing.read())

    # ---- timers and closing --------------------------------------------------------------

    def idle_timeout(self) -> None:
        self._reason = OutboundCloseReason.IDLE_TIMEOUT.text()
        self._close_both()

    def _close_both(self) -> None:
        self.state = CLOSED
        if self.upstream is not None:
            self._send_close_notify()
        self._close_upstream()
        if self.app is not None:
            self.app.close()

    def _reset_app(self) -> None:
        """End the app's connection with a TCP reset, not a FIN: plain TCP has no close_notify,
        so a reset is the only way to tell the app its answer was cut short."""
        app = self.app
        if app is None:
            return
        sock = app.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        app.abort()

    def _close_upstream(self) -> None:
        """Close the server's side once, after what was written (an alert, close_notify) went
        out; forgetting it means the app's close that follows cannot turn it into a reset."""
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()

    def abort(self, reason: OutboundCloseReason) -> None:
        """Drop the connection now (drain deadline): both sides reset."""
        self._reason = reason.text()
        self.state = CLOSED
        if self._dial_task is not None:
            self._dial_task.cancel()
        if self.upstream is not None:
            self.upstream.abort()
        if self.app is not None:
            self.app.abort()

    def _finish(self, *, abort_upstream: bool) -> None:
        """Runs once, when the app's transport is gone: release, account, log."""
        listener = self.listener
        if not listener.discard(self):
            return
        self.state = CLOSED
        if self._dial_task is not None:
            self._dial_task.cancel()
            self._dial_task = None
        upstream = self.upstream
        if upstream is not None:
            if abort_upstream:
                upstream.abort()
            else:
                self._send_close_notify()
                upstream.close()
        if listener.log_connections:
            listener.log_closed(self, int((perf_counter() - self._started) * 1e6))

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def peer(self) -> str:
        return self._peer
