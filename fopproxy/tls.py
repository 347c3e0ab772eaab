"""The TLS server context, built so that it cannot be outside the compliance rules.

`build_context` is pure: the same selection and certificates always give the same policy, and the
context is checked after it is built (`verify_context`) so that a surprise from the runtime (an
OpenSSL that ignores a setting, a CPython whose layout we misread) fails closed at start.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from fopproxy.errors import ComplianceError
from fopproxy.policy import SuiteSelection

if TYPE_CHECKING:
    from fopproxy.clientauth import ClientTrust

T = TypeVar("T")

# Options that must be on for every context we serve from.
REQUIRED_OPTIONS = (
    ssl.OP_NO_COMPRESSION
    | ssl.OP_CIPHER_SERVER_PREFERENCE
    | ssl.OP_NO_RENEGOTIATION
    | ssl.OP_NO_TICKET
    | ssl.OP_SINGLE_ECDH_USE
)

class ServerSSLObject(ssl.SSLObject):
    """SSLObject that remembers the SNI the client sent (the server side has no API to ask)."""

    sni: str | None = None


SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]


class _OpenSSL:
    """The few libssl functions Python's ssl module does not expose, bound to *its* libssl."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        self.set_ciphersuites = lib.SSL_CTX_set_ciphersuites
        self.set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.set_ciphersuites.restype = ctypes.c_int
        self.get_options = lib.SSL_CTX_get_options
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.ctrl = lib.SSL_CTX_ctrl
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ctrl.restype = ctypes.c_long


def loaded_library(fragment: str) -> str | None:
    """Path of the first library mapped into this process whose path contains `fragment`.

    For binding to the very libssl/libcrypto CPython's _ssl module loaded (not whatever ld finds).
    """
    try:
        with Path("/proc/self/maps").open() as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and fragment in fields[5]:
                    return fields[5]
    except OSError:
        return None
    return None


def bind_loaded_library(fragment: str, bind: Callable[[str], T]) -> T | None:
    """`bind(path)` for the loaded library whose path contains `fragment`; None where there is
    none, or where it cannot be opened or lacks a symbol `bind` looks up."""
    path = loaded_library(fragment)
    if path is None:
        return None
    try:
        return bind(path)
    except (OSError, AttributeError):
        return None


@functools.cache
def _openssl() -> _OpenSSL | None:
    """Bind to the libssl that CPython's _ssl module actually loaded."""
    return bind_loaded_library("/libssl.so", _OpenSSL)


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: _OpenSSL) -> int:
    """Address of the SSL_CTX inside CPython's PySSLContext (first field after PyObject_HEAD).

    This relies on CPython's object layout, so it is checked: the options OpenSSL reports for the
    pointer must equal the options Python reports for the context, or we refuse to use it.
    """
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.get_options(pointer) != ctx.options:
        raise ComplianceError(
            "cannot reach this Python's SSL_CTX to restrict TLS 1.3 suites; "
            "use tls.profile: card-fop (TLS 1.2 only) on this runtime"
        )
    return pointer


def restrict_tls13_suites(ctx: ssl.SSLContext, suites: Sequence[str]) -> None:
    """Limit the TLS 1.3 suites of `ctx`; Python has no API for this, so go to libssl directly."""
    lib = _openssl()
    if lib is None:
        raise ComplianceError(
            "libssl is not visible in this process, so TLS 1.3 suites cannot be restricted; "
            "use tls.profile: card-fop"
        )
    pointer = _ssl_ctx_pointer(ctx, lib)
    if lib.set_ciphersuites(pointer, ":".join(suites).encode("ascii")) != 1:
        raise ComplianceError(f"OpenSSL refused TLS 1.3 suites {':'.join(suites)}")


# OpenSSL keeps every cleanly closed TLS 1.2 session in the server's session-ID cache (about
# 1 KiB each) until it expires: 20,480 of them by default, so a worker's RSS climbed by ~20 MiB
# under steady traffic. An explicit, small bound keeps resumption for recent clients for ~1 MiB.
SESSION_CACHE_SIZE = 1024
_SSL_CTRL_SET_SESS_CACHE_SIZE = 42
_SSL_CTRL_GET_SESS_CACHE_SIZE = 43


def limit_session_cache(ctx: ssl.SSLContext, size: int = SESSION_CACHE_SIZE) -> int | None:
    """Bound the session-ID cache; returns the size now set, or None where libssl is out of reach.

    Best effort: it bounds memory, not the policy, so an unusual runtime keeps OpenSSL's default.
    """
    lib = _openssl()
    if lib is None:
        return None
    try:
        pointer = _ssl_ctx_pointer(ctx, lib)
    except ComplianceError:
        return None
    lib.ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_SIZE, size, None)
    return int(lib.ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_SIZE, 0, None))


def offered_suites(ctx: ssl.SSLContext) -> tuple[list[str], list[str]]:
    """(TLS 1.2 suites, TLS 1.3 suites) the context would negotiate, in preference order."""
    tls12: list[str] = []
    tls13: list[str] = []
    for cipher in ctx.get_ciphers():
        (tls13 if cipher["protocol"] == "TLSv1.3" else tls12).append(cipher["name"])
    return tls12, tls13


def verify_context(
    ctx: ssl.SSLContext, selection: SuiteSelection, client_trust: ClientTrust | None = None
) -> None:
    """Fail closed unless the context is exactly what the selection asks for."""
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
    missing = REQUIRED_OPTIONS & ~ctx.options
    if missing:
        raise ComplianceError(f"required TLS options are off: {ssl.Options(missing)!r}")
    wanted = ssl.CERT_NONE if client_trust is None else client_trust.verify_mode
    if ctx.verify_mode != wanted:
        raise ComplianceError(
            f"client certificate mode is {ctx.verify_mode.name}, not {wanted.name}"
        )


def build_context(
    selection: SuiteSelection,
    chains: Sequence[tuple[str, str, bytes | None]],
    sni_callback: SniCallback | None = None,
    client_trust: ClientTrust | None = None,
    apply_trust: Callable[[ssl.SSLContext, ClientTrust], None] | None = None,
) -> ssl.SSLContext:
    """A server context for `selection` serving every (cert path, key path, password) in `chains`.

    Several chains on one context serve RSA and ECDSA side by side: OpenSSL picks the certificate
    that fits the suite it negotiates. OpenSSL's default groups stay (X25519, P-256, P-384, ...):
    narrowing them with set_ecdh_curve locks out clients that offer only one other group.
    Resumption: stateless tickets are off (their keys would never rotate and, with several
    workers, differ per process); the per-process session-ID cache stays, so resumption is an
    optimisation that may miss, never a requirement.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = selection.profile.minimum_version
    ctx.maximum_version = selection.profile.maximum_version
    ctx.options |= REQUIRED_OPTIONS
    ctx.num_tickets = 0
    limit_session_cache(ctx)
    ctx.sslobject_class = ServerSSLObject
    ctx.set_ciphers(":".join(selection.tls12))
    if selection.profile.maximum_version >= ssl.TLSVersion.TLSv1_3:
        restrict_tls13_suites(ctx, selection.tls13)
    for cert, key, password in chains:
        ctx.load_cert_chain(cert, key, password)
    if sni_callback is not None:
        ctx.sni_callback = sni_callback
    if client_trust is not None:
        # peerverify.apply_client_trust, passed in: it binds to libssl through this module.
        if apply_trust is None:
            raise ComplianceError("client certificates configured, but nothing to apply them")
        apply_trust(ctx, client_trust)
    verify_context(ctx, selection, client_trust)
    return ctx
