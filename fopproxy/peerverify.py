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

This module holds the policy (what is admitted, whose certificate it was); the C side (the
callback installed on the SSL_CTX, the X509_STORE_CTX calls, the CA list) is fopproxy.native's.
"""

from __future__ import annotations

import hashlib
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
from fopproxy.native import (
    PeerCertificates,
    PeerVerification,
    VerifyFunction,
    reach_peer_verification,
)

# A bound on the decisions kept per context: distinct client certificates are few (Google's, a
# rotation's next one); a flood of distinct ones only costs a re-parse after the reset.
_CACHE_LIMIT = 4096


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


def _note_refused(crypto: PeerCertificates, store: int) -> None:
    global _refused  # noqa: PLW0603
    der = crypto.der(crypto.leaf(store))
    try:
        _refused = identity_of(der) if der is not None else None
    except ValueError:
        _refused = None


def _decider(allow: AllowList, crypto: PeerCertificates) -> VerifyFunction:
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

    return verify


def _reach(ctx: ssl.SSLContext) -> PeerVerification | None:
    """`ctx`'s verify plumbing (native), or None where it cannot be had safely."""
    return reach_peer_verification(ctx)


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
    reached.set_verify(_decider(allow, reached.certificates))


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
    return reached.set_client_ca_names(pem)


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
