"""The peer side: OpenSSL's certificate-verify callback plumbing, the CA names sent in the
CertificateRequest, and the chain the peer sent.

Python's ssl module has no hook inside the verification of a client certificate and no way to
name CAs in the request; `fopproxy.peerverify` decides what is admitted, this module only
reaches the C side for it: the callback installed on the SSL_CTX, the X509_STORE_CTX calls it
makes, and SSL_CTX_set_client_CA_list.
"""

from __future__ import annotations

import ctypes
import functools
import os
import ssl
from collections.abc import Callable
from typing import Any

from fopproxy.native.binding import bind_loaded_library, reach_ssl_ctx

_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)

# What a verify decision is given: OpenSSL's verdict so far (preverify_ok) and the X509_STORE_CTX.
VerifyFunction = Callable[[int, int], int]


class PeerCertificates:
    """The libcrypto calls a verify callback needs on its X509_STORE_CTX, bound to the library
    CPython's _ssl loaded."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        self.depth = lib.X509_STORE_CTX_get_error_depth
        self.depth.argtypes = [ctypes.c_void_p]
        self.depth.restype = ctypes.c_int
        self.current_cert = lib.X509_STORE_CTX_get_current_cert
        self.current_cert.argtypes = [ctypes.c_void_p]
        self.current_cert.restype = ctypes.c_void_p
        self.leaf = lib.X509_STORE_CTX_get0_cert
        self.leaf.argtypes = [ctypes.c_void_p]
        self.leaf.restype = ctypes.c_void_p
        self.set_error = lib.X509_STORE_CTX_set_error
        self.set_error.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.set_error.restype = None
        self.i2d_x509 = lib.i2d_X509
        self.i2d_x509.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        self.i2d_x509.restype = ctypes.c_int
        self.x509_digest = lib.X509_digest
        self.x509_digest.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint)
        ]
        self.x509_digest.restype = ctypes.c_int
        sha256 = lib.EVP_sha256
        sha256.argtypes = []
        sha256.restype = ctypes.c_void_p
        self.sha256: int = sha256()
        # One output buffer per process: the callback runs on the event loop's thread only.
        self._md = (ctypes.c_ubyte * 32)()
        self._md_len = ctypes.c_uint(0)

    def fingerprint(self, cert: int) -> bytes | None:
        """SHA-256 of the certificate's DER, computed by OpenSSL (no copy of the DER needed)."""
        if self.x509_digest(cert, self.sha256, self._md, ctypes.byref(self._md_len)) != 1:
            return None
        return bytes(self._md)[: self._md_len.value]

    def der(self, cert: int) -> bytes | None:
        """The certificate's DER (i2d_X509); None where OpenSSL cannot encode it."""
        size = self.i2d_x509(cert, None)
        if size <= 0:
            return None
        buffer = ctypes.create_string_buffer(size)
        cursor = ctypes.c_void_p(ctypes.addressof(buffer))
        if self.i2d_x509(cert, ctypes.byref(cursor)) != size:
            return None
        return buffer.raw


class _Ssl:
    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        self.set_verify = lib.SSL_CTX_set_verify
        self.set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
        self.set_verify.restype = None
        self.get_verify_mode = lib.SSL_CTX_get_verify_mode
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_verify_mode.restype = ctypes.c_int
        self.load_client_ca_file = lib.SSL_load_client_CA_file
        self.load_client_ca_file.argtypes = [ctypes.c_char_p]
        self.load_client_ca_file.restype = ctypes.c_void_p
        self.set_client_ca_list = lib.SSL_CTX_set_client_CA_list
        self.set_client_ca_list.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.set_client_ca_list.restype = None


@functools.cache
def _libraries() -> tuple[_Ssl, PeerCertificates] | None:
    ssl_lib = bind_loaded_library("/libssl.so", _Ssl)
    crypto = bind_loaded_library("/libcrypto.so", PeerCertificates)
    if ssl_lib is None or crypto is None:
        return None
    return ssl_lib, crypto


