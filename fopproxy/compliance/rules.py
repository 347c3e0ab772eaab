"""The rule table of `check` and `scan`, and the report rows the certificate rules give.

Each rule names the line of the Card FOP transport page it comes from (`card_rule`: "1" to "4")
or "fop" where it is fopproxy's documented reading of that page (ECDHE only, key types, TLS 1.3).
The certificate rules are not written here: they are `fopproxy.certrules`' table, the one that
`fopproxy run` validates with, so the report and the start-up path cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509

from fopproxy.certrules import (
    CERTIFICATE_RULE,
    CertificateRule,
    Evidence,
    Finding,
    Status,
    certificate_names,
    describe_key,
    fingerprint_sha256,
    is_self_signed,
    judge,
    signature_hash_name,
    subject_name,
)

__all__ = ["RULES", "Result", "Status", "certificate_results", "describe_certificate"]


@dataclass(frozen=True)
class Rule:
    """One line of the rule table that is not a certificate rule: where it comes from, what it
    asks. Its verdicts are worked out by `check` or `scan` themselves."""

    card_rule: str
    title: str


RULES: dict[str, Rule | CertificateRule] = {
    "protocol.versions": Rule("1", "TLS 1.2 or higher only (no SSLv2/3, TLS 1.0/1.1)"),
    "suites.required": Rule("4", "supports at least one of the six listed suites"),
    "suites.outside": Rule("4", "supports no TLS 1.2 suite outside the six"),
    "suites.tls13": Rule("fop", "TLS 1.3 only with the same algorithms (AES128-GCM, CHACHA20)"),
    "key_exchange": Rule("fop", "key exchange is ECDHE only"),
    "server_preference": Rule("fop", "server picks the suite, in the documented order"),
    "resumption": Rule("fop", "returning clients resume (session ID, ticket or TLS 1.3 PSK)"),
    "early_data": Rule("fop", "no 0-RTT early data: TLS 1.3 tickets allow none (replay)"),
    "certificates.key_types": CERTIFICATE_RULE["certificates.key_types"],
    "startup": Rule("fop", "fopproxy run accepts this configuration"),
    # Not a rule function: parsing the file is what gives the rules a chain to judge.
    "cert.read": Rule("3", "certificate chain and key can be read"),
    "cert.key_match": CERTIFICATE_RULE["cert.key_match"],
    "cert.key": CERTIFICATE_RULE["cert.key"],
    "cert.signature": CERTIFICATE_RULE["cert.signature"],
    "cert.validity": CERTIFICATE_RULE["cert.validity"],
    "cert.names": CERTIFICATE_RULE["cert.names"],
    "cert.chain": CERTIFICATE_RULE["cert.chain"],
    "cert.trust": CERTIFICATE_RULE["cert.trust"],
    "hostname_verification": Rule("2", "a verifying client accepts the chain for the hostname"),
    "outbound.connect": Rule("2", "outbound: connect is host:port, the name to check is known"),
    "outbound.trust": Rule("3", "outbound: trust (Mozilla roots or a PEM file) is readable"),
    "outbound.client_policy": Rule(
        "1", "outbound: TLS >= 1.2, only the listed suites, chain and hostname always verified"
    ),
    "client_auth": Rule("fop", "client certificates (mutual TLS) as configured"),
}


@dataclass(frozen=True)
class Result:
    """The verdict of one rule on one subject (the config, a certificate, a protocol...)."""

    rule: str
    subject: str
    status: Status
    detail: str
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def card_rule(self) -> str:
        return RULES[self.rule].card_rule

    @property
    def title(self) -> str:
        return RULES[self.rule].title


def result_rows(
    subject: str, findings: Sequence[tuple[CertificateRule, Finding]]
) -> list[Result]:
    """The report rows of judged certificate rules, in table order."""
    return [
        Result(rule.id, subject, finding.status, finding.detail, finding.facts)
        for rule, finding in findings
    ]


def certificate_results(
    subject: str,
    chain: Sequence[x509.Certificate],
    server_name: str | None,
    now: datetime | None = None,
) -> list[Result]:
    """Every certificate rule for a chain alone (leaf first, no key): what `scan` reports."""
    evidence = Evidence(chain=chain, server_name=server_name, now=now or datetime.now(UTC))
    return result_rows(subject, judge(evidence))


def describe_certificate(cert: x509.Certificate) -> dict[str, object]:
    """What `cert show` prints and what reports record about a served certificate."""
    return {
        "subject": subject_name(cert),
        "names": list(certificate_names(cert)),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": describe_key(cert.public_key()).description,
        "signature_hash": signature_hash_name(cert).upper(),
        "self_signed": is_self_signed(cert),
        "serial": format(cert.serial_number, "x"),
        "fingerprint_sha256": fingerprint_sha256(cert),
    }
