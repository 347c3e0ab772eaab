"""Which certificate this proxy presented on a connection, in HAProxy's words (PROXY v2 TLVs).

PP2_SUBTYPE_SSL_SIG_ALG and _KEY_ALG describe the certificate the *proxy* served (HAProxy sends
`ecdsa-with-SHA256` and `EC256` / `RSA2048`, seen on the wire from haproxy 2.6). With an ECDSA and
an RSA certificate on one context, OpenSSL picks one per handshake (by suite in TLS 1.2, by
signature algorithm in TLS 1.3), and Python does not say which: `SSL_get_certificate` does.

Reaching the `SSL *` inside CPython's `_ssl._SSLSocket` relies on its layout (PyObject_HEAD, the
socket weakref, then the pointer), so the layout is checked once against `SSL_get_SSL_CTX` on a
throwaway object; where it does not hold, both TLVs are left out rather than guessed.
"""

from __future__ import annotations

import ctypes
import functools
import ssl

from fopproxy.errors import ComplianceError
from fopproxy.native import _openssl, _ssl_ctx_pointer, bind_loaded_library

_EVP_PKEY_NAMES = {6: "RSA", 408: "EC", 116: "DSA", 912: "RSA-PSS", 1087: "ED25519"}


class _Lib:
    def __init__(self, ssl_path: str, crypto: ctypes.CDLL) -> None:
        lib = ctypes.CDLL(ssl_path)
        self.get_ssl_ctx = lib.SSL_get_SSL_CTX
        self.get_ssl_ctx.argtypes = [ctypes.c_void_p]
        self.get_ssl_ctx.restype = ctypes.c_void_p
        self.get_certificate = lib.SSL_get_certificate
        self.get_certificate.argtypes = [ctypes.c_void_p]
        self.get_certificate.restype = ctypes.c_void_p
        self.signature_nid = crypto.X509_get_signature_nid
        self.signature_nid.argtypes = [ctypes.c_void_p]
        self.signature_nid.restype = ctypes.c_int
        self.nid2sn = crypto.OBJ_nid2sn
        self.nid2sn.argtypes = [ctypes.c_int]
        self.nid2sn.restype = ctypes.c_char_p
        self.pubkey = crypto.X509_get0_pubkey
        self.pubkey.argtypes = [ctypes.c_void_p]
        self.pubkey.restype = ctypes.c_void_p
        # OpenSSL 3 renamed EVP_PKEY_bits/base_id to *_get_*; 1.1 has only the old names.
        self.bits = getattr(crypto, "EVP_PKEY_get_bits", None) or crypto.EVP_PKEY_bits
        self.bits.argtypes = [ctypes.c_void_p]
        self.bits.restype = ctypes.c_int
        self.base_id = getattr(crypto, "EVP_PKEY_get_base_id", None) or crypto.EVP_PKEY_base_id
        self.base_id.argtypes = [ctypes.c_void_p]
        self.base_id.restype = ctypes.c_int


def _bind(ssl_path: str) -> _Lib | None:
    crypto = bind_loaded_library("/libcrypto.so", ctypes.CDLL)
    return None if crypto is None else _Lib(ssl_path, crypto)


# The SSL * sits after PyObject_HEAD and the `Socket` weakref pointer.
_SSL_OFFSET = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)


@functools.cache
def _library() -> _Lib | None:
    """The bindings, once the `_SSLSocket` layout was confirmed on a throwaway object."""
    lib = bind_loaded_library("/libssl.so", _bind)
    core = _openssl()
    if lib is None or core is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    probe = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    inner = getattr(probe, "_sslobj", None)
    if inner is None:
        return None
    pointer = ctypes.c_void_p.from_address(id(inner) + _SSL_OFFSET).value
    try:
        expected = _ssl_ctx_pointer(ctx, core)
    except ComplianceError:
        return None
    if not pointer or lib.get_ssl_ctx(pointer) != expected:
        return None
    return lib


def served_certificate(tls: object) -> tuple[str | None, str | None]:
    """(signature algorithm, key algorithm) of the certificate served on `tls` (an SSLObject's
    `_sslobj`), e.g. ("ecdsa-with-SHA256", "EC256"); (None, None) where it cannot be known."""
    lib = _library()
    if lib is None or type(tls).__name__ != "_SSLSocket":
        return None, None
    pointer = ctypes.c_void_p.from_address(id(tls) + _SSL_OFFSET).value
    cert = lib.get_certificate(pointer) if pointer else None
    if not cert:
        return None, None
    name = lib.nid2sn(lib.signature_nid(cert))
    sig_alg = name.decode("ascii", "replace") if name else None
    key = lib.pubkey(cert)
    key_alg = None
    if key:
        kind = _EVP_PKEY_NAMES.get(lib.base_id(key))
        key_alg = f"{kind}{lib.bits(key)}" if kind else None
    return sig_alg, key_alg


def status() -> dict[str, str]:
    """Whether the served certificate can be named (PROXY v2 SIG_ALG/KEY_ALG), for `check`."""
    state = "active" if _library() is not None else "off (left out)"
    return {"served certificate (PROXY v2 SIG_ALG, KEY_ALG)": state}
