"""`fopproxy check`: a static audit of a config and every certificate it names, no port opened.

Everything that would make `fopproxy run` refuse to start (an expired certificate, a key that does
not match...) is reported as a FAIL line here instead of an exception, so one run lists every
problem. The certificate rows come from the same rule table `run` validates with
(`fopproxy.certrules`), and the `startup` row names the refusal `run` would pick among them; what
is left of start-up (reading the files as `run` does, building the contexts) is run for real.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fopproxy.certrules import judge, refusal_among
from fopproxy.certs import (
    CertificateSet,
    LoadedCertificate,
    certificate_evidence,
    entry_error,
    loaded_certificate,
    read_snapshot,
    read_source,
)
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
from fopproxy.policy import CARD_FOP_TLS12_SUITES, IANA_NAMES, SuiteSelection, suite_key_type
from fopproxy.sources import CertificateSource
from fopproxy.tls import agreed_groups, build_context, offered_suites


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
    report.add(_startup_result(config, judged))
    native = native_status()
    report.add(
        Result("startup", "runtime", "PASS", "; ".join(f"{k}: {v}" for k, v in native.items()))
    )
    report.facts = {
        "tls12_suites": list(selection.tls12),
        "tls13_suites": list(selection.tls13) if _serves_tls13(selection) else [],
        "groups": list(selection.profile.groups),
        "native": native,
        "certificates": certificates,
    }
    return report


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
    try:
        snapshot = read_snapshot(config.tls.certificates)
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
        CertificateSet(loaded, config.tls.selection, config.server_name, snapshot.digest)
    except (CertificateError, ComplianceError) as exc:
        return exc
    return None
