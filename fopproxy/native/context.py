"""Context settings Python's ssl module has no API for: TLS 1.3 suites, key-exchange groups (and
reading back the ones a handshake would really share), the session cache and session id context.

Each is set through the checked SSL_CTX pointer; where the policy depends on it and it cannot be
set, the caller gets a ComplianceError, never a context serving something unverified.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ssl
from collections.abc import Sequence

from fopproxy.errors import ComplianceError
from fopproxy.native.binding import (
    CERT_CB,
    openssl,
    require_openssl,
    ssl_ctx_pointer,
    ssl_pointer,
)


def _succeed(_ssl: int | None, _arg: int | None) -> int:
    """A certificate callback that succeeds without choosing one (see `shared_groups`)."""
    return 1


_no_certificate_yet = CERT_CB(_succeed)


_SSL_CTRL_SET_SESS_CACHE_SIZE = 42
_SSL_CTRL_GET_SESS_CACHE_SIZE = 43
_SSL_CTRL_GET_SHARED_GROUP = 93
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_MAX_SID_CTX_LENGTH = 32


def set_tls13_suites(ctx: ssl.SSLContext, suites: Sequence[str]) -> None:
    """Limit the TLS 1.3 suites of `ctx` (SSL_CTX_set_ciphersuites); ComplianceError if not."""
    lib = require_openssl("TLS 1.3 suites cannot be restricted")
    pointer = ssl_ctx_pointer(ctx, lib)
    if lib.set_ciphersuites(pointer, ":".join(suites).encode("ascii")) != 1:
        raise ComplianceError(f"OpenSSL refused TLS 1.3 suites {':'.join(suites)}")


def set_groups(ctx: ssl.SSLContext, groups: Sequence[str]) -> None:
    """Set the key-exchange groups of `ctx` (SSL_CTX_set1_groups_list); ComplianceError if not.

    Set after the context exists, so it replaces whatever an OPENSSL_CONF's system default put
    there; `shared_groups` reads back what a handshake would really use.
    """
    lib = require_openssl("key-exchange groups cannot be set")
    pointer = ssl_ctx_pointer(ctx, lib)
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
    lib = openssl()
    if lib is None:
        return None
    try:
        pointer = ssl_ctx_pointer(ctx, lib)
    except ComplianceError:
        return None
    lib.ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_SIZE, size, None)
    return int(lib.ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_SIZE, 0, None))


_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_SESS_CACHE_OFF = 0


def disable_session_cache(ctx: ssl.SSLContext) -> None:
    """SSL_CTX_set_session_cache_mode(OFF): no session of this context is ever resumed."""
    lib = require_openssl("session resumption cannot be turned off")
    lib.ctrl(ssl_ctx_pointer(ctx, lib), _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)


def set_session_id_context(ctx: ssl.SSLContext, value: bytes) -> None:
    """SSL_CTX_set_session_id_context: OpenSSL resumes a session only on a context with the same
    value (RFC 5246 leaves that to the server). ComplianceError where it cannot be set."""
    if len(value) > _SSL_MAX_SID_CTX_LENGTH:
        raise ValueError("a session id context holds at most 32 bytes")
    lib = require_openssl("sessions cannot be bound to their certificates")
    pointer = ssl_ctx_pointer(ctx, lib)
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
    lib = require_openssl("key-exchange groups cannot be verified")
    ctx_pointer = ssl_ctx_pointer(ctx, lib)
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
    pointer = ssl_pointer(getattr(server_side, "_sslobj", None), ctx_pointer)
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

