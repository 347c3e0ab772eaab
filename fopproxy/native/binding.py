"""The binding to the libssl/libcrypto CPython's _ssl loaded, and the checked pointers into it.

Every other part of the native layer starts here: a function bound to whatever `ld` finds could
be another OpenSSL than the one holding our SSL_CTX, and a pointer read out of a CPython object
relies on its layout, so each pointer is trusted only once OpenSSL confirms what it points at.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fopproxy.errors import ComplianceError

T = TypeVar("T")


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


CERT_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class OpenSSL:
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
        self.ssl_ctrl = lib.SSL_ctrl
        self.ssl_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ssl_ctrl.restype = ctypes.c_long
        self.get_ssl_ctx = lib.SSL_get_SSL_CTX
        self.get_ssl_ctx.argtypes = [ctypes.c_void_p]
        self.get_ssl_ctx.restype = ctypes.c_void_p
        self.set_cert_cb = lib.SSL_set_cert_cb
        self.set_cert_cb.argtypes = [ctypes.c_void_p, CERT_CB, ctypes.c_void_p]
        self.set_cert_cb.restype = None
        self.set_session_id_context = lib.SSL_CTX_set_session_id_context
        self.set_session_id_context.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
        self.set_session_id_context.restype = ctypes.c_int


@functools.cache
def openssl() -> OpenSSL | None:
    """Bind to the libssl that CPython's _ssl module actually loaded."""
    return bind_loaded_library("/libssl.so", OpenSSL)


def require_openssl(what: str) -> OpenSSL:
    """The binding, or a ComplianceError saying `what` cannot be done without it."""
    lib = openssl()
    if lib is None:
        raise ComplianceError(
            f"libssl is not visible in this process, so {what}; use tls.profile: card-fop"
        )
    return lib


def ssl_ctx_pointer(ctx: ssl.SSLContext, lib: OpenSSL) -> int:
    """Address of the SSL_CTX inside CPython's PySSLContext (first field after PyObject_HEAD).

    This relies on CPython's object layout, so it is checked: the options OpenSSL reports for the
    pointer must equal the options Python reports for the context, or we refuse to use it.
    """
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.get_options(pointer) != ctx.options:
        raise ComplianceError(
            "cannot reach this Python's SSL_CTX to restrict TLS 1.3 suites and groups; "
            "this runtime cannot serve the profile"
        )
    return pointer


def reach_ssl_ctx(ctx: ssl.SSLContext) -> int | None:
    """`ctx`'s SSL_CTX pointer, or None where libssl or the checked pointer cannot be had."""
    lib = openssl()
    if lib is None:
        return None
    try:
        return ssl_ctx_pointer(ctx, lib)
    except ComplianceError:
        return None


# PySSLSocket is {PyObject_HEAD; Socket weakref; SSL *ssl; ...}.
_SSL_OFFSET = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)


def ssl_address(sslobj: Any) -> int | None:
    """The SSL * field of a `_ssl._SSLSocket`, unchecked: trust it only where `ssl_pointer` (or a
    probe through it) confirmed the layout."""
    if type(sslobj).__basicsize__ < _SSL_OFFSET + ctypes.sizeof(ctypes.c_void_p):
        return None
    return ctypes.c_void_p.from_address(id(sslobj) + _SSL_OFFSET).value


def ssl_pointer(sslobj: Any, ctx_pointer: int) -> int | None:
    """Address of the SSL inside CPython's PySSLSocket, trusted only where OpenSSL says that SSL
    belongs to the context we made it from."""
    lib = openssl()
    if lib is None:
        return None
    pointer = ssl_address(sslobj)
    if not pointer or lib.get_ssl_ctx(pointer) != ctx_pointer:
        return None
    return pointer
