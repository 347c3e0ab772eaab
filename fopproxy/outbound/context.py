"""The outbound client context: compliant by construction, like the server's (tls.py).

Pure policy (`ClientPolicy`, from the profile's suite selection), a pure build
(`build_client_context`) and a fail-closed self-check (`verify_client_context`) run on every
context before it is used: it offers only the profile's suites, TLS >= 1.2, always verifies the
chain and the hostname. Nothing in the config can switch verification off; there is no fallback.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from dataclasses import dataclass

from fopproxy import native
from fopproxy.certrules import hostname_matches
from fopproxy.errors import ComplianceError
from fopproxy.policy import SuiteSelection
from fopproxy.tls import offered_suites, restrict_tls13_suites

# Renegotiation and compression are off toward the server as toward our clients. Session tickets
# stay on: on a client they only let us resume (the server owns and rotates the ticket keys).
CLIENT_REQUIRED_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


@dataclass(frozen=True)
class ClientPolicy:
    """What an outbound client offers and demands; data only."""

    minimum_version: ssl.TLSVersion
    maximum_version: ssl.TLSVersion
    tls12: tuple[str, ...]
    tls13: tuple[str, ...]
    groups: tuple[str, ...]

    @classmethod
    def of(cls, selection: SuiteSelection) -> ClientPolicy:
        profile = selection.profile
        tls13 = selection.tls13 if profile.maximum_version >= ssl.TLSVersion.TLSv1_3 else ()
        return cls(
            profile.minimum_version, profile.maximum_version, selection.tls12, tls13,
            profile.groups,
        )


@dataclass(frozen=True)
class ClientChain:
    """A client certificate for mutual TLS: paths OpenSSL can read, and the key's passphrase."""

    cert: str
    key: str
    password: bytes | None = None


def build_client_context(
    policy: ClientPolicy, trust_pem: str, client_chain: ClientChain | None = None
) -> ssl.SSLContext:
    """A client context offering exactly `policy`, trusting only the certificates in `trust_pem`.

    `trust_pem` is what was read and validated (the certifi bundle or the user's file), so the
    context trusts byte for byte what was checked. Any certificate of it is an anchor
    (VERIFY_X509_PARTIAL_CHAIN): a pinned server certificate works whether or not it is
    self-signed, as Go's roots pool (ghostunnel) treats it.
    """
    if "-----BEGIN CERTIFICATE-----" not in trust_pem:
        raise ComplianceError("the outbound client trusts no certificate at all")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = policy.minimum_version
    ctx.maximum_version = policy.maximum_version
    ctx.options |= CLIENT_REQUIRED_OPTIONS
    ctx.set_ciphers(":".join(policy.tls12))
    if policy.maximum_version >= ssl.TLSVersion.TLSv1_3:
        restrict_tls13_suites(ctx, policy.tls13)
    # Through libssl, as for the server (tls.build_context): an OPENSSL_CONF default must not
    # make the client offer P-521, X448 or finite-field groups.
    native.set_groups(ctx, policy.groups)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    # OpenSSL's host check: wildcards only as the whole left-most label (RFC 6125 §6.4.3).
    ctx.hostname_checks_common_name = True  # CN only where there is no SAN, as `check` reads it
    ctx.load_verify_locations(cadata=trust_pem)
    if client_chain is not None:
        ctx.load_cert_chain(client_chain.cert, client_chain.key, client_chain.password)
    verify_client_context(ctx, policy)
    return ctx


