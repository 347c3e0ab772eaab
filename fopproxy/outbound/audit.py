"""`fopproxy check` for outbound entries: each one's trust, client certificate and client policy.

The verdicts come from the start-up path itself (`build_outbound_tls`), so `check` cannot pass an
entry that `run` would refuse; the finer lines say which part is wrong.
"""

from __future__ import annotations

from datetime import datetime

from fopproxy.certrules import judge
from fopproxy.compliance.report import Report
from fopproxy.compliance.rules import Result, result_rows
from fopproxy.config import Config, OutboundConfig
from fopproxy.errors import CertificateError, ComplianceError
from fopproxy.outbound.context import ClientPolicy
from fopproxy.outbound.material import (
    build_outbound_tls,
    client_evidence,
    read_files,
    validate_trust,
)
from fopproxy.tls import offered_suites


def outbound_report(config: Config, now: datetime) -> Report:
    """The whole report of an outbound-only config."""
    report = Report(
        "check",
        {
            "config": str(config.source) if config.source else None,
            "outbound": ", ".join(e.name for e in config.outbound),
        },
    )
    report.add(*outbound_results(config, now))
    report.facts = {"outbound": [_facts(e) for e in config.outbound]}
    return report


def _facts(entry: OutboundConfig) -> dict[str, object]:
    policy = ClientPolicy.of(entry.selection)
    return {
        "name": entry.name,
        "listen": str(entry.listen),
        "connect": str(entry.connect),
        "server_name": entry.server_name,
        "trust": entry.trust_label,
        "tls12_suites": list(policy.tls12),
        "tls13_suites": list(policy.tls13),
    }


def outbound_results(config: Config, now: datetime) -> list[Result]:
    results: list[Result] = []
    for entry in config.outbound:
        results.extend(entry_results(entry, now))
    return results


def entry_results(entry: OutboundConfig, now: datetime) -> list[Result]:
    """One entry's rows: connect, trust, the client certificate's (as a served one's), client
    policy, start-up."""
    subject = entry.key
    results = [
        Result(
            "outbound.connect",
            subject,
            "PASS",
            f"{entry.listen} -> {entry.connect}; the certificate must name {entry.server_name}",
        )
    ]
    try:
        files = read_files(entry)
    except CertificateError as exc:
        return [*results, Result("outbound.trust", subject, "FAIL", str(exc))]
    try:
        anchors = validate_trust(entry, files.trust_pem)
    except CertificateError as exc:
        results.append(Result("outbound.trust", subject, "FAIL", str(exc)))
    else:
        expired = [c for c in anchors if c.not_valid_after_utc <= now]
        detail = f"{entry.trust_label}: {len(anchors)} trusted certificate(s)"
        if expired:
            detail += f", {len(expired)} expired (update the file)"
        results.append(
            Result("outbound.trust", subject, "WARN" if expired else "PASS", detail)
        )
    if entry.client_certificate is not None:
        # The served certificates' rows, from the same rule table (no server name to cover).
        where = f"{subject}.client_certificate"
        try:
            evidence = client_evidence(entry, files, now, search_roots=True)
        except CertificateError as exc:
            results.append(Result("cert.read", where, "FAIL", str(exc)))
        else:
            count = len(evidence.chain)
            results.append(Result("cert.read", where, "PASS", f"{evidence.cert_file}: {count} "
                                  "certificate(s)"))
            results.extend(result_rows(where, judge(evidence)))
    try:
        built = build_outbound_tls(entry, files, now)
    except (CertificateError, ComplianceError) as exc:
        results.append(
            Result("startup", subject, "FAIL", f"fopproxy run would refuse to start: {exc}")
        )
        return results
    tls12, tls13 = offered_suites(built.context)
    offered = ", ".join(tls12 + (tls13 if ClientPolicy.of(entry.selection).tls13 else []))
    results.append(
        Result(
            "outbound.client_policy",
            subject,
            "PASS",
            f"offers {built.context.minimum_version.name}..{built.context.maximum_version.name} "
            f"with {offered}; verifies the chain and the hostname",
        )
    )
    results.append(
        Result("startup", subject, "PASS", "fopproxy run would build this client context")
    )
    return results
