"""`fopproxy scan`: a live, client-side scan of any TLS endpoint, judged by the same rule table.

Every probe is one short handshake that offers exactly one thing (a protocol version, a suite),
so "accepted" means the server agreed to it, not that it merely tolerated it among others. The
probes ask only "would you accept this?", so they do not verify the certificate; the separate
`hostname_verification` handshake does, against the Mozilla roots (plus `--cafile`), the way
Google's client will. What the local OpenSSL cannot offer (SSLv2, SSLv3 on most builds) is
reported as not tested, never as refused.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import certifi
from cryptography import x509

from fopproxy.compliance.certrequest import ClientAuthProbe, probe_client_auth
from fopproxy.compliance.report import Report
from fopproxy.compliance.resumption import Resumption
from fopproxy.compliance.resumption import probe as resumption_probe
from fopproxy.compliance.rules import Result, Status, certificate_results, describe_certificate
from fopproxy.errors import ComplianceError, FopproxyError
from fopproxy.native import session_max_early_data, set_groups, set_tls13_suites, unverified_chain
from fopproxy.policy import CARD_FOP_GROUPS, CARD_FOP_TLS12_SUITES, CARD_FOP_TLS13_SUITES

# `@SECLEVEL=0`: at OpenSSL 3's default level a client cannot even offer TLS 1.0/1.1 or SHA-1
# suites, and a scanner that cannot offer something cannot tell whether the server accepts it.
EVERYTHING = "ALL:COMPLEMENTOFALL:@SECLEVEL=0"
# The TLS 1.3 suites OpenSSL 3 knows; the last two are off by default but can be offered.
TLS13_SUITES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
)
# Suites that need a pre-shared key or SRP verifier cannot complete without one: never offered.
SKIPPED_KEY_EXCHANGES = frozenset({"kx-psk", "kx-dhe-psk", "kx-ecdhe-psk", "kx-rsa-psk", "kx-srp"})
# Well-known weak suites a partner's old server may still take; where the local OpenSSL cannot
# offer them (Debian builds without 3DES/RC4), the report says so rather than calling them refused.
NOTABLE_LEGACY_SUITES = ("DES-CBC3-SHA", "ECDHE-RSA-DES-CBC3-SHA", "RC4-SHA", "RC4-MD5")
# OpenSSL errors raised before anything is sent: the local side could not make the offer.
LOCAL_REASONS = frozenset({"NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE", "NO_CIPHER_MATCH"})
X509_V_ERR_HOSTNAME_MISMATCH = 62
MAX_PARALLEL = 8
MAX_ORDER_PROBES = 40

Version = Literal["SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
VERSIONS: tuple[tuple[Version, ssl.TLSVersion | None], ...] = (
    ("SSLv2", None),
    ("SSLv3", ssl.TLSVersion.SSLv3),
    ("TLSv1", ssl.TLSVersion.TLSv1),
    ("TLSv1.1", ssl.TLSVersion.TLSv1_1),
    ("TLSv1.2", ssl.TLSVersion.TLSv1_2),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_3),
)
LEGACY: frozenset[str] = frozenset({"SSLv2", "SSLv3", "TLSv1", "TLSv1.1"})
# Groups offered one at a time per version: the allowed three, and those a server is likely to
# agree beyond them (OpenSSL's defaults P-521 and X448, finite-field DH under TLS 1.3, and the
# curves some stacks still enable for TLS 1.2). One the local OpenSSL lacks is reported untested.
GROUP_PROBES: dict[Version, tuple[str, ...]] = {
    "TLSv1.2": ("X25519", "P-256", "P-384", "P-521", "X448", "brainpoolP256r1",
                "brainpoolP384r1", "brainpoolP512r1", "secp256k1"),
    "TLSv1.3": ("X25519", "P-256", "P-384", "P-521", "X448", "ffdhe2048", "ffdhe3072",
                "ffdhe4096", "ffdhe6144", "ffdhe8192"),
}  # fmt: skip


class ScanError(FopproxyError):
    """The target cannot be scanned at all (bad address, nothing listening)."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    server_name: str | None = None
    cafile: Path | None = None
    timeout: float = 5.0

    @property
    def sni(self) -> str | None:
        """The name to send and verify: --servername, else the host unless it is an IP."""
        if self.server_name:
            return self.server_name
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return self.host
        return None


def parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ScanError(f"{text!r} is not HOST:PORT (IPv6 as [::1]:443)")
    return host, int(port)


@dataclass(frozen=True)
class Probe:
    """The outcome of one handshake."""

    state: Literal["accepted", "refused", "untested"]
    detail: str = ""
    version: str | None = None
    cipher: str | None = None
    chain: tuple[bytes, ...] = field(default=(), repr=False)
    verify_code: int | None = None
    transient: bool = False


def _client(
    low: ssl.TLSVersion,
    high: ssl.TLSVersion,
    ciphers: str = EVERYTHING,
    tls13: Sequence[str] | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = low
    ctx.maximum_version = high
    ctx.set_ciphers(ciphers)
    if tls13 is not None:
        set_tls13_suites(ctx, tls13)
    return ctx


def handshake(target: Target, ctx: ssl.SSLContext) -> Probe:
    """One TLS handshake, tried once more when it failed for want of a connection or an answer.

    A busy server (or a busy scanning machine) can time out or refuse a connection for reasons
    that have nothing to do with what was offered; an alert, a reset or a close after the
    ClientHello is the server's answer and is never retried.
    """
    probe = _handshake_once(target, ctx)
    if probe.transient:
        probe = _handshake_once(target, ctx)
    return probe


def _handshake_once(target: Target, ctx: ssl.SSLContext) -> Probe:
    try:
        raw = socket.create_connection((target.host, target.port), timeout=target.timeout)
    except OSError as exc:
        return Probe("refused", f"connect: {exc.strerror or exc}", transient=True)
    try:
        with ctx.wrap_socket(raw, server_hostname=target.sni) as tls:
            cipher = tls.cipher()
            return Probe(
                "accepted",
                version=tls.version(),
                cipher=cipher[0] if cipher else None,
                chain=unverified_chain(tls),
            )
    except OSError as exc:  # ssl.SSLError is an OSError too
        return _failure(exc, target.timeout)
    finally:
        raw.close()


def _failure(exc: OSError, timeout: float) -> Probe:
    """What a failed handshake says: the server refused, or the local side could not offer."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Probe("refused", exc.verify_message or str(exc), verify_code=exc.verify_code)
    if isinstance(exc, ssl.SSLError):
        if exc.reason in LOCAL_REASONS:
            return Probe("untested", f"local OpenSSL cannot offer it ({exc.reason})")
        return Probe("refused", exc.reason or str(exc))
    if isinstance(exc, TimeoutError):
        return Probe("refused", f"no answer within {timeout:g} s", transient=True)
    return Probe("refused", str(exc) or type(exc).__name__)


def _version_probe(target: Target, name: Version, version: ssl.TLSVersion | None) -> Probe:
    if version is None:
        return Probe("untested", "OpenSSL 3 has no SSLv2 client")
    if version is ssl.TLSVersion.SSLv3 and not ssl.HAS_SSLv3:
        return Probe("untested", "the local OpenSSL is built without SSLv3")
    try:
        ctx = _client(version, version)
    except (ValueError, ssl.SSLError) as exc:
        return Probe("untested", f"the local OpenSSL cannot offer {name} ({exc})")
    probe = handshake(target, ctx)
    if probe.state == "accepted" and probe.version != name:
        return Probe("refused", f"answered with {probe.version}")
    return probe


def tls12_candidates() -> list[Any]:
    """Every TLS 1.2-capable suite this OpenSSL can offer without a PSK/SRP secret."""
    ctx = _client(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    return [
        c
        for c in ctx.get_ciphers()
        if c["protocol"] != "TLSv1.3" and c["kea"] not in SKIPPED_KEY_EXCHANGES
    ]


def _suite_probe(target: Target, suite: str) -> Probe:
    ctx = _client(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, f"{suite}:@SECLEVEL=0")
    probe = handshake(target, ctx)
    if probe.state == "accepted" and probe.cipher != suite:
        return Probe("refused", f"negotiated {probe.cipher} instead")
    return probe


def _tls13_probe(target: Target, suite: str) -> Probe:
    try:
        ctx = _client(ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3, tls13=[suite])
    except ComplianceError as exc:
        return Probe("untested", str(exc))
    probe = handshake(target, ctx)
    if probe.state == "accepted" and probe.cipher != suite:
        return Probe("refused", f"negotiated {probe.cipher} instead")
    return probe


def _group_probe(target: Target, name: Version, group: str) -> Probe:
    """Offer only `group` (and, under TLS 1.2, only ECDHE suites): success means it was agreed."""
    if name == "TLSv1.2":
        ctx = _client(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, "kECDHE:@SECLEVEL=0")
    else:
        ctx = _client(ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)
    try:
        set_groups(ctx, [group])
    except ComplianceError as exc:
        return Probe("untested", f"the local OpenSSL cannot offer {group} ({exc})")
    probe = handshake(target, ctx)
    if probe.state == "accepted" and probe.version != name:
        return Probe("refused", f"answered with {probe.version}")
    return probe


def _server_order(target: Target, accepted: list[str]) -> tuple[bool | None, list[str]]:
    """(does the server choose?, its order found by elimination)."""
    if len(accepted) < 2:
        return None, list(accepted)
    tls12 = ssl.TLSVersion.TLSv1_2

    def pick(offer: Sequence[str]) -> str | None:
        return handshake(target, _client(tls12, tls12, ":".join(offer) + ":@SECLEVEL=0")).cipher

    if pick(accepted) != pick(list(reversed(accepted))):
        return False, []
    order: list[str] = []
    remaining = list(reversed(accepted))
    while remaining and len(order) < MAX_ORDER_PROBES:
        chosen = pick(remaining)
        if chosen is None or chosen not in remaining:
            break
        order.append(chosen)
        remaining.remove(chosen)
    return True, order


def _served_chains(target: Target, tls12_ok: bool) -> list[tuple[str, tuple[bytes, ...]]]:
    """The chain served for each key type (a dual-cert server serves one per suite family)."""
    chains: list[tuple[str, tuple[bytes, ...]]] = []
    seen: set[bytes] = set()
    offers: list[tuple[str, ssl.SSLContext]] = []
    if tls12_ok:
        tls12 = ssl.TLSVersion.TLSv1_2
        offers += [
            ("ecdsa", _client(tls12, tls12, "aECDSA:@SECLEVEL=0")),
            ("rsa", _client(tls12, tls12, "aRSA:@SECLEVEL=0")),
        ]
    offers.append(("default", _client(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)))
    for label, ctx in offers:
        probe = handshake(target, ctx)
        if probe.state == "accepted" and probe.chain and probe.chain[0] not in seen:
            if label == "default" and chains:
                continue
            seen.add(probe.chain[0])
            chains.append((label, probe.chain))
    return chains


def _hostname_probe(target: Target) -> Probe:
    ctx = ssl.create_default_context(cafile=certifi.where())
    if target.cafile is not None:
        ctx.load_verify_locations(cafile=str(target.cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Python 3.13's default context adds X509_STRICT (which refuses a leaf without an Authority
    # Key Identifier) and PARTIAL_CHAIN; 3.11 and 3.12 set neither. One verdict on every Python:
    # the chain and the name, as before; RFC 5280 details are the certificate rules' business.
    ctx.verify_flags &= ~(ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN)
    named = Target(
        target.host, target.port, target.sni or target.host, target.cafile, target.timeout
    )
    return handshake(named, ctx)


def scan(target: Target) -> Report:
    """Scan `target`; ScanError if nothing accepts a TCP connection there."""
    try:
        socket.create_connection((target.host, target.port), timeout=target.timeout).close()
    except OSError as exc:
        raise ScanError(
            f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}"
        ) from None
    report = Report(
        "scan",
        {
            "host": target.host,
            "port": target.port,
            "server_name": target.sni,
            "cafile": str(target.cafile) if target.cafile else None,
        },
    )
    candidates = tls12_candidates()
    with ThreadPoolExecutor(MAX_PARALLEL) as pool:
        version_futures = {
            name: pool.submit(_version_probe, target, name, v) for name, v in VERSIONS
        }
        suite_futures = {
            c["name"]: pool.submit(_suite_probe, target, c["name"]) for c in candidates
        }
        tls13_futures = {s: pool.submit(_tls13_probe, target, s) for s in TLS13_SUITES}
        group_futures = {
            (name, group): pool.submit(_group_probe, target, name, group)
            for name, groups in GROUP_PROBES.items()
            for group in groups
        }
        versions = {name: f.result() for name, f in version_futures.items()}
        suites = {name: f.result() for name, f in suite_futures.items()}
        tls13 = {name: f.result() for name, f in tls13_futures.items()}
        groups = {key: f.result() for key, f in group_futures.items()}
    accepted12 = [name for name, p in suites.items() if p.state == "accepted"]
    tls13_on = versions["TLSv1.3"].state == "accepted"
    accepted13 = [name for name, p in tls13.items() if p.state == "accepted"] if tls13_on else []
    prefers, order = _server_order(target, accepted12)

    report.add(*_version_results(versions))
    report.add(*_suite_results(accepted12, candidates))
    report.add(_tls13_result(tls13_on, accepted13, tls13))
    report.add(_preference_result(prefers, order))
    served_versions = [v for v in GROUP_PROBES if versions[v].state == "accepted"]
    report.add(*(_group_result(v, groups) for v in served_versions))
    served = _served_chains(target, versions["TLSv1.2"].state == "accepted")
    certificates: list[dict[str, object]] = []
    for label, der_chain in served:
        chain = [x509.load_der_x509_certificate(d) for d in der_chain]
        subject = f"served {label} certificate"
        report.add(*certificate_results(subject, chain, target.sni))
        certificates.append(
            {"role": subject, "chain_length": len(chain), **describe_certificate(chain[0])}
        )
    if not served:
        report.add(Result("cert.trust", "served certificate", "FAIL", "no handshake completed"))
    report.add(_hostname_result(target, _hostname_probe(target)))
    resumption = resumption_probe(
        target.host, target.port, target.sni, target.timeout, session_max_early_data
    )
    report.add(*_resumption_results(resumption, tls13_on))
    client_auth = probe_client_auth(target.host, target.port, target.sni, target.timeout)
    report.add(_client_auth_result(client_auth))
    ids = {c["name"]: f"0x{c['id'] & 0xFFFF:04X}" for c in candidates}
    report.facts = {
        "protocols": {name: {"state": p.state, "detail": p.detail} for name, p in versions.items()},
        "tls12_suites_accepted": [{"name": s, "code": ids[s]} for s in accepted12],
        "tls12_suites_tested": len([p for p in suites.values() if p.state != "untested"]),
        "tls13_suites_accepted": accepted13,
        "tls13_suites_untested": [s for s, p in tls13.items() if p.state == "untested"]
        if tls13_on
        else [],
        "server_preference": prefers,
        "server_order": order,
        "groups_accepted": {
            v: [g for (name, g), p in groups.items() if name == v and p.state == "accepted"]
            for v in served_versions
        },
        "groups_untested": sorted(
            {g for (v, g), p in groups.items() if v in served_versions and p.state == "untested"}
        ),
        "certificates": certificates,
        "resumption": {
            "session_id": resumption.session_id,
            "tickets": resumption.tickets,
            "tls13_psk": resumption.tls13_psk if tls13_on else "untested",
            "max_early_data": resumption.max_early_data,
        },
        "client_auth": {"mode": client_auth.state, "ca_names": list(client_auth.ca_names)},
    }
    return report


def _client_auth_result(probe: ClientAuthProbe) -> Result:
    """Informational: whether the server asks for a client certificate and whom it names."""
    if probe.state == "unknown":
        return Result("client_auth", "server", "SKIP", f"cannot tell: {probe.detail}")
    detail = {
        "required": "requires a client certificate",
        "optional": "asks for a client certificate, serves clients without one",
        "not_requested": "does not ask for a client certificate",
    }[probe.state]
    if probe.state != "not_requested":
        names = "; ".join(probe.ca_names) if probe.ca_names else "none (any issuer)"
        detail += f"; CA names sent: {names}"
    return Result("client_auth", "server", "PASS", detail)


def _resumption_results(found: Resumption, tls13_on: bool) -> list[Result]:
    """Resumption is recommended (a WARN when absent); early data must be refused (a FAIL)."""
    detail = (
        f"session ID: {found.session_id}, TLS 1.2 ticket: {found.tickets}"
        + (f", TLS 1.3 PSK: {found.tls13_psk}" if tls13_on else "")
    )
    tried = (found.session_id, found.tickets, *((found.tls13_psk,) if tls13_on else ()))
    if found.resumes:
        resumed = Result("resumption", "server", "PASS", detail)
    elif all(state == "untested" for state in tried):
        resumed = Result("resumption", "server", "SKIP", f"could not be probed ({detail})")
    else:
        resumed = Result(
            "resumption", "server", "WARN",
            f"no returning client resumes: every reconnection pays a full handshake ({detail})",
        )
    if not tls13_on:
        early = Result("early_data", "server", "SKIP", "TLS 1.3 is not served: no 0-RTT")
    elif found.max_early_data is None:
        early = Result(
            "early_data", "server", "SKIP",
            "no TLS 1.3 ticket to read the limit from (or the local runtime cannot read it)",
        )
    elif found.max_early_data:
        early = Result(
            "early_data", "server", "FAIL",
            f"TLS 1.3 tickets allow {found.max_early_data} bytes of 0-RTT early data, which an "
            "attacker can replay: turn early data off",
        )
    else:
        early = Result("early_data", "server", "PASS", "TLS 1.3 tickets allow no early data")
    return [resumed, early]


def _version_results(versions: dict[Version, Probe]) -> list[Result]:
    results = []
    for name, probe in versions.items():
        if probe.state == "untested":
            results.append(
                Result("protocol.versions", name, "SKIP", f"cannot test: {probe.detail}")
            )
        elif name in LEGACY:
            status: Status = "FAIL" if probe.state == "accepted" else "PASS"
            detail = "accepted" if probe.state == "accepted" else f"refused ({probe.detail})"
            results.append(Result("protocol.versions", name, status, detail))
        elif name == "TLSv1.2":
            ok = probe.state == "accepted"
            results.append(
                Result(
                    "protocol.versions",
                    name,
                    "PASS" if ok else "FAIL",
                    "accepted" if ok else f"refused ({probe.detail}): the six suites need TLS 1.2",
                )
            )
        else:
            detail = (
                "accepted (allowed)"
                if probe.state == "accepted"
                else f"not accepted ({probe.detail})"
            )
            results.append(Result("protocol.versions", name, "PASS", detail))
    return results


def _suite_results(accepted: list[str], candidates: list[dict[str, Any]]) -> list[Result]:
    inside = [s for s in CARD_FOP_TLS12_SUITES if s in accepted]
    outside = [s for s in accepted if s not in CARD_FOP_TLS12_SUITES]
    kea = {c["name"]: c["kea"] for c in candidates}
    non_ecdhe = [s for s in accepted if kea.get(s) != "kx-ecdhe"]
    missing = [s for s in NOTABLE_LEGACY_SUITES if s not in kea]
    results = [
        Result(
            "suites.required",
            "TLS 1.2 suites",
            "PASS" if inside else "FAIL",
            f"{len(inside)} of the six accepted: {', '.join(inside) or 'none'}",
        ),
        Result(
            "suites.outside",
            "TLS 1.2 suites",
            "FAIL" if outside else "PASS",
            f"accepted outside the list: {', '.join(outside)}"
            if outside
            else f"nothing outside the list ({len(candidates)} suites tried one by one)",
        ),
        Result(
            "key_exchange",
            "TLS 1.2 suites",
            "FAIL" if non_ecdhe else "PASS",
            f"non-ECDHE suites accepted: {', '.join(non_ecdhe)}"
            if non_ecdhe
            else "every accepted suite is ECDHE",
        ),
    ]
    if missing:
        results.append(
            Result(
                "suites.outside",
                "legacy TLS 1.2 suites",
                "SKIP",
                f"cannot test: the local OpenSSL cannot offer {', '.join(missing)}",
            )
        )
    return results


def _tls13_result(enabled: bool, accepted: list[str], probes: dict[str, Probe]) -> Result:
    if not enabled:
        return Result("suites.tls13", "TLS 1.3 suites", "PASS", "TLS 1.3 not accepted")
    untested = [s for s, p in probes.items() if p.state == "untested"]
    if len(untested) == len(probes):
        return Result(
            "suites.tls13",
            "TLS 1.3 suites",
            "SKIP",
            f"TLS 1.3 accepted, but suites cannot be offered one by one here: {untested[0]}",
        )
    outside = [s for s in accepted if s not in CARD_FOP_TLS13_SUITES]
    detail = f"accepted: {', '.join(accepted) or 'none'}"
    if untested:
        detail += f"; not tested: {', '.join(untested)}"
    if outside:
        return Result(
            "suites.tls13",
            "TLS 1.3 suites",
            "FAIL",
            f"{detail} (outside TLS_AES_128_GCM_SHA256, TLS_CHACHA20_POLY1305_SHA256)",
        )
    return Result("suites.tls13", "TLS 1.3 suites", "PASS", detail)


def _group_result(version: Version, probes: dict[tuple[Version, str], Probe]) -> Result:
    """`key_exchange` for one version: FAIL when any group outside the three was agreed."""
    mine = {group: p for (name, group), p in probes.items() if name == version}
    agreed = [g for g, p in mine.items() if p.state == "accepted"]
    untested = [g for g, p in mine.items() if p.state == "untested"]
    outside = [g for g in agreed if g not in CARD_FOP_GROUPS]
    subject = f"{version.replace('v', ' ')} groups"
    detail = f"agreed one at a time: {', '.join(agreed) or 'none'}"
    if untested:
        detail += f"; not tested: {', '.join(untested)}"
    if outside:
        return Result(
            "key_exchange", subject, "FAIL", f"{detail} (outside X25519, P-256, P-384)"
        )
    if not agreed:
        return Result("key_exchange", subject, "FAIL", f"{detail}: no allowed group agreed")
    return Result("key_exchange", subject, "PASS", detail)


def _preference_result(prefers: bool | None, order: list[str]) -> Result:
    if prefers is None:
        return Result(
            "server_preference",
            "TLS 1.2 suites",
            "PASS",
            f"only {len(order)} suite accepted: nothing to choose",
        )
    if not prefers:
        return Result(
            "server_preference",
            "TLS 1.2 suites",
            "WARN",
            "the client's order wins: clients may pick the CBC suite first",
        )
    expected = [s for s in CARD_FOP_TLS12_SUITES if s in order]
    if [s for s in order if s in CARD_FOP_TLS12_SUITES] != expected:
        return Result(
            "server_preference",
            "TLS 1.2 suites",
            "WARN",
            f"server order differs from the documented one: {', '.join(order)}",
        )
    return Result(
        "server_preference", "TLS 1.2 suites", "PASS", f"server order: {', '.join(order)}"
    )


def _hostname_result(target: Target, probe: Probe) -> Result:
    name = target.sni or target.host
    anchors = "Mozilla roots" + (f" + {target.cafile}" if target.cafile else "")
    if probe.state == "accepted":
        return Result("hostname_verification", name, "PASS", f"chain and name verified ({anchors})")
    if probe.verify_code == X509_V_ERR_HOSTNAME_MISMATCH:
        return Result("hostname_verification", name, "FAIL", f"{probe.detail} ({anchors})")
    if probe.verify_code is not None:
        return Result(
            "hostname_verification",
            name,
            "WARN",
            f"chain not trusted by {anchors}: {probe.detail}; the name is judged by cert.names",
        )
    return Result(
        "hostname_verification", name, "FAIL", f"verifying handshake failed: {probe.detail}"
    )
