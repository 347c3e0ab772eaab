"""Which certificate OpenSSL served on a connection (SSL_get_certificate), for the PROXY v2 TLVs.

With an ECDSA and an RSA certificate on one context, OpenSSL picks one per handshake (by suite in
TLS 1.2, by signature algorithm in TLS 1.3), and Python does not say which. Reaching the `SSL *`
inside CPython's `_ssl._SSLSocket` relies on its layout, so the layout is checked once against
`SSL_get_SSL_CTX` on a throwaway object; where it does not hold, nothing is reported rather than
guessed. `fopproxy.tlsinfo` puts the answer in HAProxy's words.
"""

from __future__ import annotations

import ctypes
import functools
import ssl

from fopproxy.native.binding import bind_loaded_library, reach_ssl_ctx, ssl_address, ssl_pointer

# EVP_PKEY base ids (include/openssl/obj_mac.h NIDs) of the key types a server certificate has.
_EVP_PKEY_NAMES = {6: "RSA", 408: "EC", 116: "DSA", 912: "RSA-PSS", 1087: "ED25519"}


class _Lib:
    def __init__(self, ssl_path: str, crypto: ctypes.CDLL) -> None:
        lib = ctypes.CDLL(ssl_path)
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


@functools.cache
def _library() -> _Lib | None:
    """The bindings, once the `_SSLSocket` layout was confirmed on a throwaway object."""
    lib = bind_loaded_library("/libssl.so", _bind)
    if lib is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    probe = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    inner = getattr(probe, "_sslobj", None)
    expected = reach_ssl_ctx(ctx)
    if inner is None or expected is None or ssl_pointer(inner, expected) is None:
        return None
    return lib


def served_certificate_facts(tls: object) -> tuple[str | None, str | None, int]:
    """(signature algorithm's short name, key type, key bits) of the certificate served on `tls`
    (an SSLObject's `_sslobj`), e.g. ("ecdsa-with-SHA256", "EC", 256); (None, None, 0) where it
    cannot be known, a key type OpenSSL names otherwise being None."""
    lib = _library()
    if lib is None or type(tls).__name__ != "_SSLSocket":
        return None, None, 0
    pointer = ssl_address(tls)
    cert = lib.get_certificate(pointer) if pointer else None
    if not cert:
        return None, None, 0
    name = lib.nid2sn(lib.signature_nid(cert))
    sig_alg = name.decode("ascii", "replace") if name else None
    key = lib.pubkey(cert)
    if not key:
        return sig_alg, None, 0
    kind = _EVP_PKEY_NAMES.get(lib.base_id(key))
    return sig_alg, kind, lib.bits(key) if kind else 0


def served_certificate_active() -> bool:
    """Whether `served_certificate_facts` can answer on this runtime."""
    return _library() is not None
