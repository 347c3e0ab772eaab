"""tls.client_auth: parsing, the CA file, the allow-list, and refusals inside a real handshake."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fopproxy.certs import client_trust, load_client_ca
from fopproxy.clientauth import (
    FAILURE_REASONS,
    AllowList,
    ClientAuthConfig,
    ClientIdentity,
    classify_failure,
    parse_client_auth,
    parse_fingerprint,
)
from fopproxy.errors import CertificateError, CertificateReadError, ComplianceError
from fopproxy.peerverify import identity_from_der
from fopproxy.policy import PROFILES, select_suites
from fopproxy.tls import build_context, verify_context
from tests.conftest import SERVER_NAME
from tests.support.clientpki import ClientCert, issue_client, self_signed_client
from tests.support.pki import CA

PROFILE_NAMES = ("card-fop", "card-fop-tls13")


def parse(raw: object, base: Path = Path("/etc/fopproxy")) -> tuple[ClientAuthConfig | None, list[str]]:
    problems: list[str] = []
    config = parse_client_auth(raw, lambda p: base / p, lambda k, m: problems.append(f"{k}: {m}"))
    return config, problems


# ---- parsing ----------------------------------------------------------------------------------


def test_absent_section_is_off() -> None:
    """No tls.client_auth: off, nothing asked of clients."""
    config, problems = parse(None)
    assert problems == []
    assert config == ClientAuthConfig()
    assert config.verify_mode == ssl.CERT_NONE


def test_full_section_parses_to_frozen_values() -> None:
    """The documented example parses; relative ca resolves; fingerprints in both spellings."""
    pin = "AB" * 32
    config, problems = parse(
        {
            "mode": "require",
            "ca": "tls/clients-ca.pem",
            "allow": {
                "cn": ["payments.google.com"],
                "dns": ["*.google.com", "Pay.Example.COM."],
                "uri": ["spiffe://google.com/payments"],
                "sha256": [":".join([pin[i : i + 2] for i in range(0, 64, 2)]), "cd" * 32],
            },
        }
    )
    assert problems == []
    assert config is not None
    assert config.mode == "require"
    assert config.verify_mode == ssl.CERT_REQUIRED
    assert config.ca == Path("/etc/fopproxy/tls/clients-ca.pem")
    assert config.allow.cn == ("payments.google.com",)
    assert config.allow.dns == ("*.google.com", "pay.example.com")
    assert config.allow.sha256 == frozenset({bytes.fromhex(pin), bytes.fromhex("cd" * 32)})


@pytest.mark.parametrize("mode", ["require", "optional"])
def test_ca_required_names_the_key(mode: str) -> None:
    """require/optional without ca: an error naming tls.client_auth.ca."""
    _, problems = parse({"mode": mode})
    assert len(problems) == 1
    assert problems[0].startswith("tls.client_auth.ca: is required when mode is " + mode)


def test_yaml_off_is_false_and_still_off() -> None:
    """YAML 1.1 reads `mode: off` as false; it still means off."""
    config, problems = parse({"mode": False})
    assert problems == [] and config is not None and config.mode == "off"


@pytest.mark.parametrize(
    ("raw", "where", "fragment"),
    [
        ({"mode": "strict", "ca": "x"}, "tls.client_auth.mode", "off, optional or require"),
        ({"mode": "require", "ca": "x", "alow": {}}, "tls.client_auth.alow", "unknown key"),
        ({"mode": "require", "ca": "x", "allow": {"sha256": ["abc"]}}, "tls.client_auth.allow.sha256[0]", "64 hex"),
        ({"mode": "require", "ca": "x", "allow": {"sha256": ["A:B" + "C" * 61]}}, "tls.client_auth.allow.sha256[0]", "byte pairs"),
        ({"mode": "require", "ca": "x", "allow": {"dns": ["f*.example.com"]}}, "tls.client_auth.allow.dns[0]", "left-most"),
        ({"mode": "require", "ca": "x", "allow": {"dns": ["a.*.example.com"]}}, "tls.client_auth.allow.dns[0]", "left-most"),
        ({"mode": "require", "ca": "x", "allow": {"dns": ["*.com"]}}, "tls.client_auth.allow.dns[0]", "two labels"),
        ({"mode": "require", "ca": "x", "allow": {"dns": ["bad_name.example.com"]}}, "tls.client_auth.allow.dns[0]", "not a valid DNS"),
        ({"mode": "require", "ca": "x", "allow": {"uri": ["no scheme"]}}, "tls.client_auth.allow.uri[0]", "absolute URI"),
        ({"mode": "require", "ca": "x", "allow": {"uri": ["http://[::1"]}}, "tls.client_auth.allow.uri[0]", "not a URI"),
        ({"mode": "require", "ca": "x", "allow": {"cn": "payments.google.com"}}, "tls.client_auth.allow.cn", "list"),
        ({"mode": "require", "ca": "x", "allow": {"cn": [7]}}, "tls.client_auth.allow.cn[0]", "string"),
        ({"allow": {"cn": ["payments.google.com"]}}, "tls.client_auth.allow", "no effect while mode is off"),
    ],
)
def test_bad_entries_are_reported_by_key(raw: object, where: str, fragment: str) -> None:
    """Each malformed entry is one problem line naming its key path and what is wrong."""
    config, problems = parse(raw)
    assert config is None
    assert len(problems) == 1, problems
    assert problems[0].startswith(where + ": ")
    assert fragment in problems[0]


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes: all of them in one pass."""
    _, problems = parse({"mode": "require", "allow": {"sha256": ["x"], "dns": ["*"]}})
    assert len(problems) == 3


