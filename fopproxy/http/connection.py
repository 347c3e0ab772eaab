"""The glue between the TLS connection of relay.py and the http pump.

After the handshake, tcp mode dials the backend; http mode puts an HttpPump where the backend
transport would be (the pump dials when the first request is complete). The TLS connection keeps
everything it owns: the handshake, records, close_notify, half-close, the idle sweep and the
connection counters. This module adds only what the pump asks of a client side (ClientSide).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from fopproxy.config import HttpConfig, TcpAddress, UnixAddress
from fopproxy.http.clientcert import chain_of, client_cert_headers, subject_of
from fopproxy.http.pump import HttpPump, PumpSettings
from fopproxy.http.stats import HttpStats
from fopproxy.relay import (
    BULK_AFTER,
    CLOSED,
    OPEN,
    TLS_SLICE,
    ClientConnection,
    Relay,
    classify_connect_error,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from fopproxy.certs import CertificateSet
    from fopproxy.config import Timeouts
    from fopproxy.stats import Stats

log = logging.getLogger("fopproxy.conn")

# Seconds a client may take to read its last answer and close, once the proxy has ended the
# connection (close_notify and FIN sent); closing with its unread bytes pending would reset it.
LINGER = 2.0


def _client_text(peer: Any) -> tuple[str, str]:
    """(`host:port` for the log, host for X-Forwarded-For) of a peername."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}", str(peer[0])
    return "-", "unknown"


class HttpRelay(Relay):
    """A listener's shared state in http mode: tcp mode's, plus the pump settings."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        certificates: Callable[[], CertificateSet],
        backend: TcpAddress | UnixAddress,
        timeouts: Timeouts,
        max_connections: int,
        stats: Stats,
        log_requests: bool,
        http: HttpConfig,
        http_stats: HttpStats,
    ) -> None:
        # No connection line in this mode: one line per request instead (accesslog.py).
        super().__init__(
            loop, certificates, backend, timeouts, max_connections, stats, log_connections=False
        )
        self.http = http
        self.http_stats = http_stats
        self.pump_settings = PumpSettings(
            connect=self._connector(loop, backend),
            connect_timeout=timeouts.connect,
            max_header_bytes=http.max_header_bytes,
            forwarded=http.forwarded,
            stats=http_stats,
            log_requests=log_requests,
            buffer=memoryview(bytearray(256 * 1024)),
            connect_failed=self._connect_failed,
        )

    @staticmethod
    def _connector(
        loop: asyncio.AbstractEventLoop, target: TcpAddress | UnixAddress
    ) -> Callable[[Callable[[], asyncio.BaseProtocol]], Any]:
        if isinstance(target, TcpAddress):
            return lambda factory: loop.create_connection(factory, target.host, target.port)
        return lambda factory: loop.create_unix_connection(factory, str(target.path))

    def _connect_failed(self, exc: BaseException) -> None:
        reason = classify_connect_error(exc)
        self.stats.backend_connect_errors[reason] += 1
        log.warning("backend %s unavailable (%s): %s", self.backend, reason, exc or "timed out")

    def protocol_factory(self) -> ClientConnection:
        return HttpClientConnection(self)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        """Draining starts: keep-alive connections end after their current exchange."""
        self._accepting = value
        if not value:
            for conn in list(self.active):
                pump = conn.backend
                if isinstance(pump, HttpPump):
                    pump.drain()


class HttpClientConnection(ClientConnection):
    """A TLS client connection whose plaintext goes through an HttpPump."""

    __slots__ = ()

    async def _connect(self) -> None:
        """Instead of dialling: the pump takes the backend's place (it dials on a request)."""
        relay = self.relay
        assert isinstance(relay, HttpRelay)
        transport = self._transport
        client_text, client_host = _client_text(
            transport.get_extra_info("peername") if transport is not None else None
        )
        chain = chain_of(self._ssl)
        pump = HttpPump(
            relay.pump_settings,
            self,
            client_text=client_text,
            client_host=client_host,
            cert_headers=client_cert_headers(chain) if relay.http.client_cert_header else b"",
            cert_subject=subject_of(chain) if relay.pump_settings.log_requests else "-",
        )
        self.backend_made(pump)

    # ---- ClientSide ------------------------------------------------------------------------------

    def send(self, data: bytes | memoryview) -> None:
        """Plaintext to the client, in the record sizes from_backend uses (see relay.py)."""
        transport = self._transport
        if transport is None or self.state != OPEN:
            return
        nbytes = len(data)
        self.to_client += nbytes
        write = self._tls.write
        out = self._out
        step = self._out_slice
        try:
            if nbytes <= step:
                write(data)
                transport.write(out.read())
                return
            if step < TLS_SLICE and self.to_client >= BULK_AFTER:
                step = self._out_slice = TLS_SLICE
            view = memoryview(data)
            chunks = []
            offset = 0
            while offset < nbytes:
                offset += write(view[offset : offset + step])
                chunks.append(out.read())
            transport.writelines(chunks)
        except ssl.SSLError as exc:
            log.debug("TLS write failed: %s", exc)
            self.abort("tls_write_error")

    def pause_input(self, paused: bool) -> None:
        self.backend_full(paused)

    def finish(self, *, clean: bool, reason: str) -> None:
        self._reason = reason
        if clean:
            self.backend_eof()  # close_notify and FIN; closed at once if the client is done
            if self.state != CLOSED:
                # Unlike a tcp stream, nothing more is owed to a client once its answer is
                # out: give it LINGER seconds to read the answer and close, then close.
                self.relay.loop.call_later(LINGER, self._linger_over)
        else:
            self._close_both(abort_backend=True)

    def _linger_over(self) -> None:
        if self.state != CLOSED:
            self._close_both()

    def _idle_timeout(self) -> None:
        pump = self.backend
        if isinstance(pump, HttpPump) and not pump.closed:
            # 504 for a request still waiting, else close_notify; a client that still lingers
            # a whole idle period later is closed by tcp mode's rule below.
            pump.idle()
            return
        super()._idle_timeout()
