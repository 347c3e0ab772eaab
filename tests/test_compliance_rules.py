"""The certificate rules and the report, on chains built here (no network, no files)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fopproxy import certrules
from fopproxy.compliance.report import Report
from fopproxy.compliance.rules import RULES, Result, certificate_results
from fopproxy.selfsigned import self_signed
from tests.support.pki import CA

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "compliance-report.schema.json").read_text())


def by_rule(results: list[Result]) -> dict[str, Result]:
    return {r.rule: r for r in results}


def webpki_leaf(ca: CA, name: str) -> x509.Certificate:
    """A leaf shaped the way public CAs issue them (AKI, SKI, EKU serverAuth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def test_chain_to_a_store_root_passes_trust(ca: CA, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the CA in the root store, a well-formed chain is PASS and names the root."""
    monkeypatch.setattr(certrules, "mozilla_roots", lambda: (ca.cert,))
    results = by_rule(certificate_results("leaf", [webpki_leaf(ca, "api.example.test"), ca.cert], "api.example.test"))
    assert results["cert.trust"].status == "PASS"
    assert results["cert.trust"].facts == {"root": "CN=fopproxy test CA"}
    assert results["cert.chain"].status == "PASS"


def test_store_root_that_does_not_verify_is_a_failure_not_a_pass(ca: CA, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain naming a store root that the verifier rejects (leaf lacks AKI) fails with the reason."""
    monkeypatch.setattr(certrules, "mozilla_roots", lambda: (ca.cert,))
    leaf, _key = ca.issue(["api.example.test"], authority_key_id=False)
    results = by_rule(certificate_results("leaf", [leaf, ca.cert], "api.example.test"))
    assert results["cert.trust"].status == "FAIL"
    assert "2.5.29.35" in results["cert.trust"].detail  # authorityKeyIdentifier


def test_self_signed_is_a_warning_with_its_fingerprint() -> None:
    """A self-signed certificate: trust WARN carrying the SHA-256 fingerprint for Google."""
    cert = self_signed(["api.example.test"]).certificate
    results = by_rule(certificate_results("leaf", [cert], "api.example.test"))
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert results["cert.trust"].status == "WARN"
    assert fingerprint in results["cert.trust"].detail
    assert results["cert.chain"].status == "PASS"


def test_not_yet_valid_fails(ca: CA) -> None:
    """A certificate that starts tomorrow fails validity."""
    start = datetime.now(UTC) + timedelta(days=1)
    leaf, _key = ca.issue(["api.example.test"], not_before=start, not_after=start + timedelta(days=90))
    assert by_rule(certificate_results("leaf", [leaf, ca.cert], "api.example.test"))["cert.validity"].status == "FAIL"


@pytest.mark.parametrize(
    ("pattern", "host", "status"),
    [
        ("*.pay.example.com", "api.pay.example.com", "PASS"),
        ("*.pay.example.com", "pay.example.com", "FAIL"),
        ("*.pay.example.com", "a.b.pay.example.com", "FAIL"),
        ("f*.example.com", "foo.example.com", "FAIL"),
        ("API.Example.com", "api.example.com", "PASS"),
    ],
)
def test_names_follow_rfc6125(ca: CA, pattern: str, host: str, status: str) -> None:
    """Wildcards match exactly one whole left-most label; names compare case-insensitively."""
    leaf, _key = ca.issue([pattern])
    assert by_rule(certificate_results("leaf", [leaf, ca.cert], host))["cert.names"].status == status


# The public rule table as docs/COMPLIANCE.md lists it: id -> Card FOP line (or "fop").
CARD_RULES = {
    "protocol.versions": "1",
    "suites.required": "4",
    "suites.outside": "4",
    "suites.tls13": "fop",
    "key_exchange": "fop",
    "server_preference": "fop",
    "resumption": "fop",
    "early_data": "fop",
    "certificates.key_types": "fop",
    "startup": "fop",
    "cert.read": "3",
    "cert.key_match": "3",
    "cert.key": "fop",
    "cert.signature": "3",
    "cert.validity": "3",
    "cert.names": "2",
    "cert.chain": "3",
    "cert.trust": "3",
    "hostname_verification": "2",
    "outbound.connect": "2",
    "outbound.trust": "3",
    "outbound.client_policy": "1",
    "client_auth": "fop",
}


def test_every_result_rule_is_in_the_table_and_schema() -> None:
    """The rule table and the schema's rule enum list the same rules, from the same Card FOP lines."""
    assert set(SCHEMA["$defs"]["result"]["properties"]["rule"]["enum"]) == set(CARD_RULES)
    assert {rule_id: rule.card_rule for rule_id, rule in RULES.items()} == CARD_RULES


def test_certificate_rules_refuse_in_the_order_run_always_used() -> None:
    """Every "error" rule can refuse start-up, in this order; trust is only ever reported."""
    assert [r.id for r in certrules.REFUSAL_ORDER] == [
        "cert.key_match",
        "cert.key",
        "certificates.key_types",
        "cert.validity",
        "cert.names",
        "cert.signature",
        "cert.chain",
    ]
    severities = {r.id: r.severity for r in certrules.CERTIFICATE_RULES}
    assert {i for i, s in severities.items() if s == "error"} == {r.id for r in certrules.REFUSAL_ORDER}
    assert {i for i, s in severities.items() if s == "advisory"} == {"cert.trust"}
    assert all(RULES[r.id] is r for r in certrules.CERTIFICATE_RULES)


def test_scan_rows_for_a_good_chain(ca: CA) -> None:
    """A chain alone (what scan sees): no key_match or key_types row, the others in table order."""
    leaf, _key = ca.issue(["api.example.test"])
    results = certificate_results("served", [leaf, ca.cert], "api.example.test")
    assert [(r.rule, r.status) for r in results] == [
        ("cert.key", "PASS"),
        ("cert.signature", "PASS"),
        ("cert.validity", "PASS"),
        ("cert.names", "PASS"),
        ("cert.chain", "PASS"),
        ("cert.trust", "WARN"),
    ]
    assert results[0].detail == "ECDSA secp256r1"
    assert results[1].detail == "signed with SHA256"
    assert results[4].detail == "complete up to its root CN=fopproxy test CA"
    assert certificate_results("served", [leaf, ca.cert], None)[3].status == "SKIP"


def test_report_json_validates_and_exit_code_follows_failures(ca: CA) -> None:
    """A report with a FAIL exits 1, without exits 0 (warnings and skips allowed)."""
    leaf, _key = ca.issue(["api.example.test"])
    report = Report("check", {"config": "x.yaml", "server_name": "api.example.test", "profile": "card-fop"})
    report.add(*certificate_results("tls.certificates[0]", [leaf, ca.cert], "api.example.test"))
    report.add(Result("protocol.versions", "SSLv3", "SKIP", "cannot test"))
    assert report.exit_code == 0
    jsonschema.validate(report.to_json(), SCHEMA)
    report.add(Result("suites.outside", "config", "FAIL", "AES256-SHA"))
    assert report.exit_code == 1
    document = json.loads(report.render_json())
    jsonschema.validate(document, SCHEMA)
    assert document["summary"]["verdict"] == "FAIL"
    assert "FAIL: " in report.render_text()