def test_fingerprint_spellings() -> None:
    """Colon-separated (as `openssl x509 -fingerprint` prints) or plain hex, any case."""
    plain = "0123456789abcdef" * 4
    colons = ":".join(plain[i : i + 2] for i in range(0, 64, 2)).upper()
    assert parse_fingerprint(plain) == parse_fingerprint(colons) == bytes.fromhex(plain)


# ---- the CA file ------------------------------------------------------------------------------


def test_ca_file_checks(tmp_path: Path) -> None:
    """A CA loads; a pinned self-signed leaf loads; a CA-issued leaf, a missing file and a
    non-PEM file are refused with tls.client_auth.ca and the path."""
    ca = CA("clients CA")
    good = tmp_path / "ca.pem"
    good.write_bytes(ca.cert_pem)
    assert load_client_ca(good).subjects == ("CN=clients CA",)
    pinned = self_signed_client(tmp_path, "pinned")
    assert load_client_ca(pinned.cert).subjects == ("CN=pinned.example",)
    leaf = issue_client(ca, tmp_path, "leaf")
    with pytest.raises(CertificateError, match=r"tls\.client_auth\.ca: .*leaf\.pem: certificate \[0\].*neither a CA"):
        load_client_ca(leaf.cert)
    with pytest.raises(CertificateReadError, match=r"tls\.client_auth\.ca: cannot read .*missing\.pem"):
        load_client_ca(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not pem\n")
    with pytest.raises(CertificateError, match=r"tls\.client_auth\.ca: .*junk\.pem"):
        load_client_ca(junk)


# ---- the allow-list ---------------------------------------------------------------------------


def identity(**kwargs: object) -> ClientIdentity:
    values: dict[str, object] = {"subject": "CN=x", "common_names": (), "dns": (), "uris": (), "sha256": b"\0" * 32}
    values.update(kwargs)
    return ClientIdentity(**values)  # type: ignore[arg-type]


def test_allow_list_matching() -> None:
    """Any one of cn / dns (RFC 6125 wildcard) / uri / sha256 admits; nothing else does."""
    allow = AllowList(
        cn=("payments.google.com",), dns=("*.pay.example.com",),
        uri=("spiffe://google.com/payments",), sha256=frozenset({b"\1" * 32}),
    )
    assert allow.admits(identity(common_names=("payments.google.com",)))
    assert allow.admits(identity(dns=("api.pay.example.com",)))
    assert allow.admits(identity(uris=("spiffe://google.com/payments",)))
    assert allow.admits(identity(sha256=b"\1" * 32))
    assert not allow.admits(identity(common_names=("Payments.google.com",)))  # CN is exact
    assert not allow.admits(identity(dns=("pay.example.com", "a.b.pay.example.com")))
    assert not allow.admits(identity(uris=("spiffe://google.com/payments/x",)))
    assert not allow.admits(identity(common_names=("evil",), dns=("evil.example",)))
    assert AllowList().admits(identity())  # empty: anything that chains to ca


# ---- in a real handshake ------------------------------------------------------------------------


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = CA("clients CA")
        self.other = CA("somebody else's CA")
        self.server = CA("server CA").write(folder, "server", [SERVER_NAME])
        self.ca_file = folder / "clients-ca.pem"
        self.ca_file.write_bytes(self.ca.cert_pem)
        self.google = issue_client(self.ca, folder, "google", cn="payments.google.com",
                                   dns=("pay.google.com",), uris=("spiffe://google.com/pay",))
        self.stranger = issue_client(self.ca, folder, "stranger", cn="stranger.example")
        self.untrusted = issue_client(self.other, folder, "untrusted")
        now = datetime.now(UTC)
        self.expired = issue_client(self.ca, folder, "expired", not_before=now - timedelta(days=30),
                                    not_after=now - timedelta(days=1))
        self.future = issue_client(self.ca, folder, "future", not_before=now + timedelta(days=1))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("clientauth"))


