"""What `fopproxy scan` learns about session resumption: IDs, tickets, TLS 1.3 PSK, early data.

Each mechanism is probed alone, as a returning client would use it: one handshake to get a
session, a second offering it back. Early data (0-RTT) must never be accepted by a payments
endpoint (a replayed request would be replayed money); a TLS 1.3 server says in each ticket
whether it would take early data on it (RFC 8446 4.6.1, `max_early_data_size`), which OpenSSL
keeps with the session, so reading it needs no 0-RTT attempt that could reach a backend.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Outcome = Literal["resumed", "full handshake", "no session", "untested"]
# A server sends TLS 1.3 tickets after the handshake; wait this long for them on a quiet line.
TICKET_WAIT = 0.5


@dataclass(frozen=True)
class Resumption:
    session_id: Outcome
    tickets: Outcome
    tls13_psk: Outcome
    # Largest early data the server's TLS 1.3 ticket allows (0: refused); None: not known.
    max_early_data: int | None
    detail: str = ""

    @property
    def resumes(self) -> bool:
        return "resumed" in (self.session_id, self.tickets, self.tls13_psk)


def _client(version: ssl.TLSVersion, tickets: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _connect(
    host: str, port: int, sni: str | None, ctx: ssl.SSLContext, timeout: float,
    session: ssl.SSLSession | None = None,
) -> tuple[bool, ssl.SSLSession | None]:
    """(resumed?, the session to offer next time) of one handshake."""
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        with ctx.wrap_socket(raw, server_hostname=sni, session=session) as tls:
            if tls.version() == "TLSv1.3":
                # Tickets arrive after the handshake: a read processes them (nothing is sent, so
                # no request reaches whatever is behind the server).
                tls.settimeout(TICKET_WAIT)
                with contextlib.suppress(TimeoutError, ssl.SSLError, OSError):
                    tls.recv(1)
            return bool(tls.session_reused), tls.session
    finally:
        raw.close()


def _twice(
    host: str, port: int, sni: str | None, ctx: ssl.SSLContext, timeout: float,
    wants_ticket: bool,
) -> tuple[Outcome, ssl.SSLSession | None]:
    try:
        _, session = _connect(host, port, sni, ctx, timeout)
        if session is None or (wants_ticket and not session.has_ticket):
            return "no session", session
        resumed, _ = _connect(host, port, sni, ctx, timeout, session)
    except (OSError, ValueError):
        return "untested", None
    return ("resumed" if resumed else "full handshake"), session


def probe(
    host: str, port: int, sni: str | None, timeout: float,
    max_early_data: Callable[[ssl.SSLSession], int | None],
) -> Resumption:
    """Probe the three resumption mechanisms; `max_early_data` reads a session's 0-RTT limit."""
    tls12 = ssl.TLSVersion.TLSv1_2
    ids, _ = _twice(host, port, sni, _client(tls12, tickets=False), timeout, wants_ticket=False)
    tickets, _ = _twice(host, port, sni, _client(tls12, tickets=True), timeout, wants_ticket=True)
    try:
        tls13_ctx = _client(ssl.TLSVersion.TLSv1_3, tickets=True)
    except (ValueError, ssl.SSLError):
        return Resumption(ids, tickets, "untested", None, "the local OpenSSL has no TLS 1.3")
    psk, session = _twice(host, port, sni, tls13_ctx, timeout, wants_ticket=True)
    early = max_early_data(session) if session is not None and session.has_ticket else None
    return Resumption(ids, tickets, psk, early)
