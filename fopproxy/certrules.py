"""The certificate rules, written once: `run` refuses on them, `check` and `scan` report them.

One table (`CERTIFICATE_RULES`), one row per rule: its id (the report's `rule`), the line of the
Card FOP transport page it comes from, what it checks, a severity, and a function that judges one
chain and returns a `Finding`. A finding words one verdict for two readers: `detail` for the
report row, and `refusal`, the CertificateError `fopproxy run` raises when an "error" rule fails.
Since load-time validation and the report call the same functions, `check` cannot pass what
`run` would refuse, nor the reverse.

A certificate is judged from its chain alone (plus, where there is one, its private key and the
selected suites), so a file on disk (`check`, `run`) and a chain a server sent (`scan`) get the
same verdicts.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import DNSName, verification
from cryptography.x509.oid import NameOID

from fopproxy.errors import CertificateError, KeyMismatchError
from fopproxy.policy import KeyType, SuiteSelection

MIN_RSA_BITS = 2048
ALLOWED_CURVES = {"secp256r1": 256, "secp384r1": 384}
WEAK_SIGNATURE_HASHES = frozenset({"md5", "sha1"})

# Days of validity left below which a certificate is reported as a warning (rotate it soon).
EXPIRY_WARNING_DAYS = 30

Status = Literal["PASS", "WARN", "FAIL", "SKIP"]

# "error": a FAIL makes `fopproxy run` refuse the certificate. "advisory": reported only; a
# private CA is allowed (Google is given its fingerprint), so trust never stops the proxy.
Severity = Literal["error", "advisory"]


@dataclass(frozen=True)
class KeyInfo:
    """What a public key is, in the terms the rules use."""

    key_type: KeyType | None
    bits: int
    description: str


def describe_key(key: object) -> KeyInfo:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return KeyInfo("rsa", key.key_size, f"RSA {key.key_size}")
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        name = key.curve.name
        bits = key.curve.key_size
        if name in ALLOWED_CURVES:
            return KeyInfo("ecdsa", bits, f"ECDSA {name}")
        return KeyInfo(None, bits, f"ECDSA {name} (curve not allowed: use P-256 or P-384)")
    return KeyInfo(None, 0, f"{type(key).__name__} (no Card FOP suite can use it)")


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS names a client checks: the SAN dNSNames, or the CN only where there is no SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        return tuple(n.lower().rstrip(".") for n in san.value.get_values_for_type(x509.DNSName))
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return tuple(str(a.value).lower().rstrip(".") for a in common_names)


def hostname_matches(pattern: str, host: str) -> bool:
    """RFC 6125 §6.4: exact match, or a `*` that is the whole left-most label and matches one label.

    `*.pay.example.com` covers `api.pay.example.com`, not `pay.example.com` nor
    `a.b.pay.example.com`. Partial-label wildcards (`f*.example.com`) and wildcards over a bare
    public suffix (`*.com`) are refused, as browsers and CA/B rules do.
    """
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if not pattern or not host:
        return False
    if "*" not in pattern:
        return pattern == host
    first, _, rest = pattern.partition(".")
    if first != "*" or "*" in rest or "." not in rest:
        return False
    label, _, host_rest = host.partition(".")
    return bool(label) and host_rest == rest


def covers(names: Sequence[str], host: str) -> bool:
    return any(hostname_matches(name, host) for name in names)


def chain_order_problem(chain: Sequence[x509.Certificate]) -> str | None:
    """Why the chain is not leaf-first with each certificate signed by the next, or None."""
    for index in range(len(chain) - 1):
        child, parent = chain[index], chain[index + 1]
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            return (
                f"certificate #{index} ({child.subject.rfc4514_string()}) is not signed by the "
                f"next one in the file ({parent.subject.rfc4514_string()}); "
                "put the leaf first, then each issuer in order"
            )
    return None


def signature_hash_name(cert: x509.Certificate) -> str:
    """The hash the issuer signed `cert` with ("sha256"), "unknown", or "none" for EdDSA."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "unknown"
    return algorithm.name if algorithm is not None else "none"


def weak_signature_problem(chain: Sequence[x509.Certificate]) -> str | None:
    """Why a signature a client checks uses SHA-1 or MD5, or None.

    A root's signature on itself is never checked, so certificates whose issuer is their own
    subject are left out. Checked before the chain order: cryptography cannot verify a SHA-1
    signature at all, which would otherwise read as "not signed by the next certificate".
    """
    weak = [
        f"certificate #{index} ({cert.subject.rfc4514_string()}) is signed with "
        f"{signature_hash_name(cert).upper()}"
        for index, cert in enumerate(chain)
        if cert.issuer != cert.subject and signature_hash_name(cert) in WEAK_SIGNATURE_HASHES
    ]
    if not weak:
        return None
    return "; ".join(weak) + "; re-issue it signed with SHA-256"


