"""The TLS context is exactly the profile, by construction and by verification."""

from __future__ import annotations

import ssl

import pytest

from fopproxy import native
from fopproxy.errors import ComplianceError
from fopproxy.policy import PROFILES, select_suites
from fopproxy.tls import (
    REQUIRED_OPTIONS,
    agreed_groups,
    build_context,
    offered_suites,
    verify_context,
)
from tests.support.expected import TLS12_SUITES, TLS13_SUITES


def test_card_fop_context_offers_exactly_the_six_suites_in_order() -> None:
    ctx = build_context(select_suites(PROFILES["card-fop"], ()), [])
    tls12, _ = offered_suites(ctx)
    assert tuple(tls12) == TLS12_SUITES
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_2


def test_required_options_and_no_tickets() -> None:
    ctx = build_context(select_suites(PROFILES["card-fop"], ()), [])
    assert ctx.options & REQUIRED_OPTIONS == REQUIRED_OPTIONS
    assert ctx.num_tickets == 0


def test_tls13_profile_restricts_tls13_suites() -> None:
    """Python has no API for this; the ctypes path must really narrow what OpenSSL offers."""
    ctx = build_context(select_suites(PROFILES["card-fop-tls13"], ()), [])
    tls12, tls13 = offered_suites(ctx)
    assert tuple(tls13) == TLS13_SUITES
    assert tuple(tls12) == TLS12_SUITES
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3


def test_narrowed_selection_is_what_is_offered() -> None:
    selection = select_suites(PROFILES["card-fop-tls13"], ("ECDHE-RSA-AES128-GCM-SHA256", "TLS_CHACHA20_POLY1305_SHA256"))
    ctx = build_context(selection, [])
    assert offered_suites(ctx) == (["ECDHE-RSA-AES128-GCM-SHA256"], ["TLS_CHACHA20_POLY1305_SHA256"])


def test_verify_context_fails_closed_on_a_widened_context() -> None:
    """A context someone widened (an extra suite) is refused, not served."""
    selection = select_suites(PROFILES["card-fop"], ())
    ctx = build_context(selection, [])
    ctx.set_ciphers(":".join(TLS12_SUITES) + ":ECDHE-RSA-AES256-GCM-SHA384")
    with pytest.raises(ComplianceError, match=r"TLS 1\.2 suites"):
        verify_context(ctx, selection)


def test_verify_context_fails_closed_on_old_protocol() -> None:
    selection = select_suites(PROFILES["card-fop"], ())
    ctx = build_context(selection, [])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ComplianceError, match="minimum protocol"):
        verify_context(ctx, selection)


def test_selection_never_widens() -> None:
    with pytest.raises(ValueError, match="not a suite of profile"):
        select_suites(PROFILES["card-fop"], ("ECDHE-RSA-AES256-GCM-SHA384",))
    with pytest.raises(ValueError, match=r"at least one TLS 1\.2 suite"):
        select_suites(PROFILES["card-fop-tls13"], ("TLS_AES_128_GCM_SHA256",))
    selection = select_suites(PROFILES["card-fop"], ("ECDHE-ECDSA-AES128-SHA256",))
    assert selection.key_types == frozenset({"ecdsa"})


@pytest.mark.parametrize("profile", ["card-fop", "card-fop-tls13"])
def test_groups_are_pinned_under_every_version_served(profile: str) -> None:
    """OpenSSL, asked what it would share with a client offering every group, names only three."""
    ctx = build_context(select_suites(PROFILES[profile], ()), [])
    agreed = agreed_groups(ctx)
    assert set(agreed) == ({"TLSv1.2", "TLSv1.3"} if profile == "card-fop-tls13" else {"TLSv1.2"})
    for groups in agreed.values():
        assert set(groups) == {"X25519", "P-256", "P-384"}


def test_verify_context_fails_closed_on_widened_groups() -> None:
    """A context whose groups someone widened (P-521 added) is refused, not served."""
    selection = select_suites(PROFILES["card-fop-tls13"], ())
    ctx = build_context(selection, [])
    native.set_groups(ctx, ["X25519", "P-256", "P-384", "P-521"])
    with pytest.raises(ComplianceError, match="key-exchange groups"):
        verify_context(ctx, selection)
