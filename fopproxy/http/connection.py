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
from fopproxy.http.accesslog import AccessLog
from fopproxy.http.clientcert import chain_of, client_cert_headers, printable, subject_of
from fopproxy.http.pump import HttpPump, PumpSettings
from fopproxy.http.stats import HttpStats
from fopproxy.reasons import CloseReason
from fopproxy.relay import CLOSED, OPEN, ClientConnection, Relay, classify_connect_error

if TYPE_CHECKING:
    from collections.abc import Callable

    from fopproxy.certs import CertificateSet
    from fopproxy.config import Timeouts
    from fopproxy.proxyproto import ProxyProtocol
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
        *,
        proxy_protocol: ProxyProtocol = "off",
        client_auth: bool = False,
    ) -> None:
        # No connection line in this mode: one line per request instead (accesslog.py).
        super().__init__(
            loop, certificates, backend, timeouts, max_connections, stats, log_connections=False,
            proxy_protocol=proxy_protocol, client_auth=client_auth,
        )
        self.http = http
        self.http_stats = http_stats
        self.pump_settings = PumpSettings(
            connect=self._connector(loop, backend),
            connect_timeout=timeouts.connect,
            max_header_bytes=http.max_header_bytes,
            forwarded=http.forwarded,
            stats=http_stats,
            access=AccessLog(log_requests),
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
        # Only a certificate the handshake verified (tls.client_auth: chain and allow-list) is
        # ever put in a header; without client_auth the context asks for none.
        chain = chain_of(self.pipe.ssl)
        subject = "-"
        if relay.pump_settings.access.enabled and chain:
            identity = self.client_cert  # parsed once per distinct certificate (peerverify)
            subject = printable(identity.subject) if identity is not None else subject_of(chain)
        pump = HttpPump(
            relay.pump_settings,
            self,
            client_text=client_text,
            client_host=client_host,
            cert_headers=client_cert_headers(chain) if relay.http.client_cert_header else b"",
            cert_subject=subject,
            preamble=self._preamble,  # proxy_protocol: first on every backend connection
        )
        # The pump writes it to each backend connection it dials; tcp mode's backend_made would
        # write it into the pump, i.e. parse it as the client's request.
        self._preamble = b""
        self.backend_made(pump)

    # ---- ClientSide ------------------------------------------------------------------------------

    def send(self, data: bytes | memoryview) -> None:
        """Plaintext to the client, in the record sizes from_backend uses (tlspipe.py)."""
        transport = self._transport
        if transport is None or self.state != OPEN:
            return
        self.to_client += len(data)
        pipe = self.pipe
        try:
            if len(data) <= pipe.out_slice:
                pipe.tls.write(data)
                transport.write(pipe.outgoing.read())
                return
            transport.writelines(pipe.encrypt(memoryview(data), self.to_client))
        except ssl.SSLError as exc:
            log.debug("TLS write failed: %s", exc)
            self.abort(CloseReason.TLS_WRITE_ERROR)

    def pause_input(self, paused: bool) -> None:
        self.backend_full(paused)

    def read_buffer(self) -> memoryview:
        return self.backend_read_buffer()

    def finish(self, *, clean: bool, reason: str) -> None:
        """`reason` is the pump's (logged per request); the connection's own stays tcp mode's."""
        if clean:
            self.backend_eof()  # close_notify and FIN; closed at once if the client is done
            if self.state != CLOSED:
                # Unlike a tcp stream, nothing more is owed to a client once its answer is
                # out: give it LINGER seconds to read the answer and close, then close.
                self.relay.loop.call_later(LINGER, self._linger_over)
        else:
            # Cut without close_notify: the client sees the answer as truncated.
            self.close(CloseReason.BACKEND_RESET, reset_backend=True)

    def _linger_over(self) -> None:
        if self.state != CLOSED:
            self.close(CloseReason.DONE)

    def close(
        self,
        reason: CloseReason,
        detail: str | None = None,
        *,
        notify: bool = False,
        reset_backend: bool = False,
        reset: bool = False,
    ) -> None:
        """tcp mode's one close path, except that an idle timeout asks the pump first."""
        pump = self.backend
        if reason is CloseReason.IDLE_TIMEOUT and isinstance(pump, HttpPump) and not pump.closed:
            # 504 for a request still waiting, else close_notify; a client that still lingers
            # a whole idle period later is closed by tcp mode's rule.
            pump.idle()
            return
        super().close(reason, detail, notify=notify, reset_backend=reset_backend, reset=reset)