def server_context(pki: Pki, profile: str, config: ClientAuthConfig, ca_pem: str | None = None) -> ssl.SSLContext:
    """The server context as fopproxy builds it (tls.build_context with the client trust)."""
    trust = client_trust(config, (ca_pem or pki.ca_file.read_text()).encode())
    chains = [(str(pki.server.cert), str(pki.server.key), None)]
    return build_context(select_suites(PROFILES[profile], ()), chains, None, client_trust=trust)


def handshake(server_ctx: ssl.SSLContext, client: ClientCert | None, pki: Pki) -> tuple[ssl.SSLError | None, ssl.SSLError | None, ssl.SSLObject]:
    """(server error, client error, server object) after the handshake and one client read."""
    client_ctx = ssl.create_default_context(cafile=str(pki.server.cert))
    client_ctx.load_verify_locations(cadata=pki.folder.joinpath("server.pem").read_text())
    if client is not None:
        client_ctx.load_cert_chain(str(client.cert), str(client.key))
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = server_ctx.wrap_bio(bios[0], bios[1], server_side=True)
    client_side = client_ctx.wrap_bio(bios[2], bios[3], server_hostname=SERVER_NAME)
    errors: dict[str, ssl.SSLError | None] = {"server": None, "client": None}
    for _ in range(6):
        for name, side in (("client", client_side), ("server", server)):
            if errors[name] is not None:
                continue
            try:
                side.do_handshake()
                if name == "client":
                    client_side.read(1)  # TLS 1.3: a refusal arrives after the client's Finished
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            except ssl.SSLError as exc:
                errors[name] = exc
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    return errors["server"], errors["client"], server


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize(
    ("mode", "allow", "who", "reason", "client_alert"),
    [
        ("require", AllowList(), None, "no_certificate", ("SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV13_ALERT_CERTIFICATE_REQUIRED")),
        ("require", AllowList(), "untrusted", "untrusted", ("TLSV1_ALERT_UNKNOWN_CA",)),
        ("require", AllowList(), "expired", "expired", ("SSLV3_ALERT_CERTIFICATE_EXPIRED",)),
        ("require", AllowList(), "future", "expired", ("SSLV3_ALERT_BAD_CERTIFICATE",)),
        ("require", AllowList(cn=("payments.google.com",)), "stranger", "not_allowed", ("SSLV3_ALERT_HANDSHAKE_FAILURE",)),
        ("optional", AllowList(), "untrusted", "untrusted", ("TLSV1_ALERT_UNKNOWN_CA",)),
        ("optional", AllowList(cn=("payments.google.com",)), "stranger", "not_allowed", ("SSLV3_ALERT_HANDSHAKE_FAILURE",)),
    ],
)
def test_refusals_fail_the_handshake_with_their_reason(
    pki: Pki, profile: str, mode: str, allow: AllowList, who: str | None, reason: str, client_alert: tuple[str, ...]
) -> None:
    """Each refusal fails the server's handshake (no application byte can follow), is classified
    into its bounded reason, and the client sees the alert OpenSSL sends for it."""
    config = ClientAuthConfig(mode, pki.ca_file, allow)  # type: ignore[arg-type]
    server_error, client_error, _ = handshake(server_context(pki, profile, config), getattr(pki, who) if who else None, pki)
    assert server_error is not None, "the handshake was not refused"
    assert classify_failure(server_error) == reason
    assert reason in FAILURE_REASONS
    assert client_error is not None and client_error.reason in client_alert


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize(
    ("mode", "allow", "who"),
    [
        ("require", AllowList(), "google"),
        ("require", AllowList(cn=("payments.google.com",)), "google"),
        ("require", AllowList(dns=("*.google.com",)), "google"),
        ("require", AllowList(uri=("spiffe://google.com/pay",)), "google"),
        ("require", AllowList(cn=("nobody",), uri=("spiffe://google.com/pay",)), "google"),
        ("optional", AllowList(cn=("payments.google.com",)), None),
        ("optional", AllowList(cn=("payments.google.com",)), "google"),
    ],
)
def test_admitted_clients_complete_the_handshake(
    pki: Pki, profile: str, mode: str, allow: AllowList, who: str | None
) -> None:
    """Admitted: the handshake completes and the server sees the certificate it verified."""
    config = ClientAuthConfig(mode, pki.ca_file, allow)  # type: ignore[arg-type]
    server_error, client_error, server = handshake(server_context(pki, profile, config), getattr(pki, who) if who else None, pki)
    assert (server_error, client_error) == (None, None)
    der = server.getpeercert(binary_form=True)
    if who is None:
        assert der is None
    else:
        assert der == getattr(pki, who).der
        assert identity_from_der(der).fingerprint == getattr(pki, who).fingerprint


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_pinned_self_signed_client(pki: Pki, profile: str, tmp_path: Path) -> None:
    """Pinning: the self-signed leaf in ca plus its sha256 admits it; another pin refuses it."""
    pinned = self_signed_client(tmp_path, "pinned")
    ca_pem = pinned.cert.read_text()
    good = ClientAuthConfig("require", pinned.cert, AllowList(sha256=frozenset({bytes.fromhex(pinned.sha256_hex)})))
    assert handshake(server_context(pki, profile, good, ca_pem), pinned, pki)[:2] == (None, None)
    other = ClientAuthConfig("require", pinned.cert, AllowList(sha256=frozenset({b"\2" * 32})))
    server_error, _, _ = handshake(server_context(pki, profile, other, ca_pem), pinned, pki)
    assert server_error is not None and classify_failure(server_error) == "not_allowed"