def public_key_der(key: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a private or public key (any type cryptography loads)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    der: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


@functools.cache
def mozilla_roots() -> tuple[x509.Certificate, ...]:
    """The Mozilla CA program's roots, as shipped by `certifi` (read on first use only)."""
    import certifi

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


def subject_name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


@dataclass(frozen=True)
class PrivateKey:
    """The private key given with a chain: parsed, or the error parsing it raised."""

    file: str
    key: object | None
    error: CertificateError | None = None


@dataclass(frozen=True)
class Evidence:
    """What the rules judge: one chain (leaf first) and what it is meant to serve.

    `key` and `selection` are None where there is none to judge (`scan` sees only a chain);
    `server_name` is None where no hostname was given. The derived facts several rules share
    are worked out once, on first use.
    """

    chain: Sequence[x509.Certificate]
    server_name: str | None
    now: datetime
    cert_file: str = ""
    key: PrivateKey | None = None
    selection: SuiteSelection | None = None
    # Start-up only asks whether a rule refuses; the search for a path to the Mozilla roots
    # only words the report's chain and trust rows, and `run` never pays for it.
    search_roots: bool = True

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @cached_property
    def key_info(self) -> KeyInfo:
        return describe_key(self.leaf.public_key())

    @cached_property
    def names(self) -> tuple[str, ...]:
        return certificate_names(self.leaf)

    @cached_property
    def weak_signature(self) -> str | None:
        return weak_signature_problem(self.chain)

    @cached_property
    def order_problem(self) -> str | None:
        return chain_order_problem(self.chain)

    @cached_property
    def anchoring(self) -> tuple[Finding, Finding]:
        """(cert.chain, cert.trust) for a chain in order: both come from one path search."""
        return _anchoring(self)

    def refuse(self, message: str) -> CertificateError:
        return CertificateError(f"{self.cert_file}: {message}")


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one chain: the report row's status and detail, and for a failing
    "error" rule the exception `run` raises (worded as it always has been)."""

    status: Status
    detail: str
    facts: dict[str, object] = field(default_factory=dict)
    refusal: CertificateError | None = None


@dataclass(frozen=True)
class CertificateRule:
    """One row of the table: where the rule comes from, what it asks, and how it judges.

    `judge` returns None where the rule has nothing to say about this evidence (no key to
    match, no suite selection, or a key another rule already fails).
    """

    id: str
    card_rule: str
    title: str
    severity: Severity
    judge: Callable[[Evidence], Finding | None]


def _key_match(ev: Evidence) -> Finding | None:
    if ev.key is None:
        return None
    if ev.key.error is not None:
        return Finding("FAIL", f"{ev.key.file}: {ev.key.error}", refusal=ev.key.error)
    if public_key_der(ev.key.key) != public_key_der(ev.leaf.public_key()):
        return Finding(
            "FAIL",
            f"key {ev.key.file} does not match the certificate (different public keys)",
            refusal=KeyMismatchError(
                f"key {ev.key.file} does not match certificate {ev.cert_file} "
                "(different public keys)"
            ),
        )
    return Finding("PASS", f"{ev.key.file} matches")


def _key(ev: Evidence) -> Finding:
    info = ev.key_info
    if info.key_type is None:
        return Finding("FAIL", info.description, refusal=ev.refuse(f"key is {info.description}"))
    if info.key_type == "rsa" and info.bits < MIN_RSA_BITS:
        message = f"RSA key has {info.bits} bits, at least {MIN_RSA_BITS} needed"
        return Finding("FAIL", message, refusal=ev.refuse(message))
    return Finding("PASS", info.description, {"key": info.description})


def _key_usable(ev: Evidence) -> Finding | None:
    """A key type no selected suite uses could never be negotiated; coverage of the whole set
    is judged apart (`check`'s config row), so a usable key has nothing to report here."""
    info = ev.key_info
    if ev.selection is None or _key(ev).status != "PASS" or info.key_type is None:
        return None
    if info.key_type in ev.selection.key_types:
        return None
    message = (
        f"a {info.key_type.upper()} key, but no selected suite uses one "
        f"(selected: {', '.join(ev.selection.tls12)})"
    )
    return Finding("FAIL", message, refusal=ev.refuse(message))


def _signature(ev: Evidence) -> Finding:
    problem = ev.weak_signature
    if problem is not None:
        return Finding("FAIL", problem, refusal=ev.refuse(problem))
    # A root's signature on itself is never checked by clients, so only the others count.
    checked = [c for c in ev.chain if c.issuer != c.subject] or list(ev.chain[:1])
    used = sorted({signature_hash_name(c).upper() for c in checked})
    return Finding("PASS", f"signed with {', '.join(used)}")


def _validity(ev: Evidence) -> Finding:
    start, end = ev.leaf.not_valid_before_utc, ev.leaf.not_valid_after_utc
    facts: dict[str, object] = {"not_before": start.isoformat(), "not_after": end.isoformat()}
    if ev.now < start:
        return Finding(
            "FAIL",
            f"not valid before {start:%Y-%m-%d %H:%M}Z",
            facts,
            ev.refuse(f"not valid before {start.isoformat()}"),
        )
    if ev.now >= end:
        return Finding(
            "FAIL",
            f"expired on {end:%Y-%m-%d %H:%M}Z",
            facts,
            ev.refuse(f"expired on {end.isoformat()}"),
        )
    days = (end - ev.now) // timedelta(days=1)
    facts["days_left"] = days
    text = f"valid until {end:%Y-%m-%d}, {days} days left"
    if days < EXPIRY_WARNING_DAYS:
        return Finding("WARN", text + f" (under {EXPIRY_WARNING_DAYS}: rotate)", facts)
    return Finding("PASS", text, facts)


def _names(ev: Evidence) -> Finding:
    listed = ", ".join(ev.names) or "none"
    if ev.server_name is None:
        return Finding("SKIP", f"no hostname given to check (names: {listed})")
    if covers(ev.names, ev.server_name):
        return Finding("PASS", f"{ev.server_name} covered by {listed}")
    return Finding(
        "FAIL",
        f"{ev.server_name} not covered by {listed} "
        "(a wildcard matches exactly one left-most label)",
        refusal=ev.refuse(
            f"does not cover server_name {ev.server_name!r} (certificate names: {listed})"
        ),
    )


_WEAK_SKIP = "weak signature: see cert.signature"


def _chain(ev: Evidence) -> Finding:
    if ev.weak_signature is not None:
        # cryptography cannot verify SHA-1/MD5 signatures, so the chain cannot be walked.
        return Finding("SKIP", _WEAK_SKIP)
    if ev.order_problem is not None:
        return Finding("FAIL", ev.order_problem, refusal=ev.refuse(ev.order_problem))
    if not ev.search_roots:
        return Finding("PASS", "leaf first, each signed by the next (root store not searched)")
    return ev.anchoring[0]


def _trust(ev: Evidence) -> Finding:
    if ev.weak_signature is not None:
        return Finding("SKIP", _WEAK_SKIP)
    if ev.order_problem is not None:
        return Finding("SKIP", "chain order must be fixed first")
    if not ev.search_roots:
        return Finding("SKIP", "root store not searched")
    return ev.anchoring[1]


def _verifier_name(ev: Evidence) -> str | None:
    """A DNS name the leaf covers, so that trust is judged apart from name coverage."""
    if ev.server_name and covers(ev.names, ev.server_name):
        return ev.server_name
    for name in ev.names:
        candidate = name.replace("*", "x", 1)
        if covers(ev.names, candidate):
            return candidate
    return None


def _mozilla_verify(ev: Evidence) -> tuple[x509.Certificate | None, str]:
    """(the Mozilla root the chain verifies to, or None; why not)."""
    leaf = ev.leaf
    name = _verifier_name(ev)
    if name is None:
        return None, "no DNS name to verify against"
    # Judge trust inside the validity window: expiry has its own rule and its own FAIL.
    moment = min(
        max(ev.now, leaf.not_valid_before_utc), leaf.not_valid_after_utc - timedelta(seconds=1)
    )
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(mozilla_roots())))
            .time(moment)
            .build_server_verifier(DNSName(name))
        )
        verified = verifier.verify(leaf, list(ev.chain[1:]))
    except (verification.VerificationError, ValueError) as exc:
        return None, str(exc)
    return verified[-1], ""


