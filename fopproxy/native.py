"""Every reach past Python's public ssl API, in one place, each verified before it is trusted.

Python's ssl module cannot restrict TLS 1.3 suites or key-exchange groups, bound the session
cache, free a memory BIO's buffer, or hand out the raw `_ssl._SSLSocket` the relay drives; glibc's
`malloc_trim` has no binding either. Each of those is reached here, through ctypes into the very
libssl/libcrypto CPython's _ssl loaded, or through a private attribute, and each is checked on
first use against what the public API reports. Where a check fails, the caller gets a safe
fallback (None, or the public object) or, where the policy depends on it, a ComplianceError:
the runtime must never serve something it could not verify. `status()` says which are active
(`fopproxy check` prints it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fopproxy.errors import ComplianceError

if TYPE_CHECKING:
    from fopproxy.tickets import KeyRing, ScopedKeys

log = logging.getLogger("fopproxy.tls")

T = TypeVar("T")


# ---- binding to the loaded libraries -------------------------------------------------------


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


_CERT_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _succeed(_ssl: int | None, _arg: int | None) -> int:
    """A certificate callback that succeeds without choosing one (see `shared_groups`)."""
    return 1


_no_certificate_yet = _CERT_CB(_succeed)


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
        self.ssl_ctrl = lib.SSL_ctrl
        self.ssl_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ssl_ctrl.restype = ctypes.c_long
        self.get_ssl_ctx = lib.SSL_get_SSL_CTX
        self.get_ssl_ctx.argtypes = [ctypes.c_void_p]
        self.get_ssl_ctx.restype = ctypes.c_void_p
        self.set_cert_cb = lib.SSL_set_cert_cb
        self.set_cert_cb.argtypes = [ctypes.c_void_p, _CERT_CB, ctypes.c_void_p]
        self.set_cert_cb.restype = None
        self.set_session_id_context = lib.SSL_CTX_set_session_id_context
        self.set_session_id_context.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
        self.set_session_id_context.restype = ctypes.c_int


@functools.cache
def _openssl() -> _OpenSSL | None:
    """Bind to the libssl that CPython's _ssl module actually loaded."""
    return bind_loaded_library("/libssl.so", _OpenSSL)


def _require_openssl(what: str) -> _OpenSSL:
    lib = _openssl()
    if lib is None:
        raise ComplianceError(
            f"libssl is not visible in this process, so {what}; use tls.profile: card-fop"
        )
    return lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: _OpenSSL) -> int:
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


def _ssl_pointer(sslobj: Any, ctx_pointer: int) -> int | None:
    """Address of the SSL inside CPython's PySSLSocket ({HEAD; Socket weakref; SSL *ssl; ...}),
    trusted only where OpenSSL says that SSL belongs to the context we made it from."""
    lib = _openssl()
    if lib is None:
        return None
    offset = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    if type(sslobj).__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
        return None
    pointer = ctypes.c_void_p.from_address(id(sslobj) + offset).value
    if not pointer or lib.get_ssl_ctx(pointer) != ctx_pointer:
        return None
    return pointer


# ---- TLS 1.3 suites, groups, session cache, session id context -----------------------------

_SSL_CTRL_SET_SESS_CACHE_SIZE = 42
_SSL_CTRL_GET_SESS_CACHE_SIZE = 43
_SSL_CTRL_GET_SHARED_GROUP = 93
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_MAX_SID_CTX_LENGTH = 32


def set_tls13_suites(ctx: ssl.SSLContext, suites: Sequence[str]) -> None:
    """Limit the TLS 1.3 suites of `ctx` (SSL_CTX_set_ciphersuites); ComplianceError if not."""
    lib = _require_openssl("TLS 1.3 suites cannot be restricted")
    pointer = _ssl_ctx_pointer(ctx, lib)
    if lib.set_ciphersuites(pointer, ":".join(suites).encode("ascii")) != 1:
        raise ComplianceError(f"OpenSSL refused TLS 1.3 suites {':'.join(suites)}")


def set_groups(ctx: ssl.SSLContext, groups: Sequence[str]) -> None:
    """Set the key-exchange groups of `ctx` (SSL_CTX_set1_groups_list); ComplianceError if not.

    Set after the context exists, so it replaces whatever an OPENSSL_CONF's system default put
    there; `shared_groups` reads back what a handshake would really use.
    """
    lib = _require_openssl("key-exchange groups cannot be set")
    pointer = _ssl_ctx_pointer(ctx, lib)
    names = ":".join(groups).encode("ascii")
    if lib.ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.c_char_p(names)) != 1:
        raise ComplianceError(f"OpenSSL refused key-exchange groups {':'.join(groups)}")