class PeerVerification:
    """A context's verify callback and client CA list, reached through its checked SSL_CTX."""

    __slots__ = ("_ctx", "_pointer", "_ssl", "certificates")

    def __init__(
        self, ctx: ssl.SSLContext, pointer: int, ssl_lib: _Ssl, certificates: PeerCertificates
    ) -> None:
        self._ctx = ctx
        self._pointer = pointer
        self._ssl = ssl_lib
        self.certificates = certificates

    def set_verify(self, verify: VerifyFunction) -> None:
        """Run `verify(preverify_ok, store)` for every certificate OpenSSL checks, keeping the
        context's verify mode; what it returns is OpenSSL's verdict (0 refuses the handshake)."""
        mode = self._ssl.get_verify_mode(self._pointer)
        callback = _VerifyCallback(verify)
        self._ssl.set_verify(self._pointer, mode, callback)
        # The C side holds only a raw pointer: the context keeps the callback alive as long as it.
        self._ctx._fopproxy_allow_check = callback  # type: ignore[attr-defined]

    def set_client_ca_names(self, pem: str) -> bool:
        """SSL_CTX_set_client_CA_list with the subjects of `pem`; False where OpenSSL read none."""
        # SSL_load_client_CA_file takes a path: hand it the validated bytes through a memfd, not
        # the user's file again (a rotation may be rewriting it right now).
        fd = os.memfd_create("fopproxy-client-ca", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem.encode("ascii"))
            names = self._ssl.load_client_ca_file(f"/proc/self/fd/{fd}".encode())
        finally:
            os.close(fd)
        if not names:
            return False
        self._ssl.set_client_ca_list(self._pointer, names)  # the context owns the list from here
        return True


def reach_peer_verification(ctx: ssl.SSLContext) -> PeerVerification | None:
    """The verify plumbing of `ctx`, or None where the bindings or its pointer cannot be had."""
    libraries = _libraries()
    if libraries is None:
        return None
    pointer = reach_ssl_ctx(ctx)
    if pointer is None:
        return None
    return PeerVerification(ctx, pointer, *libraries)



def unverified_chain(tls: ssl.SSLSocket) -> tuple[bytes, ...]:
    """Every certificate the peer sent, leaf first, as DER.

    Python 3.13 has SSLSocket.get_unverified_chain() returning DER bytes; 3.10-3.12 have the same
    method only on the internal `_sslobj`, returning certificate objects. Either shape is taken;
    without either, the leaf alone is returned.
    """
    getter: Any = getattr(tls, "get_unverified_chain", None) or getattr(
        getattr(tls, "_sslobj", None), "get_unverified_chain", None
    )
    if getter is not None:
        chain = tuple(_der(c) for c in getter() or ())
        if chain and all(c is not None for c in chain):
            return tuple(c for c in chain if c is not None)
    leaf = tls.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


_ENCODING_DER: int = getattr(ssl, "ENCODING_DER", 2)  # _ssl.ENCODING_DER; not public before 3.14


def _der(cert: object) -> bytes | None:
    if isinstance(cert, bytes | bytearray):
        return bytes(cert)
    public_bytes = getattr(cert, "public_bytes", None)
    if public_bytes is None:
        return None
    der = public_bytes(_ENCODING_DER)
    return bytes(der) if isinstance(der, bytes | bytearray) else None


def unverified_chain_active() -> str:
    """Where `unverified_chain` gets the chain from on this runtime."""
    if hasattr(ssl.SSLSocket, "get_unverified_chain"):
        return "SSLSocket.get_unverified_chain (public)"
    if hasattr(getattr(ssl, "_ssl", None), "_SSLSocket") and hasattr(
        ssl._ssl._SSLSocket,  # type: ignore[attr-defined]
        "get_unverified_chain",
    ):
        return "_sslobj.get_unverified_chain (private)"
    return "leaf only (getpeercert)"

