"""Which certificate this proxy presented on a connection, in HAProxy's words (PROXY v2 TLVs).

PP2_SUBTYPE_SSL_SIG_ALG and _KEY_ALG describe the certificate the *proxy* served (HAProxy sends
`ecdsa-with-SHA256` and `EC256` / `RSA2048`, seen on the wire from haproxy 2.6). OpenSSL picks one
of a context's certificates per handshake and Python does not say which: the native layer asks
OpenSSL (native.served_certificate_facts); this module only names the answer as HAProxy does.
Where it cannot be known, both TLVs are left out rather than guessed.
"""

from __future__ import annotations

from fopproxy.native import served_certificate_active, served_certificate_facts


def served_certificate(tls: object) -> tuple[str | None, str | None]:
    """(signature algorithm, key algorithm) of the certificate served on `tls` (an SSLObject's
    `_sslobj`), e.g. ("ecdsa-with-SHA256", "EC256"); (None, None) where it cannot be known."""
    sig_alg, kind, bits = served_certificate_facts(tls)
    return sig_alg, f"{kind}{bits}" if kind else None


def status() -> dict[str, str]:
    """Whether the served certificate can be named (PROXY v2 SIG_ALG/KEY_ALG), for `check`."""
    state = "active" if served_certificate_active() else "off (left out)"
    return {"served certificate (PROXY v2 SIG_ALG, KEY_ALG)": state}
