"""`fopproxy check`: a static audit of a config and every certificate it names, no port opened.

Everything that would make `fopproxy run` refuse to start (an expired certificate, a key that does
not match...) is reported as a FAIL line here instead of an exception, so one run lists every
problem. The lower-level pieces of `certs.py` are called one by one for that reason, and the
real start-up path (`load_certificate_set`) is then run as a last cross-check.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fopproxy.certs import (
    describe_key,
    load_certificate_set,
    parse_chain,
    parse_private_key,
    public_key_der,
    read_source,
)
from fopproxy.compliance.report import Report
from fopproxy.compliance.rules import Result, certificate_results, describe_certificate
from fopproxy.config import Config, load_config
from fopproxy.errors import CertificateError, ComplianceError
from fopproxy.native import status as native_status
from fopproxy.policy import CARD_FOP_TLS12_SUITES, IANA_NAMES, SuiteSelection, suite_key_type
from fopproxy.sources import CertificateSource
from fopproxy.tls import agreed_groups, build_context, offered_suites


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
    for index, source in enumerate(config.tls.certificates):
        subject = f"tls.certificates[{index}]"
        results, key_type, described = _certificate(subject, source, config.server_name, moment)
        report.add(*results)
        if key_type is not None:
            key_types.append(key_type)
            if key_type not in selection.key_types:
                report.add(
                    Result(
                        "certificates.key_types",
                        subject,
                        "FAIL",
                        f"a {key_type.upper()} key, but no selected suite uses one "
                        f"(selected: {', '.join(selection.tls12)})",
                    )
                )
        if described is not None:
            certificates.append({"role": subject, "cert": str(source.cert), **described})
    report.add(_coverage_result(selection, key_types))
    report.add(_startup_result(config, moment))
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


def _certificate(
    subject: str, source: CertificateSource, server_name: str, now: datetime
) -> tuple[list[Result], str | None, dict[str, object] | None]:
    """Results for one configured chain; (results, key type if readable, description)."""
    try:
        cert_pem, key_pem, password = read_source(source)
    except OSError as exc:
        return (
            [Result("cert.read", subject, "FAIL", f"cannot read {exc.filename}: {exc.strerror}")],
            None,
            None,
        )
    try:
        chain = parse_chain(cert_pem)
    except CertificateError as exc:
        return [Result("cert.read", subject, "FAIL", f"{source.cert}: {exc}")], None, None
    results = [Result("cert.read", subject, "PASS", f"{source.cert}: {len(chain)} certificate(s)")]
    try:
        key = parse_private_key(key_pem, password)
    except CertificateError as exc:
        results.append(Result("cert.key_match", subject, "FAIL", f"{source.key}: {exc}"))
    else:
        if public_key_der(key) == public_key_der(chain[0].public_key()):
            results.append(Result("cert.key_match", subject, "PASS", f"{source.key} matches"))
        else:
            results.append(
                Result(
                    "cert.key_match",
                    subject,
                    "FAIL",
                    f"key {source.key} does not match the certificate (different public keys)",
                )
            )
    results.extend(certificate_results(subject, chain, server_name, now))
    key_ok = any(r.rule == "cert.key" and r.status == "PASS" for r in results)
    key_type = describe_key(chain[0].public_key()).key_type if key_ok else None
    return results, key_type, describe_certificate(chain[0])


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


def _startup_result(config: Config, now: datetime) -> Result:
    """Run the start-up path itself, so `check` can never pass what `run` would refuse."""
    try:
        load_certificate_set(config.tls.certificates, config.server_name, config.tls.selection, now)
    except (CertificateError, ComplianceError) as exc:
        return Result("startup", "config", "FAIL", f"fopproxy run would refuse to start: {exc}")
    return Result("startup", "config", "PASS", "fopproxy run would load this certificate set")
