"""What the Card FOP rules allow, written out literally, once, for the tests to check against.

Deliberately not imported from `fopproxy.policy`: if someone widens the policy, these literals do
not move with it, and every test that compares what is served or scanned against them fails.
Source: /work/shared/CARD_FOP_TLS.md (the rule) and docs/COMPLIANCE.md (how fopproxy reads it).
"""

from __future__ import annotations

# The six TLS 1.2 suites, in fopproxy's documented server-preference order (OpenSSL names).
TLS12_SUITES: tuple[str, ...] = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
)

# The same six by their IANA names (what independent scanners such as sslyze report).
TLS12_SUITES_IANA: frozenset[str] = frozenset({
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
})

# card-fop-tls13 only: the two TLS 1.3 suites (OpenSSL and IANA names are the same).
TLS13_SUITES: tuple[str, ...] = ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")

# Key exchange: ECDHE over these groups only, by OpenSSL's group names, and as scanners name them.
GROUPS: tuple[str, ...] = ("X25519", "P-256", "P-384")
GROUPS_OPENSSL: tuple[str, ...] = ("x25519", "prime256v1", "secp384r1")