def can_set_groups(groups: Sequence[str]) -> bool:
    """Whether the local OpenSSL knows every group in `groups` (tried on a scratch context)."""
    try:
        set_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), groups)
    except ComplianceError:
        return False
    return True


def set_session_cache_size(ctx: ssl.SSLContext, size: int) -> int | None:
    """Bound the session-ID cache; the size now set, or None where libssl is out of reach."""
    lib = _openssl()
    if lib is None:
        return None
    try:
        pointer = _ssl_ctx_pointer(ctx, lib)
    except ComplianceError:
        return None
    lib.ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_SIZE, size, None)
    return int(lib.ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_SIZE, 0, None))


_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_SESS_CACHE_OFF = 0


def disable_session_cache(ctx: ssl.SSLContext) -> None:
    """SSL_CTX_set_session_cache_mode(OFF): no session of this context is ever resumed."""
    lib = _require_openssl("session resumption cannot be turned off")
    lib.ctrl(_ssl_ctx_pointer(ctx, lib), _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)


def set_session_id_context(ctx: ssl.SSLContext, value: bytes) -> None:
    """SSL_CTX_set_session_id_context: OpenSSL resumes a session only on a context with the same
    value (RFC 5246 leaves that to the server). ComplianceError where it cannot be set."""
    if len(value) > _SSL_MAX_SID_CTX_LENGTH:
        raise ValueError("a session id context holds at most 32 bytes")
    lib = _require_openssl("sessions cannot be bound to their certificates")
    pointer = _ssl_ctx_pointer(ctx, lib)
    if lib.set_session_id_context(pointer, value, len(value)) != 1:
        raise ComplianceError("OpenSSL refused the session id context")


# Every TLS group OpenSSL 3 knows by name: a probe offers all of them, so that whatever the
# server would agree to shows up in the shared list.
KNOWN_GROUPS: tuple[str, ...] = (
    "X25519", "X448", "P-256", "P-384", "P-521",
    "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192",
    "brainpoolP256r1", "brainpoolP384r1", "brainpoolP512r1",
    "secp256k1", "secp224r1", "secp224k1", "secp192r1", "secp192k1",
    "secp160r1", "secp160r2", "secp160k1",
    "sect571r1", "sect571k1", "sect409r1", "sect409k1", "sect283r1", "sect283k1",
    "sect239k1", "sect233r1", "sect233k1", "sect193r1", "sect193r2",
    "sect163r1", "sect163r2", "sect163k1",
)  # fmt: skip
# SSL_get_shared_group answers with OpenSSL NIDs (include/openssl/obj_mac.h), not IANA code
# points; unknown ones are reported by number.
_GROUP_BY_NID: dict[int, str] = {
    1034: "X25519", 1035: "X448", 415: "P-256", 715: "P-384", 716: "P-521",
    1126: "ffdhe2048", 1127: "ffdhe3072", 1128: "ffdhe4096", 1129: "ffdhe6144",
    1130: "ffdhe8192", 927: "brainpoolP256r1", 931: "brainpoolP384r1",
    933: "brainpoolP512r1", 714: "secp256k1", 713: "secp224r1", 712: "secp224k1",
    409: "secp192r1", 711: "secp192k1", 709: "secp160r1", 710: "secp160r2",
    708: "secp160k1",
}  # fmt: skip


@functools.cache
def offerable_groups() -> tuple[str, ...]:
    """The names of KNOWN_GROUPS this OpenSSL accepts (a build may leave some out)."""
    return tuple(g for g in KNOWN_GROUPS if can_set_groups([g]))