def verify_client_context(ctx: ssl.SSLContext, policy: ClientPolicy) -> None:
    """Fail closed unless the context offers exactly the policy and verifies name and chain."""
    tls12, tls13 = offered_suites(ctx)
    if tuple(tls12) != policy.tls12:
        raise ComplianceError(
            f"the outbound client would offer TLS 1.2 suites {tls12}, "
            f"expected {list(policy.tls12)}"
        )
    if policy.maximum_version >= ssl.TLSVersion.TLSv1_3 and tuple(tls13) != policy.tls13:
        raise ComplianceError(
            f"the outbound client would offer TLS 1.3 suites {tls13}, "
            f"expected {list(policy.tls13)}"
        )
    if ctx.minimum_version != ssl.TLSVersion.TLSv1_2:
        raise ComplianceError(
            f"outbound minimum protocol is {ctx.minimum_version.name}, not TLSv1_2"
        )
    if ctx.maximum_version != policy.maximum_version:
        raise ComplianceError(f"outbound maximum protocol is {ctx.maximum_version.name}")
    if ctx.verify_mode != ssl.CERT_REQUIRED or not ctx.check_hostname:
        raise ComplianceError("the outbound client must verify the chain and the hostname")
    missing = CLIENT_REQUIRED_OPTIONS & ~ctx.options
    if missing:
        raise ComplianceError(f"required TLS options are off: {ssl.Options(missing)!r}")
    if ctx.cert_store_stats()["x509_ca"] + ctx.cert_store_stats()["x509"] == 0:
        raise ComplianceError("the outbound client trusts no certificate at all")
    groups = offered_groups(ctx)
    expected = tuple(GROUP_CODES[g] for g in policy.groups)
    if groups != expected:
        raise ComplianceError(
            f"the outbound client would offer key-exchange groups {groups}, expected {expected} "
            f"({', '.join(policy.groups)})"
        )


# IANA code points of the profile's groups (RFC 8446 §4.2.7, RFC 8422).
GROUP_CODES = {"X25519": 0x001D, "P-256": 0x0017, "P-384": 0x0018}


def offered_groups(ctx: ssl.SSLContext) -> tuple[int, ...]:
    """The supported_groups a ClientHello of `ctx` carries, read from the bytes it would send.

    Python cannot ask a client context for its groups, so the context writes a ClientHello
    into memory (nothing is sent anywhere) and the extension is read back from it.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    probe = ctx.wrap_bio(incoming, outgoing, server_hostname="self-check.invalid")
    with contextlib.suppress(ssl.SSLWantReadError):
        probe.do_handshake()
    return _supported_groups(outgoing.read())


def _supported_groups(record: bytes) -> tuple[int, ...]:
    """supported_groups of one ClientHello record; ComplianceError if it cannot be read."""
    try:
        body = memoryview(record)[9:]  # record header (5), handshake type and length (4)
        pos = 2 + 32  # legacy_version, random
        pos += 1 + body[pos]  # legacy_session_id
        pos += 2 + struct.unpack_from("!H", body, pos)[0]  # cipher_suites
        pos += 1 + body[pos]  # legacy_compression_methods
        end = pos + 2 + struct.unpack_from("!H", body, pos)[0]
        pos += 2
        while pos < end:
            kind, size = struct.unpack_from("!HH", body, pos)
            if kind == 0x000A:
                count = struct.unpack_from("!H", body, pos + 4)[0] // 2
                return struct.unpack_from(f"!{count}H", body, pos + 6)
            pos += 4 + size
    except (IndexError, struct.error):
        pass
    raise ComplianceError("cannot read the key-exchange groups of the outbound ClientHello")


def peer_name_problem(peer: dict[str, object] | None, server_name: str) -> str | None:
    """A second opinion on OpenSSL's host check, with the very rule `check` uses (certs.py).

    `peer` is `SSLObject.getpeercert()`; returns why the name does not match, or None.
    """
    if not peer:
        return "the server sent no certificate"
    names = _dns_names(peer)
    if any(hostname_matches(name, server_name) for name in names):
        return None
    return f"certificate names {', '.join(names) or 'none'} do not cover {server_name}"


def _dns_names(peer: dict[str, object]) -> tuple[str, ...]:
    san = peer.get("subjectAltName") or ()
    dns = tuple(str(v) for k, v in san if k == "DNS")  # type: ignore[attr-defined]
    if dns or san:
        return dns
    common: list[str] = []
    for rdn in peer.get("subject") or ():  # type: ignore[attr-defined]
        common.extend(str(v) for k, v in rdn if k == "commonName")
    return tuple(common)