def _anchoring(ev: Evidence) -> tuple[Finding, Finding]:
    leaf, top = ev.leaf, ev.chain[-1]
    root, why = _mozilla_verify(ev)
    if root is not None:
        return (
            Finding("PASS", f"complete: verifies to {subject_name(root)}"),
            Finding(
                "PASS", f"chains to Mozilla root {subject_name(root)}", {"root": subject_name(root)}
            ),
        )
    mozilla_subjects = {r.subject for r in mozilla_roots()}
    if len(ev.chain) == 1 and is_self_signed(leaf):
        fingerprint = fingerprint_sha256(leaf)
        return (
            Finding("PASS", "a single self-signed certificate"),
            Finding(
                "WARN",
                f"self-signed: give Google this SHA-256 fingerprint to trust: {fingerprint}",
                {"self_signed": True, "fingerprint_sha256": fingerprint},
            ),
        )
    if is_self_signed(top):
        if top.subject in mozilla_subjects:
            return (
                Finding("PASS", f"complete up to {subject_name(top)}"),
                Finding(
                    "FAIL", f"names Mozilla root {subject_name(top)} but does not verify: {why}"
                ),
            )
        fingerprint = fingerprint_sha256(top)
        return (
            Finding("PASS", f"complete up to its root {subject_name(top)}"),
            Finding(
                "WARN",
                f"private CA {subject_name(top)} is not in the Mozilla store: give Google its "
                f"SHA-256 fingerprint to trust: {fingerprint}",
                {"self_signed": False, "fingerprint_sha256": fingerprint},
            ),
        )
    issuer = top.issuer.rfc4514_string()
    if top.issuer in mozilla_subjects:
        return (
            Finding("PASS", f"complete up to Mozilla root {issuer}"),
            Finding("FAIL", f"issued under Mozilla root {issuer} but does not verify: {why}"),
        )
    return (
        Finding(
            "WARN",
            f"ends at {subject_name(top)}, whose issuer {issuer} is neither in the chain nor a "
            "Mozilla root: if it is an intermediate, add it after the leaf",
        ),
        Finding(
            "WARN",
            f"does not chain to the Mozilla store ({why}); Google must be given the "
            f"issuing CA {issuer} to trust",
        ),
    )