def shared_groups(ctx: ssl.SSLContext, version: ssl.TLSVersion) -> tuple[str, ...]:
    """The groups a server context would agree to at `version`, in its preference order.

    Python cannot read a context's groups, so a client offering every group OpenSSL knows sends
    one ClientHello (in memory) to a server SSL made from `ctx`, and OpenSSL is asked which
    groups the two share (SSL_get_shared_group). That is what a real handshake would pick from,
    whatever OPENSSL_CONF or a later call did to the context. ComplianceError where the answer
    cannot be had (a private layout we could not verify): the caller must then fail closed.
    """
    lib = _require_openssl("key-exchange groups cannot be verified")
    ctx_pointer = _ssl_ctx_pointer(ctx, lib)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.minimum_version = client.maximum_version = version
    client.set_ciphers("ALL:@SECLEVEL=0")
    set_groups(client, offerable_groups())
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_side=False)
    server_in = ssl.MemoryBIO()
    server_side = ctx.wrap_bio(server_in, ssl.MemoryBIO(), server_side=True)
    pointer = _ssl_pointer(getattr(server_side, "_sslobj", None), ctx_pointer)
    if pointer is None:
        raise ComplianceError("cannot reach this Python's SSL object to verify the groups")
    # OpenSSL negotiates TLS 1.3 only where a certificate (or a certificate callback) could
    # answer; `fopproxy check` builds contexts without one. A callback on this probe SSL alone
    # (the context is untouched) lets the ClientHello be read at TLS 1.3 too.
    lib.set_cert_cb(pointer, _no_certificate_yet, None)
    with contextlib.suppress(ssl.SSLWantReadError):
        client_side.do_handshake()
    server_in.write(to_server.read())
    # No certificate, or the handshake goes on: the ClientHello has been read either way.
    with contextlib.suppress(ssl.SSLError):
        server_side.do_handshake()
    count = int(lib.ssl_ctrl(pointer, _SSL_CTRL_GET_SHARED_GROUP, -1, None))
    ids = [int(lib.ssl_ctrl(pointer, _SSL_CTRL_GET_SHARED_GROUP, n, None)) for n in range(count)]
    return tuple(_GROUP_BY_NID.get(i, f"NID {i}") for i in ids)


# ---- session tickets shared by every worker (tickets.py holds the keys) ---------------------

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
    lib = _require_openssl("session tickets cannot be shared between workers")
    if libs is None:
        raise ComplianceError("libcrypto is not reachable: session tickets cannot be shared")
    pointer = _ssl_ctx_pointer(ctx, lib)
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
    lib = _require_openssl("session tickets cannot be shared")
    pointer = _ssl_ctx_pointer(ctx, lib)
    buffer = ctypes.create_string_buffer(key, _TICKET_KEY_BYTES)
    try:
        if lib.ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, _TICKET_KEY_BYTES, buffer) != 1:
            raise ComplianceError("OpenSSL refused the session ticket key")
    finally:
        ctypes.memset(buffer, 0, _TICKET_KEY_BYTES)


def ticket_key_name(ctx: ssl.SSLContext) -> bytes:
    """The name of the key libssl holds for `ctx` (set_ticket_key); the key bytes read with it
    are wiped at once."""
    lib = _require_openssl("session tickets cannot be shared")
    pointer = _ssl_ctx_pointer(ctx, lib)
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
    lib = _require_openssl("early data cannot be checked")
    if libs is None:
        raise ComplianceError("libssl is not reachable: early data cannot be checked")
    return int(libs[1].ctx_max_early_data(_ssl_ctx_pointer(ctx, lib)))


# ---- the relay's fast path -----------------------------------------------------------------

# What the relay calls on the object `fast_sslobj` returns.
_RELAY_METHODS = ("read", "write", "do_handshake", "version", "cipher", "pending")


_checked_types: dict[type, bool] = {}


def _sslobj_type_ok(kind: type) -> bool:
    ok = _checked_types.get(kind)
    if ok is None:
        ok = _checked_types[kind] = all(
            callable(getattr(kind, n, None)) for n in _RELAY_METHODS
        ) and hasattr(kind, "session_reused")
    return ok


def fast_sslobj(ssl_object: ssl.SSLObject) -> Any:
    """The `_ssl._SSLSocket` behind an SSLObject, or the SSLObject itself.

    The public SSLObject wraps each call in a Python method; calling the C object directly saves
    that on every record. Used only where the private object has every method the relay calls.
    """
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is not None and _sslobj_type_ok(type(inner)):
        return inner
    return ssl_object


