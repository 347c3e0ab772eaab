"""Certificate loading and validation, and the immutable certificate set a listener serves from.

A `CertificateSet` is built completely (parsed, validated, contexts made) before anyone sees it;
reloading builds a new one and swaps a single reference, so a broken file never reaches a client
and connections already open keep the context they started with.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from fopproxy.certrules import Evidence, PrivateKey, covers, is_self_signed, refusal
from fopproxy.clientauth import (
    CA_KEY,
    ClientAuthConfig,
    ClientCA,
    ClientTrust,
    ca_to_read,
)
from fopproxy.errors import (
    CertificateError,
    CertificateParseError,
    CertificateReadError,
    ComplianceError,
)
from fopproxy.policy import KeyType, SuiteSelection
from fopproxy.sources import CertificateSource, read_pem_file
from fopproxy.tls import TicketContexts, build_context

if TYPE_CHECKING:
    from fopproxy.tickets import KeyRing

PEM_BEGIN_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def parse_chain(data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file, refusing one that looks cut short.

    cryptography skips a PEM block that has no END line, so a chain caught mid-write would parse
    as "leaf only" and be served without its intermediates; the two checks below catch that.
    """
    if not data.strip():
        raise CertificateParseError("the certificate file is empty")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateParseError(
            f"no complete PEM certificate in the file ({len(data)} bytes; cut short or not PEM?)"
        ) from None
    last_line = data.rstrip().rsplit(b"\n", 1)[-1].strip()
    if not (last_line.startswith(b"-----END ") and last_line.endswith(b"-----")):
        raise CertificateParseError(
            "the certificate file does not end with a PEM END line (cut short?)"
        )
    blocks = data.count(PEM_BEGIN_CERTIFICATE)
    if blocks != len(chain):
        raise CertificateParseError(
            f"the certificate file has {blocks} PEM certificate blocks but only {len(chain)} "
            "could be read (one is cut short or damaged)"
        )
    return chain


def parse_private_key(data: bytes, password: bytes | None) -> object:
    if not data.strip():
        raise CertificateParseError("the private key file is empty")
    try:
        return serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:
        # cryptography raises TypeError for "encrypted but no password" and the reverse.
        raise CertificateError(f"private key: {exc}") from None
    except UnsupportedAlgorithm as exc:
        raise CertificateError(f"private key of an unsupported type ({exc})") from None
    except ValueError:
        # Also a wrong passphrase; the message must not echo anything of the key.
        raise CertificateParseError(
            f"private key cannot be read ({len(data)} bytes; cut short, not PEM, "
            "or a wrong passphrase?)"
        ) from None


@dataclass(frozen=True)
class LoadedCertificate:
    """One validated chain with its key, ready to be put into a context."""

    source: CertificateSource
    chain: tuple[x509.Certificate, ...]
    key_type: KeyType
    key_description: str
    names: tuple[str, ...]
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    password: bytes | None = field(repr=False)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial_hex(self) -> str:
        return format(self.leaf.serial_number, "x")

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def label(self) -> str:
        """A name for logs and metrics: the first DNS name, else the file name."""
        return self.names[0] if self.names else self.source.cert.name


def read_source(source: CertificateSource) -> tuple[bytes, bytes, bytes | None]:
    """Read cert, key and passphrase bytes; OSError names the file that failed."""
    cert_pem = read_pem_file(source.cert)
    key_pem = read_pem_file(source.key)
    password = None
    if source.passphrase_file is not None:
        password = read_pem_file(source.passphrase_file).rstrip(b"\r\n")
    return cert_pem, key_pem, password


