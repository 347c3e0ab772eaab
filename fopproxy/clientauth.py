"""Client certificates: the `tls.client_auth` model, its CA file, the allow-list, failure reasons.

Google authenticates to partners that ask for it with a client certificate (mutual TLS). The
policy here is pure data plus pure functions, like policy.py: OpenSSL verifies the chain and
validity against `ca` (tls.build_context turns the mode into CERT_OPTIONAL / CERT_REQUIRED), and
the allow-list then says which of the verified certificates are admitted (peerverify.py runs it
inside the handshake). Every refusal is one of four bounded reasons, the metric's label values.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

ClientAuthMode = Literal["off", "optional", "require"]
MODES: tuple[ClientAuthMode, ...] = ("off", "optional", "require")

# The `reason` label values of fopproxy_tls_client_auth_failures_total (a public contract).
NO_CERTIFICATE = "no_certificate"
UNTRUSTED = "untrusted"
EXPIRED = "expired"
NOT_ALLOWED = "not_allowed"
FAILURE_REASONS: tuple[str, ...] = (NO_CERTIFICATE, UNTRUSTED, EXPIRED, NOT_ALLOWED)

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that mean "outside the validity period".
_X509_V_ERR_CERT_NOT_YET_VALID = 9
_X509_V_ERR_CERT_HAS_EXPIRED = 10
# What the allow-list check reports through OpenSSL (peerverify.py): the application said no.
X509_V_ERR_APPLICATION_VERIFICATION = 50

CA_KEY = "tls.client_auth.ca"


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """What the allow-list and the connection log need from a verified client certificate."""

    subject: str
    common_names: tuple[str, ...]
    dns: tuple[str, ...]
    uris: tuple[str, ...]
    sha256: bytes

    @property
    def cn(self) -> str | None:
        return self.common_names[0] if self.common_names else None

    @property
    def fingerprint(self) -> str:
        """The SHA-256 as `AB:CD:…`, the form `allow.sha256` and `fopproxy cert show` use."""
        return self.sha256.hex(":").upper()


@dataclass(frozen=True)
class AllowList:
    """Which verified client certificates are admitted: any one match admits.

    Empty (every list empty): any certificate that chains to `ca`.
    """

    cn: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    sha256: frozenset[bytes] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.cn or self.dns or self.uri or self.sha256)

    def admits(self, identity: ClientIdentity) -> bool:
        if self.empty or identity.sha256 in self.sha256:
            return True
        if self.cn and any(cn in self.cn for cn in identity.common_names):
            return True
        if self.uri and any(uri in self.uri for uri in identity.uris):
            return True
        if not self.dns:
            return False
        # The certificate rules' RFC 6125 matcher; imported here so that loading the config
        # (which parses allow) does not load cryptography (fopproxy/sources.py says why).
        from fopproxy.certrules import hostname_matches

        return any(hostname_matches(pattern, name) for pattern in self.dns for name in identity.dns)


@dataclass(frozen=True)
class ClientAuthConfig:
    """`tls.client_auth`: off (default), or optional/require with the CA file and the allow-list."""

    mode: ClientAuthMode = "off"
    ca: Path | None = None
    allow: AllowList = field(default_factory=AllowList)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        return VERIFY_MODES[self.mode]


VERIFY_MODES: dict[ClientAuthMode, ssl.VerifyMode] = {
    "off": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "require": ssl.CERT_REQUIRED,
}


# ---- parsing (config.py calls this with its problem collector) -------------------------------

_SHA256 = re.compile(r"[0-9A-Fa-f]{64}").fullmatch
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)").fullmatch


def parse_fingerprint(text: str) -> bytes:
    """64 hex digits, with or without colons between the bytes (`AB:CD:…` or `abcd…`)."""
    compact = text.strip().replace(":", "")
    if ":" in text and not re.fullmatch(r"([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}", text.strip()):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (colons go between byte pairs)")
    if not _SHA256(compact):
        raise ValueError(
            f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed; "
            "`fopproxy cert show` prints it)"
        )
    return bytes.fromhex(compact)


def _dns_pattern(text: str) -> str:
    """A SAN dNSName, or an RFC 6125 wildcard: `*` as the whole left-most label only."""
    name = text.strip().lower().rstrip(".")
    labels = name.split(".")
    wildcard = labels[0] == "*"
    rest = labels[1:] if wildcard else labels
    if "*" in "".join(rest) or (not wildcard and "*" in name):
        raise ValueError(
            f"{text!r}: a wildcard must be the whole left-most label (`*.example.com`), "
            "nothing else (RFC 6125)"
        )
    if wildcard and len(rest) < 2:
        raise ValueError(f"{text!r}: a wildcard needs at least two labels after it")
    if len(name) > 253 or not all(_LABEL(label) for label in rest):
        raise ValueError(f"{text!r} is not a valid DNS name")
    return name


def _uri(text: str) -> str:
    value = text.strip()
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URI ({exc})") from None
    if not parts.scheme or not (parts.netloc or parts.path) or any(c.isspace() for c in value):
        raise ValueError(f"{text!r} is not an absolute URI (scheme:…, e.g. spiffe://domain/path)")
    return value


def _cn(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("an empty common name matches nothing")
    return value


AddProblem = Callable[[str, str], None]
ALLOW_KEYS = ("cn", "dns", "uri", "sha256")


def _entries(
    raw: object, where: str, parse: Callable[[str], object], add: AddProblem
) -> list[object]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        add(where, "expected a list of strings")
        return []
    values: list[object] = []
    for index, item in enumerate(raw):
        if not isinstance(item, str):
            add(f"{where}[{index}]", f"expected a string, got {type(item).__name__}")
            continue
        try:
            values.append(parse(item))
        except ValueError as exc:
            add(f"{where}[{index}]", str(exc))
    return values


def parse_client_auth(
    raw: object, resolve: Callable[[str], Path], add: AddProblem
) -> ClientAuthConfig | None:
    """`tls.client_auth` from YAML; every problem goes to `add(key.path, message)`.

    `resolve` turns the `ca` string into a path (relative to the config file). Returns None only
    where a problem was added. The CA file itself is read by `load_client_ca`, at start, on
    every reload and by `fopproxy check`, like the certificates.
    """
    where = "tls.client_auth"
    if raw is None:
        return ClientAuthConfig()
    if not isinstance(raw, Mapping):
        add(where, "expected a mapping (mode, ca, allow)")
        return None
    problems = 0

    def counted(path: str, message: str) -> None:
        nonlocal problems
        problems += 1
        add(path, message)

    for key in raw:
        if key not in ("mode", "ca", "allow"):
            counted(f"{where}.{key}", "unknown key (allowed here: mode, ca, allow)")
    mode_raw = raw.get("mode", "off")
    mode: ClientAuthMode = "off"
    if mode_raw is False:  # YAML 1.1 reads a bare `off` as false
        mode_raw = "off"
    if mode_raw in MODES:
        mode = mode_raw
    else:
        counted(f"{where}.mode", f"must be off, optional or require, got {mode_raw!r}")
    ca: Path | None = None
    ca_raw = raw.get("ca")
    if ca_raw is not None:
        if isinstance(ca_raw, str) and ca_raw.strip():
            ca = resolve(ca_raw.strip())
        else:
            counted(f"{where}.ca", "expected the path of a PEM file of CA certificates")
    elif mode != "off":
        counted(
            f"{where}.ca",
            f"is required when mode is {mode}: the PEM file of the CA certificates (or pinned "
            "self-signed client certificates) that client certificates must chain to",
        )
    allow = AllowList()
    allow_raw = raw.get("allow")
    if allow_raw is not None:
        if not isinstance(allow_raw, Mapping):
            counted(f"{where}.allow", "expected a mapping (cn, dns, uri, sha256)")
        else:
            for key in allow_raw:
                if key not in ALLOW_KEYS:
                    counted(
                        f"{where}.allow.{key}",
                        f"unknown key (allowed here: {', '.join(ALLOW_KEYS)})",
                    )
            parsers: dict[str, Callable[[str], object]] = {
                "cn": _cn, "dns": _dns_pattern, "uri": _uri, "sha256": parse_fingerprint,
            }
            values = {
                key: _entries(allow_raw.get(key), f"{where}.allow.{key}", parse, counted)
                for key, parse in parsers.items()
            }
            allow = AllowList(
                cn=tuple(str(v) for v in values["cn"]),
                dns=tuple(str(v) for v in values["dns"]),
                uri=tuple(str(v) for v in values["uri"]),
                sha256=frozenset(v for v in values["sha256"] if isinstance(v, bytes)),
            )
            if mode == "off" and not allow.empty:
                # Written allow rules that admit everyone would be a silent hole.
                counted(
                    f"{where}.allow",
                    "has no effect while mode is off (every client is admitted); set mode: require",
                )
    if problems:
        return None
    return ClientAuthConfig(mode, ca, allow)


# ---- the CA file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCA:
    """The validated CA file (certs.validate_client_ca): the PEM text handed to OpenSSL and the
    subjects of the certificates it holds, in file order."""

    pem: str = field(repr=False)
    subjects: tuple[str, ...]


@dataclass(frozen=True)
class ClientTrust:
    """What a server context needs to ask for client certificates and judge them: the mode, the
    validated CA file content (as read once, like the certificates) and the allow-list.
    Built by certs.client_trust, which reads and validates the CA file."""

    mode: ClientAuthMode
    ca: ClientCA
    allow: AllowList

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        return VERIFY_MODES[self.mode]

    def session_tag(self) -> bytes:
        """What a resumable session must have been made under: mode, CA content, allow-list.

        A resumed session (session ID, ticket, TLS 1.3 PSK) skips the client's certificate and
        the allow-list; tagging the session id context with this keeps a session from being
        resumed once the CA bundle dropped its issuer, the allow-list changed, or `optional`
        became `require` (keys shared through a key file outlive a restart).
        """
        allow = self.allow
        digest = hashlib.sha256(b"fopproxy client trust v1\0" + self.mode.encode() + b"\0")
        digest.update(hashlib.sha256(self.ca.pem.encode("ascii")).digest())
        for values in (allow.cn, allow.dns, allow.uri, sorted(v.hex() for v in allow.sha256)):
            digest.update(b"\0".join(v.encode() for v in sorted(values)) + b"\1")
        return digest.digest()


def ca_to_read(config: ClientAuthConfig) -> Path | None:
    """The CA file a snapshot must read with the certificates (None when client_auth is off)."""
    return config.ca if config.enabled else None


# ---- refusals ---------------------------------------------------------------------------------


def classify_failure(exc: ssl.SSLError) -> str | None:
    """The client-auth reason of a failed handshake, or None where the client certificate was not
    the cause. OpenSSL says `PEER_DID_NOT_RETURN_A_CERTIFICATE` for a missing one (TLS 1.2 and
    1.3), and `CERTIFICATE_VERIFY_FAILED` with the X509 error code for a refused one."""
    reason = exc.reason or ""
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return NO_CERTIFICATE
    if reason != "CERTIFICATE_VERIFY_FAILED":
        return None
    code = getattr(exc, "verify_code", None)
    if code in (_X509_V_ERR_CERT_HAS_EXPIRED, _X509_V_ERR_CERT_NOT_YET_VALID):
        return EXPIRED
    if code == X509_V_ERR_APPLICATION_VERIFICATION:
        return NOT_ALLOWED
    return UNTRUSTED
