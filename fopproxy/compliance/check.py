"""`fopproxy check`: a static audit of a config and every certificate it names, no port opened.

Everything that would make `fopproxy run` refuse to start (an expired certificate, a key that does
not match...) is reported as a FAIL line here instead of an exception, so one run lists every
problem. The certificate rows come from the same rule table `run` validates with
(`fopproxy.certrules`), and the `startup` row names the refusal `run` would pick among them; what
is left of start-up (reading the files as `run` does, building the contexts) is run for real.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fopproxy.certrules import judge, refusal_among
from fopproxy.certs import (
    CertificateSet,
    LoadedCertificate,
    certificate_evidence,
    client_trust,
    entry_error,
    load_client_ca,
    loaded_certificate,
    read_snapshot,
    read_source,
)
from fopproxy.clientauth import ClientAuthConfig, ClientCA, ca_to_read
from fopproxy.compliance.report import Report
from fopproxy.compliance.rules import Result, describe_certificate, result_rows
from fopproxy.config import Config, load_config
from fopproxy.errors import (
    CertificateError,
    CertificateReadError,
    ComplianceError,
    FopproxyError,
)
from fopproxy.native import status as native_status
from fopproxy.peerverify import status as peerverify_status
from fopproxy.policy import CARD_FOP_TLS12_SUITES, IANA_NAMES, SuiteSelection, suite_key_type
from fopproxy.sources import CertificateSource
from fopproxy.tls import agreed_groups, build_context, offered_suites
from fopproxy.tlsinfo import status as tlsinfo_status


@dataclass(frozen=True)
class _Judged:
    """One configured entry as `check` saw it: its rows, and what start-up would make of it."""

    results: list[Result]
    key_type: str | None
    described: dict[str, object] | None
    refusal: CertificateError | None
    loaded: LoadedCertificate | None


def check_file(path: str | Path, now: datetime | None = None) -> Report:
    """Load `path` (ConfigError propagates: the CLI turns it into exit 2) and audit it."""
    return check_config(load_config(path), now)


def check_config(config: Config, now: datetime | None = None) -> Report:
    moment = now or datetime.now(UTC)
    if config.tls is None:
        from fopproxy.outbound.audit import outbound_report

        return outbound_report(config, moment)
    selection = config.tls.selection
    report = Report(
        "check",
        {
            "config": str(config.source) if config.source else None,
            "server_name": config.server_name,
            "profile": selection.profile.name,
        },
    )
    report.add(*_policy_results(selection))
    key_types: list[str] = []
    certificates: list[dict[str, object]] = []
    judged: list[_Judged] = []
    for index, source in enumerate(config.tls.certificates):
        subject = f"tls.certificates[{index}]"
        entry = _certificate(subject, source, config, moment)
        judged.append(entry)
        report.add(*entry.results)
        if entry.key_type is not None:
            key_types.append(entry.key_type)
        if entry.described is not None:
            certificates.append({"role": subject, "cert": str(source.cert), **entry.described})
    report.add(_coverage_result(selection, key_types))
    client_rows, client_facts = _client_auth_results(config.tls.client_auth, moment)
    report.add(*client_rows)
    report.add(_startup_result(config, judged))
    if config.tls.session_tickets.key_file is not None:
        report.add(_ticket_key_result(config.tls.session_tickets.key_file))
    native = {**native_status(), **peerverify_status(), **tlsinfo_status()}
    report.add(
        Result("startup", "runtime", "PASS", "; ".join(f"{k}: {v}" for k, v in native.items()))
    )
    if config.outbound:
        from fopproxy.outbound.audit import outbound_results

        report.add(*outbound_results(config, moment))
    report.facts = {
        "tls12_suites": list(selection.tls12),
        "tls13_suites": list(selection.tls13) if _serves_tls13(selection) else [],
        "groups": list(selection.profile.groups),
        "native": native,
        "certificates": certificates,
        "client_auth": client_facts,
    }
    return report


@functools.cache
def _public_roots() -> frozenset[bytes]:
    """SubjectPublicKeyInfo of every Mozilla root (certifi): a CA among them issues to anyone.

    One root at a time: a root cryptography frowns on (a non-positive serial) warns or, in a
    later release, fails alone instead of hiding every other root.
    """
    spki: set[bytes] = set()
    end = b"-----END CERTIFICATE-----"
    for block in certifi.contents().encode("ascii").split(end):
        if b"-----BEGIN CERTIFICATE-----" not in block:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                cert = x509.load_pem_x509_certificate(block + end)
            except ValueError:
                continue
        spki.add(cert.public_key().public_bytes(*_SPKI))
    return frozenset(spki)


def _client_auth_results(
    config: ClientAuthConfig, now: datetime
) -> tuple[list[Result], dict[str, object]]:
    """`tls.client_auth`: the CA file as run reads it, and whether the allow-list narrows it."""
    subject = "tls.client_auth"
    allow = config.allow
    facts: dict[str, object] = {
        "mode": config.mode,
        "ca_names": [],
        "allow": {
            "cn": list(allow.cn), "dns": list(allow.dns), "uri": list(allow.uri),
            "sha256": sorted(pin.hex(":").upper() for pin in allow.sha256),
        },
    }
    if not config.enabled or config.ca is None:
        off = Result("client_auth", subject, "PASS", "off: no client certificate asked for")
        return [off], facts
    try:
        ca: ClientCA = load_client_ca(config.ca)
    except CertificateError as exc:
        return [Result("client_auth", subject, "FAIL", str(exc))], facts
    facts["ca_names"] = list(ca.subjects)
    rows = [
        Result(
            "client_auth",
            subject,
            "PASS",
            f"{config.mode}: {len(ca.subjects)} trust anchor(s) in {config.ca}: "
            + "; ".join(ca.subjects)
            + ("; allow: any certificate that chains to them" if allow.empty else
               f"; allow: {len(allow.cn)} cn, {len(allow.dns)} dns, {len(allow.uri)} uri, "
               f"{len(allow.sha256)} sha256"),
        )
    ]
    anchors = x509.load_pem_x509_certificates(ca.pem.encode("ascii"))
    for index, cert in enumerate(anchors):
        if cert.not_valid_after_utc <= now:
            rows.append(Result(
                "client_auth", f"{subject}.ca[{index}]", "WARN",
                f"{cert.subject.rfc4514_string()} expired on "
                f"{cert.not_valid_after_utc.isoformat()}: certificates it issued are refused",
            ))
    public = _public_roots()
    if allow.empty and any(c.public_key().public_bytes(*_SPKI) in public for c in anchors):
        rows.append(Result(
            "client_auth", subject, "WARN",
            "ca holds a public root (Mozilla store) and allow is empty: anyone with a certificate "
            "from that CA is admitted; name the client in allow (cn, dns, uri or sha256)",
        ))
    return rows, facts


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _serves_tls13(selection: SuiteSelection) -> bool:
    return bool(selection.profile.tls13_suites)


def _policy_results(selection: SuiteSelection) -> list[Result]:
    """What the runtime would really serve for this selection: build the context and ask it."""
    profile = selection.profile
    versions = "TLS 1.2 and TLS 1.3" if _serves_tls13(selection) else "TLS 1.2 only"
    results = [
        Result("protocol.versions", "config", "PASS", f"{versions} (profile {profile.name})")
    ]
    try:
        context = build_context(selection, [])
    except ComplianceError as exc:
        return [
            *results,
            Result("suites.outside", "config", "FAIL", f"runtime cannot serve the profile: {exc}"),
        ]
    tls12, tls13 = offered_suites(context)
    outside = [s for s in tls12 if s not in CARD_FOP_TLS12_SUITES]
    inside = [s for s in tls12 if s in CARD_FOP_TLS12_SUITES]
    results.append(
        Result(
            "suites.required",
            "config",
            "PASS" if inside else "FAIL",
            f"{len(inside)} of the six, server order: {', '.join(inside) or 'none'}",
        )
    )
    results.append(
        Result(
            "suites.outside",
            "config",
            "FAIL" if outside else "PASS",
            f"outside the list: {', '.join(outside)}" if outside else "nothing outside the list",
        )
    )
    non_ecdhe = [s for s in tls12 if not s.startswith("ECDHE-")]
    groups = agreed_groups(context)
    wider = sorted({g for agreed in groups.values() for g in agreed} - set(profile.groups))
    shown = "; ".join(f"{v}: {', '.join(g) or 'none'}" for v, g in groups.items())
    results.append(
        Result(
            "key_exchange",
            "config",
            "FAIL" if non_ecdhe or wider else "PASS",
            f"non-ECDHE suites: {', '.join(non_ecdhe)}"
            if non_ecdhe
            else f"every suite is ECDHE; groups {shown}"
            + (f" (outside X25519, P-256, P-384: {', '.join(wider)})" if wider else ""),
            {"groups": {v: list(g) for v, g in groups.items()}},
        )
    )
    if _serves_tls13(selection):
        extra = [s for s in tls13 if s not in IANA_NAMES]
        results.append(
            Result(
                "suites.tls13",
                "config",
                "FAIL" if extra else "PASS",
                f"TLS 1.3 suites served: {', '.join(tls13)}"
                + (f" (outside our reading: {', '.join(extra)})" if extra else ""),
                {"tls13_suites": tls13},
            )
        )
    else:
        results.append(
            Result("suites.tls13", "config", "PASS", "TLS 1.3 is off (profile card-fop)")
        )
    results.append(
        Result(
            "server_preference",
            "config",
            "PASS",
            "server preference on (OP_CIPHER_SERVER_PREFERENCE), documented order",
        )
    )
    return results


def _certificate(subject: str, source: CertificateSource, config: Config, now: datetime) -> _Judged:
    """The rows for one configured chain, judged by the rule table `run` uses."""
    assert config.tls is not None  # only inbound configs have chains
    assert config.server_name is not None
    try:
        cert_pem, key_pem, password = read_source(source)
    except OSError as exc:
        failed = Result("cert.read", subject, "FAIL", f"cannot read {exc.filename}: {exc.strerror}")
        return _Judged([failed], None, None, None, None)
    try:
        evidence = certificate_evidence(
            source, cert_pem, key_pem, password, config.server_name, config.tls.selection, now
        )
    except CertificateError as exc:
        failed = Result("cert.read", subject, "FAIL", f"{source.cert}: {exc}")
        return _Judged([failed], None, None, exc, None)
    findings = judge(evidence)
    count = len(evidence.chain)
    read = Result("cert.read", subject, "PASS", f"{source.cert}: {count} certificate(s)")
    results = [read, *result_rows(subject, findings)]
    key_ok = any(rule.id == "cert.key" and f.status == "PASS" for rule, f in findings)
    refused = refusal_among(findings)
    loaded = None
    if refused is None:
        loaded = loaded_certificate(source, evidence, cert_pem, key_pem, password)
    return _Judged(
        results,
        evidence.key_info.key_type if key_ok else None,
        describe_certificate(evidence.leaf),
        refused,
        loaded,
    )


def _coverage_result(selection: SuiteSelection, key_types: list[str]) -> Result:
    if not key_types:
        return Result(
            "certificates.key_types", "config", "SKIP", "no usable certificate: see the lines above"
        )
    served = [s for s in selection.tls12 if suite_key_type(s) in key_types]
    idle = [s for s in selection.tls12 if suite_key_type(s) not in key_types]
    detail = f"suites served: {', '.join(served) or 'none'}"
    if idle:
        detail += f"; no certificate for {', '.join(idle)}"
    return Result("certificates.key_types", "config", "PASS" if served else "FAIL", detail)


def _startup_result(config: Config, judged: list[_Judged]) -> Result:
    """What `fopproxy run` would make of this config, so `check` can never pass what it refuses."""
    problem = _startup_refusal(config, judged)
    if problem is not None:
        return Result("startup", "config", "FAIL", f"fopproxy run would refuse to start: {problem}")
    return Result("startup", "config", "PASS", "fopproxy run would load this certificate set")


def _startup_refusal(config: Config, judged: list[_Judged]) -> FopproxyError | None:
    """The error `run` would stop with, or None.

    The certificates' refusal is the one `run` picks among the same rule findings (nothing is
    validated twice); the files are read as `run` reads them, and the contexts are built for
    real, since OpenSSL has the last word on a certificate set.
    """
    assert config.tls is not None  # only inbound configs have chains
    assert config.server_name is not None
    try:
        snapshot = read_snapshot(config.tls.certificates, ca_to_read(config.tls.client_auth))
    except CertificateError as exc:
        return exc
    loaded: list[LoadedCertificate] = []
    for index, entry in enumerate(judged):
        if entry.refusal is not None:
            return entry_error(index, entry.refusal)
        if entry.loaded is None:  # pragma: no cover - readable for `run` a moment after `check`
            return CertificateReadError(f"tls.certificates[{index}]: changed while being read")
        loaded.append(entry.loaded)
    try:
        trust = client_trust(config.tls.client_auth, snapshot.client_ca)
        CertificateSet(
            loaded, config.tls.selection, config.server_name, snapshot.digest, client_trust=trust
        )
    except (CertificateError, ComplianceError) as exc:
        return exc
    return None


def _ticket_key_result(path: Path) -> Result:
    """`run` refuses to start on a session-ticket key file it cannot use: say so here."""
    from fopproxy.tickets import FileKeyRing, TicketKeyError

    subject = "tls.session_tickets.key_file"
    try:
        ring = FileKeyRing(path)
    except (OSError, TicketKeyError) as exc:
        return Result("startup", subject, "FAIL", f"{path}: {exc}")
    return Result(
        "startup", subject, "PASS", f"{path}: {len(ring.keys)} key(s), the first encrypts"
    )