# In report order: the order of a certificate's rows in `check` and `scan`.
CERTIFICATE_RULES: tuple[CertificateRule, ...] = (
    CertificateRule(
        "cert.key_match", "3", "private key matches the certificate", "error", _key_match
    ),
    CertificateRule(
        "cert.key", "fop", "key is ECDSA P-256/P-384 or RSA >= 2048 bits", "error", _key
    ),
    CertificateRule(
        "cert.signature", "3", "no SHA-1 (or MD5) signature in the chain", "error", _signature
    ),
    CertificateRule(
        "cert.validity",
        "3",
        "inside its validity window (warn under 30 days left)",
        "error",
        _validity,
    ),
    CertificateRule(
        "cert.names",
        "2",
        "SAN (or CN without SAN) covers the hostname, RFC 6125 wildcards",
        "error",
        _names,
    ),
    CertificateRule(
        "cert.chain",
        "3",
        "chain is leaf first, each signed by the next, and complete",
        "error",
        _chain,
    ),
    CertificateRule(
        "cert.trust",
        "3",
        "chains to the Mozilla root store, or self-signed given to Google",
        "advisory",
        _trust,
    ),
    CertificateRule(
        "certificates.key_types",
        "fop",
        "each certificate has a selected suite that uses it",
        "error",
        _key_usable,
    ),
)

CERTIFICATE_RULE = {rule.id: rule for rule in CERTIFICATE_RULES}

# The order `run` has always named a certificate's first problem in (the key before its dates,
# the dates before the names, the signatures last), so a certificate with two problems is
# refused with the same message as before the rules were one table.
REFUSAL_ORDER: tuple[CertificateRule, ...] = tuple(
    CERTIFICATE_RULE[rule_id]
    for rule_id in (
        "cert.key_match",
        "cert.key",
        "certificates.key_types",
        "cert.validity",
        "cert.names",
        "cert.signature",
        "cert.chain",
    )
)


def judge(ev: Evidence) -> list[tuple[CertificateRule, Finding]]:
    """Every rule on one chain, in report order; rules with nothing to say are left out."""
    found = ((rule, rule.judge(ev)) for rule in CERTIFICATE_RULES)
    return [(rule, finding) for rule, finding in found if finding is not None]


def _first_refusal(findings: Iterable[Finding | None]) -> CertificateError | None:
    for finding in findings:
        if finding is not None and finding.status == "FAIL" and finding.refusal is not None:
            return finding.refusal
    return None


def refusal(ev: Evidence) -> CertificateError | None:
    """What `run` refuses this chain for, judging rule by rule up to the first failure."""
    return _first_refusal(rule.judge(ev) for rule in REFUSAL_ORDER)


def refusal_among(findings: Sequence[tuple[CertificateRule, Finding]]) -> CertificateError | None:
    """The same choice as `refusal`, made among findings already worked out (by `judge`)."""
    by_id = {rule.id: finding for rule, finding in findings}
    return _first_refusal(by_id.get(rule.id) for rule in REFUSAL_ORDER)
