"""The compliance profiles: which protocol versions, suites and key-exchange groups a Card FOP
endpoint may offer.

This module is pure data plus the narrowing rule. Nothing in the config can widen a profile:
a user may only pick a non-empty subset of its suites, and the server-preference order is always
the profile's own (ECDSA before RSA within each AEAD; GCM, then ChaCha20, then CBC-SHA256 last).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal

KeyType = Literal["ecdsa", "rsa"]

# The six TLS 1.2 suites of the Card FOP rule, in server-preference order (OpenSSL names).
CARD_FOP_TLS12_SUITES: tuple[str, ...] = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
)

# TLS 1.3 has its own suite names, none on the list; these are the same algorithms (our reading).
CARD_FOP_TLS13_SUITES: tuple[str, ...] = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256",
)

# ECDHE over these groups only (OpenSSL names, server preference order), under TLS 1.2 and 1.3
# alike: no P-521, no X448, and no finite-field groups (ffdhe*), which are not ECDHE at all.
CARD_FOP_GROUPS: tuple[str, ...] = ("X25519", "P-256", "P-384")

IANA_NAMES: dict[str, str] = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-RSA-AES128-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_AES_128_GCM_SHA256": "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256": "TLS_CHACHA20_POLY1305_SHA256",
}


@dataclass(frozen=True)
class Profile:
    """A named, closed set of protocol versions, suites and key-exchange groups."""

    name: str
    minimum_version: ssl.TLSVersion
    maximum_version: ssl.TLSVersion
    tls12_suites: tuple[str, ...]
    tls13_suites: tuple[str, ...]
    groups: tuple[str, ...] = CARD_FOP_GROUPS

    @property
    def all_suites(self) -> tuple[str, ...]:
        return self.tls12_suites + self.tls13_suites


PROFILES: dict[str, Profile] = {
    "card-fop": Profile(
        name="card-fop",
        minimum_version=ssl.TLSVersion.TLSv1_2,
        maximum_version=ssl.TLSVersion.TLSv1_2,
        tls12_suites=CARD_FOP_TLS12_SUITES,
        tls13_suites=(),
    ),
    "card-fop-tls13": Profile(
        name="card-fop-tls13",
        minimum_version=ssl.TLSVersion.TLSv1_2,
        maximum_version=ssl.TLSVersion.TLSv1_3,
        tls12_suites=CARD_FOP_TLS12_SUITES,
        tls13_suites=CARD_FOP_TLS13_SUITES,
    ),
}

DEFAULT_PROFILE = "card-fop"


def suite_key_type(suite: str) -> KeyType | None:
    """The certificate key type a TLS 1.2 suite needs; None for TLS 1.3 suites (any key type)."""
    if suite.startswith("ECDHE-ECDSA-"):
        return "ecdsa"
    if suite.startswith("ECDHE-RSA-"):
        return "rsa"
    return None


@dataclass(frozen=True)
class SuiteSelection:
    """The suites a server will offer: a subset of one profile, in that profile's order."""

    profile: Profile
    tls12: tuple[str, ...]
    tls13: tuple[str, ...]

    @property
    def key_types(self) -> frozenset[KeyType]:
        """Key types that some selected TLS 1.2 suite can serve."""
        return frozenset(t for t in map(suite_key_type, self.tls12) if t is not None)


def select_suites(profile: Profile, requested: tuple[str, ...]) -> SuiteSelection:
    """Narrow `profile` to `requested` (empty = everything); raise ValueError naming the bad suite.

    TLS 1.2 and TLS 1.3 names narrow their own family; a family with no name listed keeps the
    profile's full set, but the TLS 1.2 family can never end up empty (the rule requires at least
    one listed suite to be served).
    """
    allowed = set(profile.all_suites)
    for index, name in enumerate(requested):
        if name not in allowed:
            raise ValueError(
                f"[{index}] {name!r} is not a suite of profile {profile.name!r} "
                f"(allowed: {', '.join(profile.all_suites)})"
            )
    wanted = set(requested)
    tls12 = tuple(s for s in profile.tls12_suites if s in wanted)
    tls13 = tuple(s for s in profile.tls13_suites if s in wanted)
    if not requested:
        return SuiteSelection(profile, profile.tls12_suites, profile.tls13_suites)
    if not tls12:
        raise ValueError("must name at least one TLS 1.2 suite; TLS 1.2 clients need one")
    return SuiteSelection(profile, tls12, tls13 or profile.tls13_suites)
