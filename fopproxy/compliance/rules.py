"""The rule table, and the certificate rules that `check` and `scan` apply the same way.

Each rule names the line of the Card FOP transport page it comes from (`card_rule`: "1" to "4")
or "fop" where it is fopproxy's documented reading of that page (ECDHE only, key types, TLS 1.3).
A certificate is judged from its chain alone, so a file on disk (`check`) and a chain a server
sent (`scan`) get exactly the same verdicts.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import certifi
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509 import DNSName, verification

from fopproxy.certs import (
    MIN_RSA_BITS,
    certificate_names,
    chain_order_problem,
    covers,
    describe_key,
    fingerprint_sha256,
    signature_hash_name,
    weak_signature_problem,
)

Status = Literal["PASS", "WARN", "FAIL", "SKIP"]

# Days of validity left below which a certificate is reported as a warning (rotate it soon).
EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class Rule:
    """One line of the rule table: where it comes from and what it asks."""

    card_rule: str
    title: str


RULES: dict[str, Rule] = {
    "protocol.versions": Rule("1", "TLS 1.2 or higher only (no SSLv2/3, TLS 1.0/1.1)"),
    "suites.required": Rule("4", "supports at least one of the six listed suites"),
    "suites.outside": Rule("4", "supports no TLS 1.2 suite outside the six"),
    "suites.tls13": Rule("fop", "TLS 1.3 only with the same algorithms (AES128-GCM, CHACHA20)"),
    "key_exchange": Rule("fop", "key exchange is ECDHE only"),
    "server_preference": Rule("fop", "server picks the suite, in the documented order"),
    "certificates.key_types": Rule("fop", "each certificate has a selected suite that uses it"),
    "startup": Rule("fop", "fopproxy run accepts this configuration"),
    "cert.read": Rule("3", "certificate chain and key can be read"),
    "cert.key_match": Rule("3", "private key matches the certificate"),
    "cert.key": Rule("fop", "key is ECDSA P-256/P-384 or RSA >= 2048 bits"),
    "cert.signature": Rule("3", "no SHA-1 (or MD5) signature in the chain"),
    "cert.validity": Rule("3", "inside its validity window (warn under 30 days left)"),
    "cert.names": Rule("2", "SAN (or CN without SAN) covers the hostname, RFC 6125 wildcards"),
    "cert.chain": Rule("3", "chain is leaf first, each signed by the next, and complete"),
    "cert.trust": Rule("3", "chains to the Mozilla root store, or self-signed given to Google"),
    "hostname_verification": Rule("2", "a verifying client accepts the chain for the hostname"),
    "outbound.connect": Rule("2", "outbound: connect is host:port, the name to check is known"),
    "outbound.trust": Rule("3", "outbound: trust (Mozilla roots or a PEM file) is readable"),
    "outbound.client_certificate": Rule("fop", "outbound: the client certificate is valid"),
    "outbound.client_policy": Rule(
        "1", "outbound: TLS >= 1.2, only the listed suites, chain and hostname always verified"
    ),
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


@functools.cache
def mozilla_roots() -> tuple[x509.Certificate, ...]:
    """The Mozilla CA program's roots, as shipped by `certifi`."""
    with warnings.catch_warnings():
        # A few old roots carry non-positive serials; cryptography warns but parses them.
        warnings.simplefilter("ignore")
        with open(certifi.where(), "rb") as bundle:  # noqa: PTH123 - certifi hands out a str path
            return tuple(x509.load_pem_x509_certificates(bundle.read()))


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _key_result(subject: str, leaf: x509.Certificate) -> Result:
    info = describe_key(leaf.public_key())
    if info.key_type is None:
        return Result("cert.key", subject, "FAIL", f"{info.description}")
    if info.key_type == "rsa" and info.bits < MIN_RSA_BITS:
        return Result(
            "cert.key",
            subject,
            "FAIL",
            f"RSA key has {info.bits} bits, at least {MIN_RSA_BITS} needed",
        )
    return Result("cert.key", subject, "PASS", info.description, {"key": info.description})


def _signature_result(subject: str, chain: Sequence[x509.Certificate]) -> Result:
    problem = weak_signature_problem(chain)
    if problem is not None:
        return Result("cert.signature", subject, "FAIL", problem)
    # A root's signature on itself is never checked by clients, so only the others count.
    checked = [c for c in chain if c.issuer != c.subject] or list(chain[:1])
    used = sorted({signature_hash_name(c).upper() for c in checked})
    return Result("cert.signature", subject, "PASS", f"signed with {', '.join(used)}")


def _validity_result(subject: str, leaf: x509.Certificate, now: datetime) -> Result:
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    facts: dict[str, object] = {"not_before": start.isoformat(), "not_after": end.isoformat()}
    if now < start:
        return Result(
            "cert.validity", subject, "FAIL", f"not valid before {start:%Y-%m-%d %H:%M}Z", facts
        )
    if now >= end:
        return Result("cert.validity", subject, "FAIL", f"expired on {end:%Y-%m-%d %H:%M}Z", facts)
    days = (end - now) // timedelta(days=1)
    facts["days_left"] = days
    text = f"valid until {end:%Y-%m-%d}, {days} days left"
    if days < EXPIRY_WARNING_DAYS:
        return Result(
            "cert.validity",
            subject,
            "WARN",
            text + f" (under {EXPIRY_WARNING_DAYS}: rotate)",
            facts,
        )
    return Result("cert.validity", subject, "PASS", text, facts)