def validate_certificate(
    source: CertificateSource,
    cert_pem: bytes,
    key_pem: bytes,
    password: bytes | None,
    server_name: str,
    selection: SuiteSelection,
    now: datetime | None = None,
) -> LoadedCertificate:
    """Everything the rules and the start-up contract ask of one chain; CertificateError if not."""
    try:
        return _validate_certificate(
            source, cert_pem, key_pem, password, server_name, selection, now
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        # cryptography parses extensions and public keys only when asked: a malformed SAN or key
        # in an otherwise well-framed PEM surfaces here, and must not escape the reload watcher.
        raise CertificateError(f"{source.cert}: cannot be parsed ({exc})") from None


def certificate_evidence(
    source: CertificateSource,
    cert_pem: bytes,
    key_pem: bytes,
    password: bytes | None,
    server_name: str | None,
    selection: SuiteSelection | None,
    now: datetime | None = None,
    *,
    search_roots: bool = True,
) -> Evidence:
    """What the certificate rules judge for one configured entry (a client certificate has no
    server name to cover and no suite selection to fit: None).

    An unreadable chain raises CertificateParseError (there is nothing to judge); an unreadable
    key does not: it is the key-match rule's finding, so `check` can go on judging the chain.
    """
    chain = parse_chain(cert_pem)
    try:
        key = PrivateKey(str(source.key), parse_private_key(key_pem, password))
    except CertificateError as exc:
        key = PrivateKey(str(source.key), None, exc)
    return Evidence(
        chain=chain,
        server_name=server_name,
        now=now or datetime.now(UTC),
        cert_file=str(source.cert),
        key=key,
        selection=selection,
        search_roots=search_roots,
    )


def loaded_certificate(
    source: CertificateSource,
    evidence: Evidence,
    cert_pem: bytes,
    key_pem: bytes,
    password: bytes | None,
) -> LoadedCertificate:
    """The certificate ready to serve, from evidence that passed every "error" rule."""
    key_type = evidence.key_info.key_type
    if key_type is None:  # pragma: no cover - the cert.key rule refuses it first
        raise CertificateError(f"{source.cert}: key is {evidence.key_info.description}")
    return LoadedCertificate(
        source=source,
        chain=tuple(evidence.chain),
        key_type=key_type,
        key_description=evidence.key_info.description,
        names=evidence.names,
        cert_pem=cert_pem,
        key_pem=key_pem,
        password=password,
    )


def _validate_certificate(
    source: CertificateSource,
    cert_pem: bytes,
    key_pem: bytes,
    password: bytes | None,
    server_name: str,
    selection: SuiteSelection,
    now: datetime | None,
) -> LoadedCertificate:
    evidence = certificate_evidence(
        source, cert_pem, key_pem, password, server_name, selection, now, search_roots=False
    )
    problem = refusal(evidence)
    if problem is not None:
        raise problem
    return loaded_certificate(source, evidence, cert_pem, key_pem, password)


@contextlib.contextmanager
def memory_files(*blobs: bytes) -> Iterator[list[str]]:
    """Paths that read back exactly `blobs`, without the key ever touching a disk.

    `load_cert_chain` only takes paths; handing it what we validated (rather than re-reading the
    user's files, which a rotation may be rewriting right now) closes the check-then-use race.
    """
    fds: list[int] = []
    tmpdir: tempfile.TemporaryDirectory[str] | None = None
    try:
        paths = []
        for blob in blobs:
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("fopproxy-pem", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, blob)
                paths.append(f"/proc/self/fd/{fd}")
            else:  # pragma: no cover - non-Linux fallback
                tmpdir = tmpdir or tempfile.TemporaryDirectory(prefix="fopproxy-")
                path = Path(tmpdir.name) / f"{len(paths)}.pem"
                path.touch(0o600)
                path.write_bytes(blob)
                paths.append(str(path))
        yield paths
    finally:
        for fd in fds:
            os.close(fd)
        if tmpdir is not None:  # pragma: no cover
            tmpdir.cleanup()


def _session_context(
    members: Sequence[LoadedCertificate], client_trust: ClientTrust | None = None
) -> bytes:
    """A session id context naming exactly these certificates (and so their names), and the
    client-certificate settings sessions were authenticated under.

    OpenSSL resumes a session (ID, ticket or TLS 1.3 PSK) only where the context it was made
    under matches, so a session made with one certificate is never resumed on a context serving
    another, nor one whose client was admitted under another CA bundle or allow-list.
    """
    digest = hashlib.sha256(b"fopproxy session context v1")
    for cert in members:
        digest.update(cert.leaf.fingerprint(hashes.SHA256()))
    if client_trust is not None:
        digest.update(client_trust.session_tag())
    return digest.digest()


def _group_for(certificates: Sequence[LoadedCertificate], host: str) -> tuple[int, ...]:
    """Indices of the certificates to serve for `host`: the first covering it per key type."""
    chosen: dict[str, int] = {}
    for index, cert in enumerate(certificates):
        if cert.key_type not in chosen and covers(cert.names, host):
            chosen[cert.key_type] = index
    return tuple(sorted(chosen.values()))


class CertificateSet:
    """An immutable, validated set of certificates and the contexts that serve them.

    With one certificate per key type (the usual ECDSA + RSA pair) there is one context and no
    per-handshake work. Where several certificates share a key type, SNI picks among them: one
    context per distinct group is built up front, and the SNI callback only switches to it.
    """

    def __init__(
        self,
        certificates: Sequence[LoadedCertificate],
        selection: SuiteSelection,
        server_name: str,
        digest: str,
        tickets: KeyRing | None = None,
        client_trust: ClientTrust | None = None,
    ) -> None:
        self.certificates = tuple(certificates)
        self.tickets = tickets
        # Every context of the set asks for client certificates the same way: the SNI callback
        # may switch a handshake to another context of the set.
        self.client_trust = client_trust
        self.selection = selection
        self.server_name = server_name
        self.digest = digest
        self._contexts: dict[tuple[int, ...], ssl.SSLContext] = {}
        default_group = _group_for(self.certificates, server_name)
        needs_sni = len(self.certificates) > len({c.key_type for c in self.certificates})
        # OpenSSL looks a TLS 1.2 session up in the first context's cache, before the SNI
        # callback switches contexts, and then tells the callback the *session's* name, not the
        # one the client asked for: a session made with one certificate would be resumed for
        # another name. Where SNI picks among certificates, resumption is therefore off.
        self._needs_sni = needs_sni
        candidates = {server_name}
        if needs_sni:
            for cert in self.certificates:
                for name in cert.names:
                    # A wildcard stands for every host under it; one representative finds its group.
                    candidates.add(name.replace("*", "x--wildcard", 1))
        for host in candidates:
            group = _group_for(self.certificates, host)
            if group and group != default_group and group not in self._contexts:
                self._contexts[group] = self._make_context(group, with_sni=False)[0]
        # The default context always gets the SNI callback: it records the name for the log line
        # and, where several certificates share a key type, switches to the group for that name.
        # With tickets, connections start on a twin of the default context that keeps the
        # current ticket key inside libssl (tls.TicketContexts); `context` opens older keys.
        twin = tickets is not None and not needs_sni
        default, fast = self._make_context(default_group, with_sni=True, twin=twin)
        self._contexts[default_group] = default
        self.context: ssl.SSLContext = default
        self._default_group = default_group
        self._tickets: TicketContexts | None = None
        if tickets is not None and fast is not None:
            members = [self.certificates[i] for i in default_group]
            self._tickets = TicketContexts(
                fast, default, tickets, _session_context(members, self.client_trust)
            )

    def start(self) -> tuple[ssl.SSLContext, TicketContexts | None]:
        """The context a new connection starts on, and, while older ticket keys are in force,
        the TicketContexts whose `older` names, found in the client's first bytes, move it to
        that set's `keyed` context."""
        tickets = self._tickets
        if tickets is None:
            return self.context, None
        context, older = tickets.start()
        return context, tickets if older else None

    def sync_tickets(self) -> None:
        """Bring the key libssl holds up to the ring's (on every reload check)."""
        if self._tickets is not None:
            self._tickets.sync()

    def _make_context(
        self, group: tuple[int, ...], *, with_sni: bool, twin: bool = False
    ) -> tuple[ssl.SSLContext, ssl.SSLContext | None]:
        """The context serving `group`, and with `twin` the same with the ticket key held in
        libssl (None where libssl would not take it: every ticket then goes through the
        callback); both from one set of memory files."""
        members = [self.certificates[i] for i in group]
        blobs = [blob for c in members for blob in (c.cert_pem, c.key_pem)]
        with memory_files(*blobs) as paths:
            chains = [
                (paths[2 * i], paths[2 * i + 1], c.password) for i, c in enumerate(members)
            ]

            def build(ticket_key_in_libssl: bool) -> ssl.SSLContext:
                return build_context(
                    self.selection,
                    chains,
                    self._on_sni if with_sni else None,
                    session_context=_session_context(members, self.client_trust),
                    resumption=not (with_sni and self._needs_sni),
                    tickets=self.tickets,
                    ticket_key_in_libssl=ticket_key_in_libssl,
                    client_trust=self.client_trust,
                )

            try:
                context = build(False)
            except ssl.SSLError as exc:
                raise CertificateError(f"OpenSSL rejected the certificate set: {exc}") from None
            fast: ssl.SSLContext | None = None
            if twin:
                try:
                    fast = build(True)
                except (ComplianceError, ssl.SSLError):
                    fast = None  # libssl would not take the key: every ticket via the callback
            return context, fast

    def _on_sni(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        if server_name is None:
            return
        ssl_object.sni = server_name  # type: ignore[attr-defined]
        if not self._needs_sni:
            return
        group = _group_for(self.certificates, server_name)
        if group and group != self._default_group:
            context = self._contexts.get(group)
            if context is not None:
                ssl_object.context = context


@dataclass(frozen=True)
class SourceContent:
    """The bytes of one entry's files, read once: what is validated is exactly what is served."""

    source: CertificateSource
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    password: bytes | None = field(repr=False)


@dataclass(frozen=True)
class Snapshot:
    """Every entry's file content at one moment, and a digest that identifies that content."""

    contents: tuple[SourceContent, ...]
    digest: str
    # tls.client_auth.ca, read in the same pass: a rotated CA bundle reloads like a certificate.
    client_ca: bytes | None = field(default=None, repr=False)


def read_snapshot(
    sources: Sequence[CertificateSource], client_ca: Path | None = None
) -> Snapshot:
    """Read all files once; CertificateReadError names `tls.certificates[i]` (or
    `tls.client_auth.ca`) and the file."""
    contents: list[SourceContent] = []
    hasher = hashlib.sha256()
    for index, source in enumerate(sources):
        try:
            cert_pem, key_pem, password = read_source(source)
        except OSError as exc:
            raise CertificateReadError(
                f"tls.certificates[{index}]: cannot read {exc.filename}: {exc.strerror}"
            ) from None
        for blob in (cert_pem, key_pem, password or b""):
            hasher.update(hashlib.sha256(blob).digest())
        contents.append(SourceContent(source, cert_pem, key_pem, password))
    ca_pem = None
    if client_ca is not None:
        ca_pem = read_client_ca(client_ca)
        hasher.update(b"client_ca" + hashlib.sha256(ca_pem).digest())
    return Snapshot(tuple(contents), hasher.hexdigest(), ca_pem)


def entry_error(index: int, exc: CertificateError) -> CertificateError:
    """`exc` naming the config entry it is about, as `run` (and `check`'s startup row) say it.

    Same class, so the reload watcher can still tell a half-written pair apart.
    """
    return type(exc)(f"tls.certificates[{index}]: {exc}")


def build_certificate_set(
    snapshot: Snapshot,
    server_name: str,
    selection: SuiteSelection,
    now: datetime | None = None,
    tickets: KeyRing | None = None,
    client_auth: ClientAuthConfig | None = None,
) -> CertificateSet:
    """Validate every entry of `snapshot` (and the client CA file) and build the contexts;
    errors name the entry (or `tls.client_auth.ca`).

    `tickets`: the shared session-ticket keys the contexts issue and open tickets with.
    """
    loaded: list[LoadedCertificate] = []
    for index, content in enumerate(snapshot.contents):
        try:
            loaded.append(
                validate_certificate(
                    content.source,
                    content.cert_pem,
                    content.key_pem,
                    content.password,
                    server_name,
                    selection,
                    now,
                )
            )
        except CertificateError as exc:
            raise entry_error(index, exc) from None
    trust = None if client_auth is None else client_trust(client_auth, snapshot.client_ca)
    return CertificateSet(loaded, selection, server_name, snapshot.digest, tickets, trust)


def load_certificate_set(
    sources: Sequence[CertificateSource],
    server_name: str,
    selection: SuiteSelection,
    now: datetime | None = None,
    client_auth: ClientAuthConfig | None = None,
) -> CertificateSet:
    """Read, validate and build; CertificateError names `tls.certificates[i]` and the problem."""
    ca = None if client_auth is None else ca_to_read(client_auth)
    snapshot = read_snapshot(sources, ca)
    return build_certificate_set(snapshot, server_name, selection, now, client_auth=client_auth)


# ---- the client CA file (tls.client_auth.ca) ---------------------------------------------------


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def validate_client_ca(data: bytes, path: Path) -> ClientCA:
    """Every certificate in the file must be a CA or a self-signed leaf (pinned): one that is
    neither can never be a trust anchor, so it is a mistake (an intermediate or a leaf by error).
    Read with the certificates' PEM reader, so a file caught mid-write is a rotation under way."""
    try:
        certificates = parse_chain(data)
    except CertificateError as exc:
        raise type(exc)(f"{CA_KEY}: {path}: {exc}") from None
    for index, cert in enumerate(certificates):
        if not (_is_ca(cert) or is_self_signed(cert)):
            raise CertificateError(
                f"{CA_KEY}: {path}: certificate [{index}] ({cert.subject.rfc4514_string()}) is "
                "neither a CA (basicConstraints CA:TRUE) nor self-signed, so no client "
                "certificate can chain to it; put the issuing CA here"
            )
    try:
        pem = data.decode("ascii")
    except UnicodeDecodeError:
        raise CertificateError(f"{CA_KEY}: {path}: not ASCII PEM text") from None
    return ClientCA(pem, tuple(c.subject.rfc4514_string() for c in certificates))


def read_client_ca(path: Path) -> bytes:
    """The CA file's bytes, read as the certificates are (a regular file, bounded, no blocking)."""
    try:
        return read_pem_file(path)
    except OSError as exc:
        raise CertificateReadError(f"{CA_KEY}: cannot read {path}: {exc.strerror}") from None


def load_client_ca(path: Path) -> ClientCA:
    """Read and validate the CA file; errors name `tls.client_auth.ca` and the file."""
    return validate_client_ca(read_client_ca(path), path)


def client_trust(config: ClientAuthConfig, ca_pem: bytes | None) -> ClientTrust | None:
    """The trust a context is built with, from the CA bytes a snapshot read; None when off.

    Fails closed: client_auth on without CA content never yields a context that asks nothing.
    """
    if not config.enabled:
        return None
    if config.ca is None or ca_pem is None:
        raise CertificateError(f"{CA_KEY}: not read, so client certificates cannot be verified")
    return ClientTrust(config.mode, validate_client_ca(ca_pem, config.ca), config.allow)
