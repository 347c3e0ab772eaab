"""The TLS server context, built so that it cannot be outside the compliance rules.

`build_context` is pure: the same selection and certificates always give the same policy, and the
context is checked after it is built (`verify_context`) so that a surprise from the runtime (an
OpenSSL that ignores a setting, a CPython whose layout we misread) fails closed at start.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable, Sequence

from fopproxy import native
from fopproxy.clientauth import ClientTrust
from fopproxy.errors import ComplianceError
from fopproxy.peerverify import apply_client_trust
from fopproxy.policy import SuiteSelection
from fopproxy.tickets import KeyRing, ScopedKeys

# Options that must be on for every context we serve from (OP_NO_TICKET too, unless tickets
# are encrypted with the shared keys of tickets.py).
REQUIRED_OPTIONS = (
    ssl.OP_NO_COMPRESSION
    | ssl.OP_CIPHER_SERVER_PREFERENCE
    | ssl.OP_NO_RENEGOTIATION
    | ssl.OP_SINGLE_ECDH_USE
)
# TLS 1.3 tickets sent after each full handshake: one is what a returning client uses.
TLS13_TICKETS = 1
# SSL_OP_ALLOW_NO_DHE_KEX (not in Python's ssl): TLS 1.3 resumption without a fresh ECDHE
# exchange (psk_ke), i.e. without forward secrecy. Must stay off.
OP_ALLOW_NO_DHE_KEX = 1 << 10

class ServerSSLObject(ssl.SSLObject):
    """SSLObject that remembers the SNI the client sent (the server side has no API to ask)."""

    sni: str | None = None


SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]


def restrict_tls13_suites(ctx: ssl.SSLContext, suites: Sequence[str]) -> None:
    """Limit the TLS 1.3 suites of `ctx`; Python has no API for this (native.set_tls13_suites)."""
    native.set_tls13_suites(ctx, suites)


# OpenSSL keeps every cleanly closed TLS 1.2 session in the server's session-ID cache (about
# 1 KiB each) until it expires: 20,480 of them by default, so a worker's RSS climbed by ~20 MiB
# under steady traffic. An explicit, small bound keeps resumption for recent clients for ~1 MiB.
SESSION_CACHE_SIZE = 1024


def limit_session_cache(ctx: ssl.SSLContext, size: int = SESSION_CACHE_SIZE) -> int | None:
    """Bound the session-ID cache; returns the size now set, or None where libssl is out of reach.

    Best effort: it bounds memory, not the policy, so an unusual runtime keeps OpenSSL's default.
    """
    return native.set_session_cache_size(ctx, size)


def agreed_groups(ctx: ssl.SSLContext) -> dict[str, tuple[str, ...]]:
    """The key-exchange groups the context would agree to, per protocol version it serves."""
    versions = [("TLSv1.2", ssl.TLSVersion.TLSv1_2)]
    if ctx.maximum_version >= ssl.TLSVersion.TLSv1_3:
        versions.append(("TLSv1.3", ssl.TLSVersion.TLSv1_3))
    return {name: native.shared_groups(ctx, version) for name, version in versions}


def offered_suites(ctx: ssl.SSLContext) -> tuple[list[str], list[str]]:
    """(TLS 1.2 suites, TLS 1.3 suites) the context would negotiate, in preference order."""
    tls12: list[str] = []
    tls13: list[str] = []
    for cipher in ctx.get_ciphers():
        (tls13 if cipher["protocol"] == "TLSv1.3" else tls12).append(cipher["name"])
    return tls12, tls13


def verify_context(
    ctx: ssl.SSLContext,
    selection: SuiteSelection,
    *,
    tickets: bool = False,
    client_trust: ClientTrust | None = None,
) -> None:
    """Fail closed unless the context is exactly what the selection asks for.

    `tickets`: session tickets are meant to be on (shared keys installed); otherwise they must be
    off. Early data (0-RTT, replayable) must be refused either way. `client_trust`: client
    certificates are asked for in exactly its mode.
    """
    tls12, tls13 = offered_suites(ctx)
    if tuple(tls12) != selection.tls12:
        raise ComplianceError(
            f"OpenSSL would offer TLS 1.2 suites {tls12}, expected {list(selection.tls12)}"
        )
    serves_tls13 = ctx.maximum_version >= ssl.TLSVersion.TLSv1_3
    if serves_tls13 and tuple(tls13) != selection.tls13:
        raise ComplianceError(
            f"OpenSSL would offer TLS 1.3 suites {tls13}, expected {list(selection.tls13)}"
        )
    if ctx.minimum_version != ssl.TLSVersion.TLSv1_2:
        raise ComplianceError(f"minimum protocol is {ctx.minimum_version.name}, not TLSv1_2")
    if ctx.maximum_version != selection.profile.maximum_version:
        raise ComplianceError(f"maximum protocol is {ctx.maximum_version.name}")
    required = REQUIRED_OPTIONS if tickets else REQUIRED_OPTIONS | ssl.OP_NO_TICKET
    missing = required & ~ctx.options
    if missing:
        raise ComplianceError(f"required TLS options are off: {ssl.Options(missing)!r}")
    if tickets and ctx.options & ssl.OP_NO_TICKET:
        raise ComplianceError("session tickets were asked for but OP_NO_TICKET is set")
    if ctx.options & OP_ALLOW_NO_DHE_KEX:
        raise ComplianceError("TLS 1.3 resumption without ECDHE (psk_ke) is allowed")
    if native.max_early_data(ctx) != 0:
        raise ComplianceError("the context would accept TLS 1.3 early data (0-RTT)")
    expected = set(selection.profile.groups)
    for version, groups in agreed_groups(ctx).items():
        if set(groups) != expected:
            raise ComplianceError(
                f"OpenSSL would agree key-exchange groups {list(groups)} under {version}, "
                f"expected {list(selection.profile.groups)}"
            )
    wanted = ssl.CERT_NONE if client_trust is None else client_trust.verify_mode
    if ctx.verify_mode != wanted:
        raise ComplianceError(
            f"client certificate mode is {ctx.verify_mode.name}, not {wanted.name}"
        )


def build_context(
    selection: SuiteSelection,
    chains: Sequence[tuple[str, str, bytes | None]],
    sni_callback: SniCallback | None = None,
    *,
    session_context: bytes | None = None,
    resumption: bool = True,
    tickets: KeyRing | None = None,
    ticket_key_in_libssl: bool = False,
    client_trust: ClientTrust | None = None,
) -> ssl.SSLContext:
    """A server context for `selection` serving every (cert path, key path, password) in `chains`.

    Several chains on one context serve RSA and ECDSA side by side: OpenSSL picks the certificate
    that fits the suite it negotiates. Groups are the profile's (X25519, P-256, P-384), set
    through libssl after the context exists, so an OPENSSL_CONF system default cannot widen them
    (Python's set_ecdh_curve takes one curve, and no group list at all).
    Resumption: with `tickets` (tickets.py: keys every worker and, with a key file, every pod
    shares) TLS 1.2 tickets and TLS 1.3 PSK tickets are issued and opened with those keys, never
    OpenSSL's per-process random key; without, tickets are off. `ticket_key_in_libssl` gives
    libssl the ring's encrypting key alone instead of the callback that knows every key
    (TicketContexts keeps it current). The per-process session-ID
    cache stays either way. `session_context` names the certificates served, so a session is
    only resumed by a context serving the same ones; `resumption=False` turns resumption off
    altogether (see CertificateSet). Early data stays at OpenSSL's 0: never accepted.
    `client_trust`: ask for client certificates, verify them against its CA and judge them by
    its allow-list (peerverify).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = selection.profile.minimum_version
    ctx.maximum_version = selection.profile.maximum_version
    ctx.options |= REQUIRED_OPTIONS
    with_tickets = tickets is not None and resumption
    if tickets is not None and resumption:
        ctx.options &= ~ssl.OP_NO_TICKET
        ctx.num_tickets = TLS13_TICKETS
        if ticket_key_in_libssl:
            scoped = ScopedKeys(tickets, session_context or b"")
            native.set_ticket_key(ctx, scoped.encrypting().to_bytes())
        else:
            native.install_ticket_keys(ctx, tickets, session_context or b"")
    else:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    limit_session_cache(ctx)
    if session_context is not None:
        native.set_session_id_context(ctx, session_context)
    if not resumption:
        native.disable_session_cache(ctx)
    ctx.sslobject_class = ServerSSLObject
    ctx.set_ciphers(":".join(selection.tls12))
    if selection.profile.maximum_version >= ssl.TLSVersion.TLSv1_3:
        restrict_tls13_suites(ctx, selection.tls13)
    native.set_groups(ctx, selection.profile.groups)
    for cert, key, password in chains:
        ctx.load_cert_chain(cert, key, password)
    if sni_callback is not None:
        ctx.sni_callback = sni_callback
    if client_trust is not None:
        apply_client_trust(ctx, client_trust)
    verify_context(ctx, selection, tickets=with_tickets, client_trust=client_trust)
    return ctx


class TicketContexts:
    """The two contexts of one certificate set with tickets on, and which a connection starts on.

    `keyed` opens tickets of every key in the ring through the callback (native.
    install_ticket_keys: a call into Python for every ticket). `fast` holds only the encrypting
    key, inside libssl (SSL_CTX_set_tlsext_ticket_keys): a returning client under the current
    key, nearly every one, resumes without Python (≈35k instructions less per resumption,
    docs/PERFORMANCE.md). A ClientHello that carries the name of an older key in force (a TLS
    1.2 ticket and a TLS 1.3 PSK identity both start with it) starts on `keyed` instead: those
    names are `older`, and the caller looks for them in the client's first bytes. A ClientHello
    split over two reads may hide the name: that client gets a full handshake, no error.
    """

    __slots__ = ("_clock", "_due", "_generation", "_keys", "_ring", "fast", "keyed", "older")

    def __init__(
        self, fast: ssl.SSLContext, keyed: ssl.SSLContext, ring: KeyRing, scope: bytes
    ) -> None:
        self.fast = fast
        self.keyed = keyed
        self._ring = ring
        self._keys = ScopedKeys(ring, scope)
        self._clock = ring.clock
        self._generation = -1
        self._due = -math.inf
        self.older: tuple[bytes, ...] = ()
        self.sync()

    def start(self) -> tuple[ssl.SSLContext, tuple[bytes, ...]]:
        """The context a new connection starts on, and the key names that send it to `keyed`."""
        if self._ring.generation != self._generation or self._clock() >= self._due:
            self.sync()
        return self.fast, self.older

    def sync(self) -> None:
        """Copy the ring's keys in force: the encrypting one into libssl, the names of the
        others into `older`. Also called on every reload check, so that a rotated-out key does
        not stay in libssl's memory while no client connects."""
        ring = self._ring
        keys = self._keys.all()  # steps a time-driven ring first
        self._due = ring.changes_at()
        if ring.generation == self._generation:
            return
        native.set_ticket_key(self.fast, keys[0].to_bytes())
        self.older = tuple(key.name for key in keys[1:])
        self._generation = ring.generation