def _names_result(subject: str, leaf: x509.Certificate, server_name: str | None) -> Result:
    names = certificate_names(leaf)
    listed = ", ".join(names) or "none"
    if server_name is None:
        return Result(
            "cert.names", subject, "SKIP", f"no hostname given to check (names: {listed})"
        )
    if covers(names, server_name):
        return Result("cert.names", subject, "PASS", f"{server_name} covered by {listed}")
    return Result(
        "cert.names",
        subject,
        "FAIL",
        f"{server_name} not covered by {listed} (a wildcard matches exactly one left-most label)",
    )


def _verifier_name(leaf: x509.Certificate, server_name: str | None) -> str | None:
    """A DNS name the leaf covers, so that trust is judged apart from name coverage."""
    names = certificate_names(leaf)
    if server_name and covers(names, server_name):
        return server_name
    for name in names:
        candidate = name.replace("*", "x", 1)
        if covers(names, candidate):
            return candidate
    return None


def _mozilla_verify(
    chain: Sequence[x509.Certificate], server_name: str | None, now: datetime
) -> tuple[x509.Certificate | None, str]:
    """(the Mozilla root the chain verifies to, or None; why not)."""
    leaf = chain[0]
    name = _verifier_name(leaf, server_name)
    if name is None:
        return None, "no DNS name to verify against"
    # Judge trust inside the validity window: expiry has its own rule and its own FAIL.
    moment = min(
        max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc - timedelta(seconds=1)
    )
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(mozilla_roots())))
            .time(moment)
            .build_server_verifier(DNSName(name))
        )
        verified = verifier.verify(leaf, list(chain[1:]))
    except (verification.VerificationError, ValueError) as exc:
        return None, str(exc)
    return verified[-1], ""


def _trust_results(
    subject: str, chain: Sequence[x509.Certificate], server_name: str | None, now: datetime
) -> list[Result]:
    leaf, top = chain[0], chain[-1]
    root, why = _mozilla_verify(chain, server_name, now)
    if root is not None:
        return [
            Result("cert.chain", subject, "PASS", f"complete: verifies to {_subject(root)}"),
            Result(
                "cert.trust",
                subject,
                "PASS",
                f"chains to Mozilla root {_subject(root)}",
                {"root": _subject(root)},
            ),
        ]
    mozilla_subjects = {r.subject for r in mozilla_roots()}
    if len(chain) == 1 and is_self_signed(leaf):
        fingerprint = fingerprint_sha256(leaf)
        return [
            Result("cert.chain", subject, "PASS", "a single self-signed certificate"),
            Result(
                "cert.trust",
                subject,
                "WARN",
                f"self-signed: give Google this SHA-256 fingerprint to trust: {fingerprint}",
                {"self_signed": True, "fingerprint_sha256": fingerprint},
            ),
        ]
    if is_self_signed(top):
        if top.subject in mozilla_subjects:
            return [
                Result("cert.chain", subject, "PASS", f"complete up to {_subject(top)}"),
                Result(
                    "cert.trust",
                    subject,
                    "FAIL",
                    f"names Mozilla root {_subject(top)} but does not verify: {why}",
                ),
            ]
        fingerprint = fingerprint_sha256(top)
        return [
            Result("cert.chain", subject, "PASS", f"complete up to its root {_subject(top)}"),
            Result(
                "cert.trust",
                subject,
                "WARN",
                f"private CA {_subject(top)} is not in the Mozilla store: give Google its "
                f"SHA-256 fingerprint to trust: {fingerprint}",
                {"self_signed": False, "fingerprint_sha256": fingerprint},
            ),
        ]
    issuer = top.issuer.rfc4514_string()
    if top.issuer in mozilla_subjects:
        return [
            Result("cert.chain", subject, "PASS", f"complete up to Mozilla root {issuer}"),
            Result(
                "cert.trust",
                subject,
                "FAIL",
                f"issued under Mozilla root {issuer} but does not verify: {why}",
            ),
        ]
    return [
        Result(
            "cert.chain",
            subject,
            "WARN",
            f"ends at {_subject(top)}, whose issuer {issuer} is neither in the chain nor a "
            "Mozilla root: if it is an intermediate, add it after the leaf",
        ),
        Result(
            "cert.trust",
            subject,
            "WARN",
            f"does not chain to the Mozilla store ({why}); Google must be given the "
            f"issuing CA {issuer} to trust",
        ),
    ]


def certificate_results(
    subject: str,
    chain: Sequence[x509.Certificate],
    server_name: str | None,
    now: datetime | None = None,
) -> list[Result]:
    """Every certificate rule for one chain (leaf first), in table order."""
    moment = now or datetime.now(UTC)
    leaf = chain[0]
    results = [
        _key_result(subject, leaf),
        _signature_result(subject, chain),
        _validity_result(subject, leaf, moment),
        _names_result(subject, leaf, server_name),
    ]
    if weak_signature_problem(chain) is not None:
        # cryptography cannot verify SHA-1/MD5 signatures, so the chain cannot be walked.
        results.append(Result("cert.chain", subject, "SKIP", "weak signature: see cert.signature"))
        results.append(Result("cert.trust", subject, "SKIP", "weak signature: see cert.signature"))
        return results
    problem = chain_order_problem(chain)
    if problem is not None:
        results.append(Result("cert.chain", subject, "FAIL", problem))
        results.append(Result("cert.trust", subject, "SKIP", "chain order must be fixed first"))
    else:
        results.extend(_trust_results(subject, chain, server_name, moment))
    return results


def describe_certificate(cert: x509.Certificate) -> dict[str, object]:
    """What `cert show` prints and what reports record about a served certificate."""
    return {
        "subject": _subject(cert),
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
