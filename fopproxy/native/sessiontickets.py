"""Session tickets shared by every worker (fopproxy.tickets holds the keys), and early-data limits.

Python cannot hand OpenSSL ticket keys: either libssl holds one key itself
(SSL_CTX_set_tlsext_ticket_keys), or a C callback opens tickets with every key of the ring.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import ssl
from typing import TYPE_CHECKING, Any

from fopproxy.errors import ComplianceError
from fopproxy.native.binding import bind_loaded_library, require_openssl, ssl_ctx_pointer

if TYPE_CHECKING:
    from fopproxy.tickets import KeyRing, ScopedKeys

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


class _TicketCrypto:
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


class _TicketSsl:
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
        self.ctx_max_early_data = lib.SSL_CTX_get_max_early_data
        self.ctx_max_early_data.argtypes = [ctypes.c_void_p]
        self.ctx_max_early_data.restype = ctypes.c_uint32


@functools.cache
def _ticket_libs() -> tuple[_TicketCrypto, _TicketSsl] | None:
    crypto = bind_loaded_library("/libcrypto.so", _TicketCrypto)
    ssl_lib = bind_loaded_library("/libssl.so", _TicketSsl)
    if crypto is None or ssl_lib is None:
        return None
    return crypto, ssl_lib


def _ticket_callback(ring: ScopedKeys) -> Any:
    """The C callback for `ring`; the caller keeps it alive as long as any context uses it."""
    libs = _ticket_libs()
    if libs is None:
        raise ComplianceError("libcrypto is not reachable: session tickets cannot be shared")
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


def install_ticket_keys(ctx: ssl.SSLContext, ring: KeyRing, scope: bytes = b"") -> None:
    """Make `ctx` encrypt and decrypt tickets with `ring`'s keys, as seen by `scope` (the
    context's session id context: tickets of another scope never open here).

    The C callback lives as long as the context: it is kept on the context object itself, so a
    context replaced by a certificate reload takes its callback with it when the last
    connection using it is gone.
    """
    from fopproxy.tickets import ScopedKeys

    callback = _ticket_callback(ScopedKeys(ring, scope))
    libs = _ticket_libs()
    lib = require_openssl("session tickets cannot be shared between workers")
    if libs is None:
        raise ComplianceError("libcrypto is not reachable: session tickets cannot be shared")
    pointer = ssl_ctx_pointer(ctx, lib)
    if libs[1].callback_ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB,
                             ctypes.cast(callback, ctypes.c_void_p)) != 1:
        raise ComplianceError("OpenSSL refused the session ticket key callback")
    ctx.__dict__["_fopproxy_ticket_callback"] = callback


_SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
_TICKET_KEY_BYTES = 80  # name (16) | HMAC-SHA256 key (32) | AES-256-CBC key (32)


def set_ticket_key(ctx: ssl.SSLContext, key: bytes) -> None:
    """SSL_CTX_set_tlsext_ticket_keys: libssl itself encrypts and opens tickets with this one
    key (name | HMAC key | AES key, the layout of tickets.TicketKey), with no callback. A context
    with `install_ticket_keys` uses the callback instead. ComplianceError where refused."""
    if len(key) != _TICKET_KEY_BYTES:
        raise ValueError(f"a ticket key is {_TICKET_KEY_BYTES} bytes")
    lib = require_openssl("session tickets cannot be shared")
    pointer = ssl_ctx_pointer(ctx, lib)
    buffer = ctypes.create_string_buffer(key, _TICKET_KEY_BYTES)
    try:
        if lib.ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, _TICKET_KEY_BYTES, buffer) != 1:
            raise ComplianceError("OpenSSL refused the session ticket key")
    finally:
        ctypes.memset(buffer, 0, _TICKET_KEY_BYTES)


def ticket_key_name(ctx: ssl.SSLContext) -> bytes:
    """The name of the key libssl holds for `ctx` (set_ticket_key); the key bytes read with it
    are wiped at once."""
    lib = require_openssl("session tickets cannot be shared")
    pointer = ssl_ctx_pointer(ctx, lib)
    buffer = ctypes.create_string_buffer(_TICKET_KEY_BYTES)
    try:
        if lib.ctrl(pointer, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, _TICKET_KEY_BYTES, buffer) != 1:
            raise ComplianceError("OpenSSL did not tell its session ticket key")
        return buffer.raw[:16]
    finally:
        ctypes.memset(buffer, 0, _TICKET_KEY_BYTES)


def session_max_early_data(session: ssl.SSLSession) -> int | None:
    """SSL_SESSION_get_max_early_data of a client-side session; None where it cannot be read.

    Python keeps the SSL_SESSION pointer as the first field after PyObject_HEAD (as it does the
    SSL_CTX); the pointer is checked by asking OpenSSL for the session's protocol version, which
    must match what Python reports for the connection that made it.
    """
    libs = _ticket_libs()
    if libs is None:
        return None
    pointer = ctypes.c_void_p.from_address(id(session) + object.__basicsize__).value
    if not pointer:
        return None
    get_version = libs[1].session_protocol_version
    if get_version(pointer) != _TLS1_3_VERSION:
        return None
    return int(libs[1].session_max_early_data(pointer))


def max_early_data(ctx: ssl.SSLContext) -> int:
    """SSL_CTX_get_max_early_data: what a ticket of this context lets a client send as 0-RTT."""
    libs = _ticket_libs()
    lib = require_openssl("early data cannot be checked")
    if libs is None:
        raise ComplianceError("libssl is not reachable: early data cannot be checked")
    return int(libs[1].ctx_max_early_data(ssl_ctx_pointer(ctx, lib)))



def ticket_key_in_libssl() -> str:
    """Whether libssl itself can hold a ticket key here, for `fopproxy check`."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        set_ticket_key(probe, bytes(range(_TICKET_KEY_BYTES)))
        active = ticket_key_name(probe) == bytes(range(16))
    except ComplianceError:
        active = False
    return "active" if active else "off (every ticket through the callback)"
