"""The outbound client context: exactly the profile, always verifying, RFC 6125 names.

Handshakes run in memory against real server contexts (Python's ssl), no sockets needed.
"""

from __future__ import annotations

import contextlib
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fopproxy import native
from fopproxy.errors import ComplianceError
from fopproxy.outbound.context import (
    ClientPolicy,
    build_client_context,
    offered_groups,
    peer_name_problem,
    verify_client_context,
)
from fopproxy.outbound.reasons import classify_handshake_error
from fopproxy.policy import PROFILES, select_suites
from tests.support.pki import CA, write_self_signed

GOOGLE = "vgw.googleapis.test"
SIX = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
)


def _policy(profile: str = "card-fop") -> ClientPolicy:
    return ClientPolicy.of(select_suites(PROFILES[profile], ()))


def _client(ca: CA, profile: str = "card-fop") -> ssl.SSLContext:
    return build_client_context(_policy(profile), ca.cert_pem.decode())


def _handshake(client_ctx: ssl.SSLContext, cert: Path, key: Path, name: str = GOOGLE) -> ssl.SSLObject:
    """Run a full handshake in memory; returns the client SSLObject or raises its SSLError."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = server_ctx.wrap_bio(bios[0], bios[1], server_side=True)
    client = client_ctx.wrap_bio(bios[2], bios[3], server_hostname=name)
    for _ in range(6):
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        bios[0].write(bios[3].read())
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
            server.do_handshake()
        bios[2].write(bios[1].read())
    client.do_handshake()
    return client


def test_offers_exactly_the_six_suites_and_tls12_only(ca: CA) -> None:
    ctx = _client(ca)
    # TLS 1.3 suites stay listed by OpenSSL but are never offered with TLS 1.3 off (the wire
    # test in tests/integration/test_outbound.py shows the ClientHello).
    assert [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"] == list(SIX)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname


def test_tls13_profile_adds_only_the_two_tls13_suites(ca: CA) -> None:
    ctx = _client(ca, "card-fop-tls13")
    names = [c["name"] for c in ctx.get_ciphers()]
    assert names == ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256", *SIX]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda ctx: native.set_groups(ctx, ["X25519", "P-256", "P-384", "P-521"]),
        lambda ctx: setattr(ctx, "check_hostname", False),
        lambda ctx: ctx.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384:" + ":".join(SIX)),
        lambda ctx: setattr(ctx, "minimum_version", ssl.TLSVersion.TLSv1_1),
    ],
    ids=["p521-group", "no-hostname-check", "extra-suite", "tls1.1"],
)
def test_self_check_fails_closed(ca: CA, tamper: object) -> None:
    """A context that drifted from the policy is refused, whatever changed it."""
    ctx = _client(ca)
    tamper(ctx)  # type: ignore[operator]
    with pytest.raises(ComplianceError):
        verify_client_context(ctx, _policy())


def test_empty_trust_is_refused() -> None:
    with pytest.raises(ComplianceError):
        build_client_context(_policy(), "")


@pytest.mark.parametrize(
    ("names", "cn", "san", "ok"),
    [
        ([GOOGLE], None, True, True),
        (["*.googleapis.test"], None, True, True),  # one left-most label
        (["*.vgw.googleapis.test"], None, True, False),  # does not cover the parent
        (["*.test"], None, True, False),  # a bare public suffix
        (["v*.googleapis.test"], None, True, False),  # partial-label wildcard
        (["other.googleapis.test"], None, True, False),
        ([], GOOGLE, False, True),  # CN only where there is no SAN (the rule's "CN checking")
        (["other.googleapis.test"], GOOGLE, True, False),  # a SAN hides the CN
    ],
    ids=["exact", "wildcard", "wildcard-parent", "bare-suffix", "partial", "other", "cn-only", "san-wins"],
)
def test_name_rules_rfc6125(ca: CA, tmp_path: Path, names: list[str], cn: str | None, san: bool, ok: bool) -> None:
    """OpenSSL's check and our second opinion agree with the rule `check` applies."""
    pair = ca.write(tmp_path, "leaf", names, cn=cn, san=san)
    if ok:
        client = _handshake(_client(ca), pair.cert, pair.key)
        assert peer_name_problem(client.getpeercert(), GOOGLE) is None  # type: ignore[arg-type]
    else:
        with pytest.raises(ssl.SSLCertVerificationError) as failure:
            _handshake(_client(ca), pair.cert, pair.key)
        assert classify_handshake_error(failure.value, server_answered=True) == "hostname_mismatch"


def test_second_opinion_on_names() -> None:
    peer = {"subjectAltName": (("DNS", "*.googleapis.test"),), "subject": ()}
    assert peer_name_problem(peer, GOOGLE) is None
    assert peer_name_problem(peer, "googleapis.test") is not None
    assert peer_name_problem({"subject": ((("commonName", GOOGLE),),)}, GOOGLE) is None
    assert peer_name_problem(None, GOOGLE) == "the server sent no certificate"


def test_expired_and_untrusted_are_told_apart(ca: CA, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    expired = ca.write(tmp_path, "expired", [GOOGLE], not_before=now - timedelta(days=9),
                       not_after=now - timedelta(days=1))
    with pytest.raises(ssl.SSLCertVerificationError) as failure:
        _handshake(_client(ca), expired.cert, expired.key)
    assert classify_handshake_error(failure.value, server_answered=True) == "expired_certificate"
    own = write_self_signed(tmp_path, "self", [GOOGLE])
    with pytest.raises(ssl.SSLCertVerificationError) as failure:
        _handshake(_client(ca), own.cert, own.key)
    assert classify_handshake_error(failure.value, server_answered=True) == "untrusted_certificate"


def test_pinned_certificate_is_an_anchor(tmp_path: Path) -> None:
    """trust: a file holding just the server's own (self-signed) certificate works."""
    own = write_self_signed(tmp_path, "self", [GOOGLE])
    ctx = build_client_context(_policy(), own.cert_pem.decode())
    assert _handshake(ctx, own.cert, own.key).version() == "TLSv1.2"


def test_offers_exactly_the_three_groups(ca: CA) -> None:
    """X25519, P-256, P-384 (IANA 29, 23, 24), read back from the ClientHello the context writes."""
    for profile in ("card-fop", "card-fop-tls13"):
        assert offered_groups(_client(ca, profile)) == (0x001D, 0x0017, 0x0018)
