"""The allow-list check inside the handshake, through OpenSSL's certificate-verify callback.

Python's ssl module verifies client certificates against a CA but offers no hook to refuse a
verified one by name or fingerprint. Checking after the handshake would be too late to refuse
properly: in TLS 1.3 the server's Finished is already sent, and there is no API to send a fatal
alert of our choice. OpenSSL's verify callback runs while the client's Certificate message is
processed; refusing there makes OpenSSL fail the handshake itself, with the alert it sends for an
application verification failure (handshake_failure), encrypted where TLS 1.3 needs it, and with
`verify_code` 50 on the SSLError, which clientauth.classify_failure reads as `not_allowed`.

The callback is installed wherever client certificates are asked for. With an allow-list it
does real work once per handshake (at depth 0, for a chain OpenSSL already verified): one
SHA-256 inside OpenSSL and a cached decision per distinct certificate. On any refusal it also
notes whose certificate it was, for the connection's log line (`take_refused`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import ssl

from cryptography import x509
from cryptography.x509.oid import NameOID

from fopproxy.clientauth import (
    X509_V_ERR_APPLICATION_VERIFICATION,
    AllowList,
    ClientIdentity,
    ClientTrust,
)
from fopproxy.errors import ComplianceError
from fopproxy.native import _openssl, _ssl_ctx_pointer, bind_loaded_library

_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
# A bound on the decisions kept per context: distinct client certificates are few (Google's, a
# rotation's next one); a flood of distinct ones only costs a re-parse after the reset.
_CACHE_LIMIT = 4096


class _Crypto:
    """The libcrypto functions the callback needs, bound to the library CPython's _ssl loaded."""

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
def _libraries() -> tuple[_Ssl, _Crypto] | None:
    ssl_lib = bind_loaded_library("/libssl.so", _Ssl)
    crypto = bind_loaded_library("/libcrypto.so", _Crypto)
    if ssl_lib is None or crypto is None:
        return None
    return ssl_lib, crypto


