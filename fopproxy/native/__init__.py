"""Every reach past Python's public ssl API, in one place, each verified before it is trusted.

Python's ssl module cannot restrict TLS 1.3 suites or key-exchange groups, bound the session
cache, free a memory BIO's buffer, judge a client certificate inside the handshake, name the
client CAs, say which certificate was served, or hand out the raw `_ssl._SSLSocket` the relay
drives; glibc's `malloc_trim` has no binding either. Each of those is reached here, through
ctypes into the very libssl/libcrypto CPython's _ssl loaded, or through a private attribute, and
each is checked on first use against what the public API reports. Where a check fails, the
caller gets a safe fallback (None, or the public object) or, where the policy depends on it, a
ComplianceError: the runtime must never serve something it could not verify. `status()` says
which are active (`fopproxy check` prints it; peerverify and tlsinfo add their own rows).

No other fopproxy module imports ctypes: the bindings live in this package, split by job:
`binding` (the loaded libssl/libcrypto, the checked SSL_CTX and SSL pointers), `context` (TLS 1.3
suites, groups, session cache and id context), `sessiontickets` (ticket keys, early data),
`fastpath` (the relay's `_sslobj`, memory BIO release, malloc_trim), `peer` (the verify callback
plumbing, the client CA names, the peer's chain) and `served` (which certificate was served).
Callers import from `fopproxy.native` itself.
"""

from __future__ import annotations

import ssl

from fopproxy.native.binding import bind_loaded_library, loaded_library, reach_ssl_ctx
from fopproxy.native.context import (
    KNOWN_GROUPS,
    can_set_groups,
    disable_session_cache,
    offerable_groups,
    set_groups,
    set_session_cache_size,
    set_session_id_context,
    set_tls13_suites,
    shared_groups,
)
from fopproxy.native.fastpath import (
    BioReleaser,
    bio_releaser,
    fast_sslobj,
    fast_sslobj_active,
    malloc_trim,
)
from fopproxy.native.peer import (
    PeerCertificates,
    PeerVerification,
    VerifyFunction,
    reach_peer_verification,
    unverified_chain,
    unverified_chain_active,
)
from fopproxy.native.served import served_certificate_active, served_certificate_facts
from fopproxy.native.sessiontickets import (
    install_ticket_keys,
    max_early_data,
    session_max_early_data,
    set_ticket_key,
    ticket_key_in_libssl,
    ticket_key_name,
)

__all__ = [
    "KNOWN_GROUPS",
    "BioReleaser",
    "PeerCertificates",
    "PeerVerification",
    "VerifyFunction",
    "bind_loaded_library",
    "bio_releaser",
    "can_set_groups",
    "disable_session_cache",
    "fast_sslobj",
    "fast_sslobj_active",
    "install_ticket_keys",
    "loaded_library",
    "malloc_trim",
    "max_early_data",
    "offerable_groups",
    "reach_peer_verification",
    "served_certificate_active",
    "served_certificate_facts",
    "session_max_early_data",
    "set_groups",
    "set_session_cache_size",
    "set_session_id_context",
    "set_ticket_key",
    "set_tls13_suites",
    "shared_groups",
    "status",
    "ticket_key_in_libssl",
    "ticket_key_name",
    "unverified_chain",
    "unverified_chain_active",
]


def status() -> dict[str, str]:
    """Each native access and whether it is active here, for `fopproxy check`."""
    libssl = (
        "active"
        if reach_ssl_ctx(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) is not None
        else "unavailable: TLS 1.3 and groups cannot be pinned"
    )
    return {
        "libssl (TLS 1.3 suites, groups, session cache)": libssl,
        "memory BIO release": "active" if bio_releaser() is not None else "off (buffers kept)",
        "relay fast path (_sslobj)": "active" if fast_sslobj_active() else "off (SSLObject)",
        "heap trim (malloc_trim)": "active" if malloc_trim() is not None else "off (no glibc)",
        "peer chain": unverified_chain_active(),
        "ticket key in libssl (resumption without Python)": ticket_key_in_libssl(),
    }