@functools.cache
def fast_sslobj_active() -> bool:
    """Whether `fast_sslobj` returns the private object on this runtime."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="probe.invalid")
    return fast_sslobj(probe) is not probe


# ---- the peer's chain ----------------------------------------------------------------------


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


# ---- memory BIO buffers --------------------------------------------------------------------

_BIO_TYPE_MEM = 1 | 0x0400  # BIO_TYPE_MEM: method 1, a source/sink
_BIO_C_SET_BUF_MEM = 114
_BIO_C_GET_BUF_MEM_PTR = 115
_BIO_CLOSE = 1


class _BufMem(ctypes.Structure):
    """`struct buf_mem_st` (include/openssl/buffer.h), read only to verify a release."""

    _fields_ = (
        ("length", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("max", ctypes.c_size_t),
        ("flags", ctypes.c_ulong),
    )


class BioReleaser:
    """Frees an empty `ssl.MemoryBIO`'s buffer (OpenSSL's BUF_MEM never shrinks by itself).

    Swaps the buffer for a fresh, unallocated one through libcrypto (`BIO_set_mem_buf`, which
    frees the old one); the next write allocates again. Bound to the libcrypto CPython loaded.
    """

    __slots__ = ("_ctrl", "_new_buf", "_offset", "_pending", "_type")

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        self._ctrl = lib.BIO_ctrl
        self._ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self._ctrl.restype = ctypes.c_long
        self._new_buf = lib.BUF_MEM_new
        self._new_buf.argtypes = []
        self._new_buf.restype = ctypes.c_void_p
        self._pending = lib.BIO_ctrl_pending
        self._pending.argtypes = [ctypes.c_void_p]
        self._pending.restype = ctypes.c_size_t
        self._type = lib.BIO_method_type
        self._type.argtypes = [ctypes.c_void_p]
        self._type.restype = ctypes.c_int
        # PySSLMemoryBIO is {PyObject_HEAD; BIO *bio; int eof_written;}: the pointer follows the
        # object header.
        self._offset = object.__basicsize__

    def _pointer(self, bio: ssl.MemoryBIO) -> int | None:
        return ctypes.c_void_p.from_address(id(bio) + self._offset).value

    def release(self, bio: ssl.MemoryBIO) -> bool:
        """Free `bio`'s buffer if it holds no data; False if it holds data or allocation failed."""
        if bio.pending:
            return False
        fresh = self._new_buf()
        if not fresh:
            return False
        self._ctrl(self._pointer(bio), _BIO_C_SET_BUF_MEM, _BIO_CLOSE, fresh)
        return True

    def allocated(self, bio: ssl.MemoryBIO) -> int:
        """Bytes the BIO's buffer holds room for (its `BUF_MEM.max`)."""
        buf = ctypes.c_void_p()
        self._ctrl(self._pointer(bio), _BIO_C_GET_BUF_MEM_PTR, 0, ctypes.byref(buf))
        if not buf.value:
            return 0
        return int(_BufMem.from_address(buf.value).max)

    def verify(self) -> bool:
        """The layout and the calls do what we assume, on a probe BIO."""
        if ssl.MemoryBIO.__basicsize__ < self._offset + ctypes.sizeof(ctypes.c_void_p):
            return False
        probe = ssl.MemoryBIO()
        probe.write(b"x" * 1000)
        pointer = self._pointer(probe)
        if not pointer or self._type(pointer) != _BIO_TYPE_MEM:
            return False
        if self._pending(pointer) != 1000 or self.allocated(probe) < 1000:
            return False
        if self.release(probe):  # holds data: must refuse
            return False
        probe.read()
        if not self.release(probe) or self.allocated(probe) != 0 or probe.pending != 0:
            return False
        probe.write(b"abc")
        return probe.read() == b"abc" and self._pending(pointer) == 0


@functools.cache
def bio_releaser() -> BioReleaser | None:
    """The process's releaser, or None where libcrypto is out of reach or the check fails."""
    releaser = bind_loaded_library("/libcrypto.so", BioReleaser)
    return releaser if releaser is not None and releaser.verify() else None


# ---- the C heap ----------------------------------------------------------------------------


@functools.cache
def malloc_trim() -> Callable[[], None] | None:
    """glibc's malloc_trim(0), bound once per process; None where there is none (musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    if function(0) not in (0, 1):  # returns 1 if memory was released, else 0
        return None

    def trim() -> None:
        function(0)

    return trim


# ---- what is active ------------------------------------------------------------------------


def status() -> dict[str, str]:
    """Each native access and whether it is active here, for `fopproxy check`."""
    lib = _openssl()
    ctx_reachable = False
    if lib is not None:
        try:
            _ssl_ctx_pointer(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), lib)
            ctx_reachable = True
        except ComplianceError:
            ctx_reachable = False
    libssl = "active" if ctx_reachable else "unavailable: TLS 1.3 and groups cannot be pinned"
    return {
        "libssl (TLS 1.3 suites, groups, session cache)": libssl,
        "memory BIO release": "active" if bio_releaser() is not None else "off (buffers kept)",
        "relay fast path (_sslobj)": "active" if fast_sslobj_active() else "off (SSLObject)",
        "heap trim (malloc_trim)": "active" if malloc_trim() is not None else "off (no glibc)",
        "peer chain": unverified_chain_active(),
        "ticket key in libssl (resumption without Python)": _ticket_key_in_libssl(),
    }


def _ticket_key_in_libssl() -> str:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        set_ticket_key(probe, bytes(range(_TICKET_KEY_BYTES)))
        active = ticket_key_name(probe) == bytes(range(16))
    except ComplianceError:
        active = False
    return "active" if active else "off (every ticket through the callback)"