def identity_from_der(der: bytes) -> ClientIdentity:
    """What the allow-list and the log need from a certificate (ValueError if unreadable)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns, uris = (), ()
    common_names = tuple(
        str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    )
    return ClientIdentity(
        subject=cert.subject.rfc4514_string(),
        common_names=common_names,
        dns=dns,
        uris=uris,
        sha256=hashlib.sha256(der).digest(),
    )


_IDENTITY_CACHE_LIMIT = 1024
_identities: dict[bytes, ClientIdentity] = {}


def identity_of(der: bytes) -> ClientIdentity:
    """The identity of a client certificate, parsed once per distinct certificate: the clients
    of a proxy are few (Google's, its next rotation), connections are many."""
    digest = hashlib.sha256(der).digest()
    identity = _identities.get(digest)
    if identity is None:
        if len(_identities) >= _IDENTITY_CACHE_LIMIT:
            _identities.clear()
        identity = _identities[digest] = identity_from_der(der)
    return identity


# The client certificate the last refusal was about. The callback runs inside do_handshake, on
# the event loop's only thread, and the relay takes it right after that call raised: no other
# handshake can come between.
_refused: ClientIdentity | None = None


def take_refused() -> ClientIdentity | None:
    """The certificate of the refusal that just happened (for its log line), once."""
    global _refused  # see above: one thread, taken at once
    refused, _refused = _refused, None
    return refused


def _note_refused(crypto: _Crypto, store: int) -> None:
    global _refused  # noqa: PLW0603
    der = crypto.der(crypto.leaf(store))
    try:
        _refused = identity_of(der) if der is not None else None
    except ValueError:
        _refused = None


def _decider(allow: AllowList, crypto: _Crypto) -> _VerifyCallback:  # type: ignore[valid-type]
    decisions: dict[bytes, bool] = {}

    def verify(preverify_ok: int, store: int) -> int:
        if not preverify_ok:
            # OpenSSL refused the chain (untrusted, expired ...): its verdict stands; only
            # remember whose certificate it was, for the log line.
            _note_refused(crypto, store)
            return 0
        # Only the leaf of a chain OpenSSL has verified (ok at depth 0) is ours to judge.
        if allow.empty or crypto.depth(store) != 0:
            return 1
        cert = crypto.current_cert(store)
        digest = crypto.fingerprint(cert)
        admitted = decisions.get(digest) if digest is not None else None
        if admitted is None:
            # A certificate not seen yet: read it once (the DER), judge it, remember.
            der = crypto.der(cert)
            admitted = False
            if der is not None:
                try:
                    admitted = allow.admits(identity_from_der(der))
                except ValueError:  # OpenSSL took it, cryptography cannot read it: refuse
                    admitted = False
                if len(decisions) >= _CACHE_LIMIT:
                    decisions.clear()
                decisions[hashlib.sha256(der).digest()] = admitted
        if admitted:
            return 1
        _note_refused(crypto, store)
        crypto.set_error(store, X509_V_ERR_APPLICATION_VERIFICATION)
        return 0

    return _VerifyCallback(verify)


def _reach(ctx: ssl.SSLContext) -> tuple[tuple[_Ssl, _Crypto], int] | None:
    """The bindings and `ctx`'s SSL_CTX pointer, or None where either cannot be had safely."""
    libraries = _libraries()
    core = _openssl()
    if libraries is None or core is None:
        return None
    try:
        return libraries, _ssl_ctx_pointer(ctx, core)
    except ComplianceError:
        return None


def install_allow_check(ctx: ssl.SSLContext, allow: AllowList) -> None:
    """Make `ctx` refuse, inside the handshake, a verified client certificate outside `allow`,
    and remember whose certificate each refusal was about (`take_refused`).

    Call after `ctx.verify_mode` is set. Fails closed (ComplianceError) where libssl cannot be
    reached and there is an allow-list: serving without it would admit clients the config
    refuses. Without one, only the refused certificate's name in the log is lost.
    """
    reached = _reach(ctx)
    if reached is None:
        if allow.empty:
            return  # OpenSSL's own verification is all that is asked for
        raise ComplianceError(
            "libssl/libcrypto cannot be reached from this Python, so tls.client_auth.allow "
            "cannot be enforced; remove the allow-list (any certificate from ca) or use "
            "another runtime"
        )
    (ssl_lib, crypto), pointer = reached
    mode = ssl_lib.get_verify_mode(pointer)
    callback = _decider(allow, crypto)
    ssl_lib.set_verify(pointer, mode, callback)
    # The C side holds only a raw pointer: the context keeps the callback alive as long as it.
    ctx._fopproxy_allow_check = callback  # type: ignore[attr-defined]


def name_client_cas(ctx: ssl.SSLContext, pem: str) -> bool:
    """Name the subjects of `pem` in the CertificateRequest (RFC 5246 §7.4.4, RFC 8446 §4.2.4).

    `load_verify_locations` trusts the CAs but, unlike HAProxy's `ca-file` and nginx's
    `ssl_client_certificate`, names none of them, and a client holding several certificates
    (curl, browsers, Java) picks one by these names. Best effort: returns False where libssl is
    out of reach; the CA still verifies, only the hint is missing.
    """
    reached = _reach(ctx)
    if reached is None:
        return False
    (ssl_lib, _), pointer = reached
    # SSL_load_client_CA_file takes a path: hand it the validated bytes through a memfd, not the
    # user's file again (a rotation may be rewriting it right now).
    fd = os.memfd_create("fopproxy-client-ca", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem.encode("ascii"))
        names = ssl_lib.load_client_ca_file(f"/proc/self/fd/{fd}".encode())
    finally:
        os.close(fd)
    if not names:
        return False
    ssl_lib.set_client_ca_list(pointer, names)  # the context owns the list from here
    return True


def apply_client_trust(ctx: ssl.SSLContext, trust: ClientTrust) -> None:
    """Ask for client certificates on `ctx` (a context being built, never a live one): verify
    them against the CA, name the CAs in the request, and judge the allow-list in the handshake."""
    ctx.verify_mode = trust.verify_mode
    ctx.load_verify_locations(cadata=trust.ca.pem)
    name_client_cas(ctx, trust.ca.pem)
    install_allow_check(ctx, trust.allow)


def status() -> dict[str, str]:
    """Whether the verify callback and the CA names can be set here, for `fopproxy check`."""
    reachable = _reach(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) is not None
    return {
        "client certificates (allow-list, CA names, refused names)": "active"
        if reachable
        else "unavailable: tls.client_auth.allow cannot be enforced (refused at start)",
    }
