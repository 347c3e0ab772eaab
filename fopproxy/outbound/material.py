"""Trust and client-certificate files of an outbound: read once, validated, built, hot-reloaded.

The same contract as the served certificates, through the same reloader (reload.ContentStore):
everything is built from one non-blocking read of the files (the context is handed exactly the
bytes that were validated), a new build is published with one reference swap, a broken file
leaves the previous build in use, and reloads count in the same
`fopproxy_certificate_reloads_total`. A half-written rotation (key not matching yet, file cut
short or missing) gets the same grace period before it counts as failed. The client
certificate is judged by the served certificates' rule table (certrules.py).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from fopproxy.certrules import Evidence, refusal
from fopproxy.certs import (
    certificate_evidence,
    memory_files,
    parse_chain,
    read_source,
)
from fopproxy.config import OutboundConfig
from fopproxy.errors import (
    CertificateError,
    CertificateParseError,
    CertificateReadError,
    ComplianceError,
)
from fopproxy.outbound.context import ClientChain, ClientPolicy, build_client_context
from fopproxy.reload import DEFAULT_GRACE, ContentStore
from fopproxy.sources import read_pem_file
from fopproxy.stats import Stats

log = logging.getLogger("fopproxy.reload")


@dataclass(frozen=True)
class ClientCertificateInfo:
    """What the metrics and logs say about a client certificate (never the key)."""

    label: str
    serial_hex: str
    key_type: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class Files:
    """The bytes of an outbound's files at one moment, and a digest naming that content."""

    trust_pem: bytes = field(repr=False)
    cert_pem: bytes | None = field(repr=False)
    key_pem: bytes | None = field(repr=False)
    password: bytes | None = field(repr=False)
    digest: str


class OutboundTLS:
    """One validated build: the client context, and the session to resume with it.

    Sessions belong to a context (OpenSSL refuses one from another), so the cached session lives
    here and a reload starts afresh. One slot per outbound: every connection of an outbound goes
    to the same server name, so the newest session is the one worth offering.
    """

    __slots__ = ("client", "context", "digest", "session", "trust_count")

    def __init__(
        self,
        context: ssl.SSLContext,
        digest: str,
        trust_count: int,
        client: ClientCertificateInfo | None,
    ) -> None:
        self.context = context
        self.digest = digest
        self.trust_count = trust_count
        self.client = client
        self.session: ssl.SSLSession | None = None


def read_files(entry: OutboundConfig) -> Files:
    """Read the trust file (or certifi's bundle) and the client pair; errors name the key."""
    trust_path = Path(certifi.where()) if entry.trust is None else entry.trust
    try:
        trust_pem = read_pem_file(trust_path)
    except OSError as exc:
        raise CertificateReadError(
            f"{entry.key}.trust: cannot read {exc.filename}: {exc.strerror}"
        ) from None
    cert_pem = key_pem = password = None
    source = entry.client_certificate
    if source is not None:
        try:
            cert_pem, key_pem, password = read_source(source)
        except OSError as exc:
            raise CertificateReadError(
                f"{entry.key}.client_certificate: cannot read {exc.filename}: {exc.strerror}"
            ) from None
    hasher = hashlib.sha256()
    for blob in (trust_pem, cert_pem or b"", key_pem or b"", password or b""):
        hasher.update(hashlib.sha256(blob).digest())
    return Files(trust_pem, cert_pem, key_pem, password, hasher.hexdigest())


def validate_trust(entry: OutboundConfig, data: bytes) -> tuple[x509.Certificate, ...]:
    """The trusted certificates: at least one, every PEM block complete."""
    where = f"{entry.key}.trust: {entry.trust_label}"
    try:
        with warnings.catch_warnings():
            # A few old Mozilla roots carry non-positive serials; cryptography warns, parses.
            warnings.simplefilter("ignore")
            chain = parse_chain(data)
    except CertificateError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    return tuple(chain)


def client_evidence(
    entry: OutboundConfig, files: Files, now: datetime | None = None, *, search_roots: bool = False
) -> Evidence:
    """What the certificate rules (certrules.py) judge for a client certificate: the served
    certificates' rules, with no server name to cover and no suite selection to fit."""
    source = entry.client_certificate
    assert source is not None
    assert files.cert_pem is not None
    assert files.key_pem is not None
    return certificate_evidence(
        source, files.cert_pem, files.key_pem, files.password, None, None, now,
        search_roots=search_roots,
    )


def validate_client_certificate(
    entry: OutboundConfig, files: Files, now: datetime | None = None
) -> ClientCertificateInfo:
    """Refuse the client certificate for what a served one is refused for (same rule table)."""
    where = f"{entry.key}.client_certificate"
    try:
        evidence = client_evidence(entry, files, now)
        problem = refusal(evidence)
        key_type = evidence.key_info.key_type
    except CertificateError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"{where}: cannot be parsed ({exc})") from None
    if problem is not None:
        raise type(problem)(f"{where}: {problem}")
    assert key_type is not None  # the cert.key rule refuses any other key
    leaf = evidence.leaf
    return ClientCertificateInfo(
        label=leaf.subject.rfc4514_string() or evidence.cert_file,
        serial_hex=format(leaf.serial_number, "x"),
        key_type=key_type,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


def build_outbound_tls(
    entry: OutboundConfig, files: Files, now: datetime | None = None
) -> OutboundTLS:
    """Validate `files` and build the client context from exactly those bytes."""
    anchors = validate_trust(entry, files.trust_pem)
    client = None
    if entry.client_certificate is not None:
        client = validate_client_certificate(entry, files, now)
    policy = ClientPolicy.of(entry.selection)
    try:
        trust_text = files.trust_pem.decode("ascii")
    except UnicodeDecodeError:
        raise CertificateParseError(
            f"{entry.key}.trust: {entry.trust_label}: not PEM text (non-ASCII bytes)"
        ) from None
    try:
        if client is None:
            context = build_client_context(policy, trust_text)
        else:
            assert files.cert_pem is not None
            assert files.key_pem is not None
            with memory_files(files.cert_pem, files.key_pem) as (cert_path, key_path):
                chain = ClientChain(cert_path, key_path, files.password)
                context = build_client_context(policy, trust_text, chain)
    except ssl.SSLError as exc:
        raise CertificateError(f"{entry.key}: OpenSSL rejected the trust or client certificate: "
                               f"{exc.reason or exc}") from None
    except ComplianceError as exc:
        raise ComplianceError(f"{entry.key}: {exc}") from None
    return OutboundTLS(context, files.digest, len(anchors), client)


class OutboundStore(ContentStore[Files, OutboundTLS]):
    """The current OutboundTLS of one outbound, hot-reloaded by the served certificates' rules
    (reload.ContentStore): build-then-swap, keep the old one on failure, same reload counters."""

    def __init__(
        self,
        entry: OutboundConfig,
        stats: Stats,
        *,
        grace: float = DEFAULT_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.entry = entry
        self.failure_text = (
            f"outbound {entry.name}: reload failed, still using the previous trust and client "
            "certificate"
        )
        self.pending_text = f"outbound {entry.name}: files not usable yet"
        super().__init__(stats, grace=grace, clock=clock)

    def read(self) -> Files:
        return read_files(self.entry)

    def build(self, content: Files) -> OutboundTLS:
        return build_outbound_tls(self.entry, content)

    def published(self, new: OutboundTLS) -> None:
        client = new.client
        log.info(
            "outbound %s: trust and client certificate reloaded: %d trusted certificates%s",
            self.entry.name, new.trust_count,
            f", client {client.label} serial={client.serial_hex}" if client else "",
        )
