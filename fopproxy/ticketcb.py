"""OpenSSL's session-ticket key callback, bound to a `KeyRing` (moves into native.py at merge)."""

from __future__ import annotations

import ctypes
import functools
import logging
import ssl
from typing import Any

from fopproxy.tickets import KeyRing
from fopproxy.tls import _openssl, _ssl_ctx_pointer, bind_loaded_library

log = logging.getLogger("fopproxy.tls")

_SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72
_TLS1_3_VERSION = 0x0304
_IV_BYTES = 16

_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,  # SSL *
    ctypes.POINTER(ctypes.c_ubyte),  # key_name[16]
    ctypes.POINTER(ctypes.c_ubyte),  # iv[EVP_MAX_IV_LENGTH]
    ctypes.c_void_p,  # EVP_CIPHER_CTX *
    ctypes.c_void_p,  # HMAC_CTX *
    ctypes.c_int,  # 1: encrypt a new ticket, 0: decrypt one
)


class _Crypto:
    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        lib.EVP_aes_256_cbc.restype = ctypes.c_void_p
        lib.EVP_aes_256_cbc.argtypes = []
        lib.EVP_sha256.restype = ctypes.c_void_p
        lib.EVP_sha256.argtypes = []
        self.aes = lib.EVP_aes_256_cbc()
        self.sha256 = lib.EVP_sha256()
        self.encrypt_init = lib.EVP_EncryptInit_ex
        self.decrypt_init = lib.EVP_DecryptInit_ex
        for fn in (self.encrypt_init, self.decrypt_init):
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                           ctypes.c_void_p]
            fn.restype = ctypes.c_int
        self.hmac_init = lib.HMAC_Init_ex
        self.hmac_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_void_p]
        self.hmac_init.restype = ctypes.c_int
        self.rand_bytes = lib.RAND_bytes
        self.rand_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.rand_bytes.restype = ctypes.c_int


class _Ssl:
    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        self.callback_ctrl = lib.SSL_CTX_callback_ctrl
        self.callback_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self.callback_ctrl.restype = ctypes.c_long
        self.version = lib.SSL_version
        self.version.argtypes = [ctypes.c_void_p]
        self.version.restype = ctypes.c_int
        self.session_protocol_version = lib.SSL_SESSION_get_protocol_version
        self.session_protocol_version.argtypes = [ctypes.c_void_p]
        self.session_protocol_version.restype = ctypes.c_int
        self.session_max_early_data = lib.SSL_SESSION_get_max_early_data
        self.session_max_early_data.argtypes = [ctypes.c_void_p]
        self.session_max_early_data.restype = ctypes.c_uint32


@functools.cache
def _libs() -> tuple[_Crypto, _Ssl] | None:
    crypto = bind_loaded_library("/libcrypto.so", _Crypto)
    ssl_lib = bind_loaded_library("/libssl.so", _Ssl)
    if crypto is None or ssl_lib is None:
        return None
    return crypto, ssl_lib


def make_callback(ring: KeyRing) -> Any:
    """The C callback for `ring`; the caller keeps it alive as long as any context uses it."""
    libs = _libs()
    if libs is None:
        raise OSError("libssl/libcrypto are not reachable in this process")
    crypto, ssl_lib = libs

    def encrypt(name: Any, iv: Any, cipher_ctx: int, hmac_ctx: int) -> int:
        key = ring.encrypting()
        ctypes.memmove(name, key.name, 16)
        ok = (
            crypto.rand_bytes(iv, _IV_BYTES) == 1
            and crypto.encrypt_init(cipher_ctx, crypto.aes, None, key.aes_key, iv) == 1
            and crypto.hmac_init(hmac_ctx, key.hmac_key, 32, crypto.sha256, None) == 1
        )
        return 1 if ok else -1

    def decrypt(ssl_ptr: int, name: Any, iv: Any, cipher_ctx: int, hmac_ctx: int) -> int:
        found = ring.find(ctypes.string_at(name, 16))
        if found is None:
            return 0  # unknown or expired key: a full handshake, and a new ticket
        key, current = found
        ok = (
            crypto.hmac_init(hmac_ctx, key.hmac_key, 32, crypto.sha256, None) == 1
            and crypto.decrypt_init(cipher_ctx, crypto.aes, None, key.aes_key, iv) == 1
        )
        if not ok:
            return -1
        # 2 = resume and issue a fresh ticket under the current key; TLS 1.3 tickets are
        # single-use in spirit (RFC 8446 C.4), so those are always renewed.
        if not current or ssl_lib.version(ssl_ptr) == _TLS1_3_VERSION:
            return 2
        return 1

    def callback(ssl_ptr: int, name: Any, iv: Any, cipher_ctx: int, hmac_ctx: int, enc: int) -> int:
        # Runs inside SSL_do_handshake: an exception escaping here would print "Exception
        # ignored" and hand OpenSSL a meaningless answer, so every failure is a defined -1.
        try:
            if enc == 1:
                return encrypt(name, iv, cipher_ctx, hmac_ctx)
            return decrypt(ssl_ptr, name, iv, cipher_ctx, hmac_ctx)
        except Exception:
            log.exception("session ticket callback failed; no ticket for this handshake")
            return -1

    return _Callback(callback)


def install(ctx: ssl.SSLContext, ring: KeyRing) -> None:
    """Make `ctx` encrypt and decrypt tickets with `ring`'s keys.

    The C callback lives as long as the context: it is kept on the context object itself, so a
    context replaced by a certificate reload takes its callback with it when the last
    connection using it is gone.
    """
    callback = make_callback(ring)
    libs = _libs()
    lib = _openssl()
    if libs is None or lib is None:
        raise OSError("libssl/libcrypto are not reachable in this process")
    pointer = _ssl_ctx_pointer(ctx, lib)
    if libs[1].callback_ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB,
                             ctypes.cast(callback, ctypes.c_void_p)) != 1:
        raise OSError("OpenSSL refused the session ticket key callback")
    ctx.__dict__["_fopproxy_ticket_callback"] = callback


def session_max_early_data(session: ssl.SSLSession) -> int | None:
    """SSL_SESSION_get_max_early_data of a client-side session; None where it cannot be read.

    Python keeps the SSL_SESSION pointer as the first field after PyObject_HEAD (as it does the
    SSL_CTX); the pointer is checked by asking OpenSSL for the session's protocol version, which
    must match what Python reports for the connection that made it.
    """
    libs = _libs()
    if libs is None:
        return None
    pointer = ctypes.c_void_p.from_address(id(session) + object.__basicsize__).value
    if not pointer:
        return None
    get_version = libs[1].session_protocol_version
    if get_version(pointer) != _TLS1_3_VERSION:
        return None
    return int(libs[1].session_max_early_data(pointer))