def test_unrelated_handshake_errors_are_not_client_auth(pki: Pki) -> None:
    """A protocol failure is not counted as a client-auth refusal."""
    ctx = server_context(pki, "card-fop", ClientAuthConfig("require", pki.ca_file))
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = ctx.wrap_bio(bios[0], bios[1], server_side=True)
    client = client_ctx.wrap_bio(bios[2], bios[3])
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    bios[0].write(bios[3].read())
    with pytest.raises(ssl.SSLError) as caught:
        server.do_handshake()
    assert classify_failure(caught.value) is None


def test_context_self_check_fails_closed_on_a_lost_verify_mode(pki: Pki) -> None:
    """A context whose client-certificate mode is not the configured one is refused at build."""
    trust = client_trust(ClientAuthConfig("require", pki.ca_file), pki.ca_file.read_bytes())
    ctx = server_context(pki, "card-fop", ClientAuthConfig("require", pki.ca_file))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    with pytest.raises(ComplianceError, match="client certificate mode is CERT_OPTIONAL, not CERT_REQUIRED"):
        verify_context(ctx, select_suites(PROFILES["card-fop"], ()), client_trust=trust)



def test_without_libssl_an_allow_list_fails_closed(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where libssl cannot be reached, an allow-list refuses to start (it could not be enforced);
    without one, OpenSSL's own verification still serves, and the refusal still happens."""
    from fopproxy import peerverify

    monkeypatch.setattr(peerverify, "_reach", lambda ctx: None)
    with pytest.raises(ComplianceError, match=r"tls\.client_auth\.allow cannot be enforced"):
        server_context(pki, "card-fop", ClientAuthConfig("require", pki.ca_file, AllowList(cn=("x",))))
    ctx = server_context(pki, "card-fop", ClientAuthConfig("require", pki.ca_file))
    server_error, _, _ = handshake(ctx, pki.untrusted, pki)
    assert server_error is not None and classify_failure(server_error) == "untrusted"
    assert peerverify.status() == {
        "client certificates (allow-list, CA names, refused names)":
        "unavailable: tls.client_auth.allow cannot be enforced (refused at start)",
    }
