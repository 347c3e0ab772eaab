"""Certificate validation: every check a new set must pass before it is served, with typed errors."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from fopproxy import certrules
from fopproxy.certrules import certificate_names, hostname_matches
from fopproxy.certs import (
    CertificateSource,
    load_certificate_set,
    read_snapshot,
    validate_certificate,
)
from fopproxy.errors import (
    CertificateError,
    CertificateParseError,
    CertificateReadError,
    KeyMismatchError,
)
from fopproxy.policy import DEFAULT_PROFILE, PROFILES, SuiteSelection, select_suites
from tests.support.pki import CA, _pem_key

HOST = "api.pay.example.com"
ALL = select_suites(PROFILES[DEFAULT_PROFILE], ())
ECDSA_ONLY = select_suites(
    PROFILES[DEFAULT_PROFILE], ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305")
)
SOURCE = CertificateSource(Path("/tls/leaf.pem"), Path("/tls/leaf.key"))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pems(ca: CA, names: list[str], **kwargs: object) -> tuple[bytes, bytes]:
    cert, key = ca.issue(names, **kwargs)  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem, _pem_key(key)


def _validate(
    cert_pem: bytes, key_pem: bytes, host: str = HOST, selection: SuiteSelection = ALL
) -> None:
    validate_certificate(SOURCE, cert_pem, key_pem, None, host, selection)


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("api.pay.example.com", "api.pay.example.com", True),
        ("API.pay.example.com.", "api.pay.example.com", True),
        ("*.pay.example.com", "api.pay.example.com", True),
        ("*.pay.example.com", "pay.example.com", False),
        ("*.pay.example.com", "a.b.pay.example.com", False),
        ("*.example.com", "api.pay.example.com", False),
        ("a*.pay.example.com", "api.pay.example.com", False),
        ("api.*.example.com", "api.pay.example.com", False),
        ("*.com", "example.com", False),
        ("other.pay.example.com", "api.pay.example.com", False),
    ],
)
def test_hostname_matching_follows_rfc6125(pattern: str, host: str, expected: bool) -> None:
    """A wildcard is a whole left-most label standing for exactly one label, never a suffix."""
    assert hostname_matches(pattern, host) is expected


def test_san_wins_over_common_name(ca: CA) -> None:
    """With a SAN present the CN is ignored; without one the CN is the name (legacy rule)."""
    with_san, _ = ca.issue(["other.example.com"], cn=HOST)
    assert certificate_names(with_san) == ("other.example.com",)
    cn_only, _ = ca.issue([HOST], san=False)
    assert certificate_names(cn_only) == (HOST,)


def test_valid_ecdsa_and_rsa_pass(ca: CA, rsa_key: rsa.RSAPrivateKey) -> None:
    """The normal case: a covering, current chain, leaf first, with its own key."""
    _validate(*_pems(ca, [HOST]))
    _validate(*_pems(ca, [HOST], key=rsa_key))
    _validate(*_pems(ca, ["*.pay.example.com"]))


def test_wildcard_certificate_must_cover_server_name(ca: CA) -> None:
    """`*.pay.example.com` is refused for the bare `pay.example.com` and for two labels deep."""
    cert_pem, key_pem = _pems(ca, ["*.pay.example.com"])
    for host in ("pay.example.com", "a.b.pay.example.com"):
        with pytest.raises(CertificateError, match="does not cover server_name"):
            _validate(cert_pem, key_pem, host)


def test_key_mismatch_is_a_typed_error(ca: CA) -> None:
    """A key from another certificate raises KeyMismatchError, which the reload grace relies on."""
    cert_pem, _ = _pems(ca, [HOST])
    _, other_key = _pems(ca, [HOST])
    with pytest.raises(KeyMismatchError, match="does not match"):
        _validate(cert_pem, other_key)


def test_expired_and_not_yet_valid_are_refused(ca: CA) -> None:
    now = datetime.now(UTC)
    expired = _pems(ca, [HOST], not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))
    with pytest.raises(CertificateError, match="expired on") as failure:
        _validate(*expired)
    assert not isinstance(failure.value, KeyMismatchError | CertificateParseError)
    future = _pems(ca, [HOST], not_before=now + timedelta(days=1))
    with pytest.raises(CertificateError, match="not valid before"):
        _validate(*future)


def test_small_rsa_and_disallowed_curve_are_refused(ca: CA) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CertificateError, match="RSA key has 1024 bits, at least 2048"):
        _validate(*_pems(ca, [HOST], key=small))
    with pytest.raises(CertificateError, match="curve not allowed"):
        _validate(*_pems(ca, [HOST], key=ec.generate_private_key(ec.SECP521R1())))


def test_key_type_needs_a_selected_suite(ca: CA, rsa_key: rsa.RSAPrivateKey) -> None:
    """An RSA certificate under an ECDSA-only `ciphers` list could never be negotiated."""
    with pytest.raises(CertificateError, match="no selected suite uses one"):
        _validate(*_pems(ca, [HOST], key=rsa_key), selection=ECDSA_ONLY)


def test_chain_order_is_checked(ca: CA) -> None:
    """An intermediate that did not sign the certificate before it is refused, naming the fix."""
    cert, key = ca.issue([HOST])
    leaf_pem = cert.public_bytes(serialization.Encoding.PEM)
    stranger = CA("someone else's CA")
    with pytest.raises(CertificateError, match="put the leaf first"):
        _validate(leaf_pem + stranger.cert_pem, _pem_key(key))
    _validate(leaf_pem, _pem_key(key))  # a leaf alone is fine (the client may have the CA)


@pytest.mark.parametrize(
    "cut",
    ["empty", "mid-leaf", "leaf-end-partial", "mid-second", "in-last-end-line"],
)
def test_truncated_certificate_is_a_parse_error(ca: CA, cut: str) -> None:
    """A file caught mid-write is a CertificateParseError, even where the leaf alone would parse."""
    cert_pem, key_pem = _pems(ca, [HOST])
    leaf_end = cert_pem.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
    data = {
        "empty": b"",
        "mid-leaf": cert_pem[: leaf_end // 2],
        "leaf-end-partial": cert_pem[: leaf_end + 12],
        "mid-second": cert_pem[: leaf_end + 200],
        "in-last-end-line": cert_pem[:-8],
    }[cut]
    with pytest.raises(CertificateParseError):
        _validate(data, key_pem)


def test_truncated_or_garbage_key_is_a_parse_error(ca: CA) -> None:
    cert_pem, key_pem = _pems(ca, [HOST])
    for data in (b"", key_pem[: len(key_pem) // 2], b"not a key\n"):
        with pytest.raises(CertificateParseError):
            _validate(cert_pem, data)


def test_errors_name_the_entry_and_keep_their_type(tmp_path: Path, ca: CA) -> None:
    """load_certificate_set prefixes `tls.certificates[i]` without losing the error class."""
    good = ca.write(tmp_path, "good", [HOST])
    bad = ca.write(tmp_path, "bad", [HOST])
    other = ca.write(tmp_path, "other", [HOST])
    bad.key.write_bytes(other.key_pem)
    sources = [CertificateSource(good.cert, good.key), CertificateSource(bad.cert, bad.key)]
    with pytest.raises(KeyMismatchError, match=r"^tls\.certificates\[1\]: key .* does not match"):
        load_certificate_set(sources, HOST, ALL)
    bad.key.unlink()
    with pytest.raises(CertificateReadError, match=r"^tls\.certificates\[1\]: cannot read"):
        load_certificate_set(sources, HOST, ALL)


def test_snapshot_digest_follows_content_only(tmp_path: Path, ca: CA) -> None:
    """Rewriting identical bytes keeps the digest; any changed byte changes it."""
    pair = ca.write(tmp_path, "leaf", [HOST])
    sources = [CertificateSource(pair.cert, pair.key)]
    first = read_snapshot(sources).digest
    pair.cert.write_bytes(pair.cert_pem)
    assert read_snapshot(sources).digest == first
    pair.cert.write_bytes(pair.cert_pem + b"\n")
    assert read_snapshot(sources).digest != first
    built = load_certificate_set(sources, HOST, ALL)
    assert built.digest == read_snapshot(sources).digest


def test_malformed_extension_is_a_certificate_error(ca: CA) -> None:
    """A SAN that is not valid DER (parsed lazily by cryptography) is reported, not a traceback."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x01\x02"),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    with pytest.raises(CertificateError, match="cannot be parsed"):
        _validate(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def test_first_problem_in_the_usual_order_is_the_one_reported(ca: CA) -> None:
    """With several problems, the key comes before the dates and the dates before the names."""
    now = datetime.now(UTC)
    past = {"not_before": now - timedelta(days=90), "not_after": now - timedelta(days=1)}
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CertificateError, match=r"^/tls/leaf\.pem: RSA key has 1024 bits, at least 2048 needed$"):
        _validate(*_pems(ca, ["other.example.com"], key=small, **past))
    with pytest.raises(CertificateError, match=r"^/tls/leaf\.pem: expired on "):
        _validate(*_pems(ca, ["other.example.com"], **past))
    cert_pem, _ = _pems(ca, [HOST], **past)
    _, other_key = _pems(ca, [HOST])
    with pytest.raises(
        KeyMismatchError,
        match=r"^key /tls/leaf\.key does not match certificate /tls/leaf\.pem \(different public keys\)$",
    ):
        _validate(cert_pem, other_key)


def test_validation_never_searches_the_root_store(ca: CA, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust is reported by check and scan only: start-up must not depend on the Mozilla bundle."""

    def no_bundle() -> tuple[x509.Certificate, ...]:
        raise AssertionError("start-up read the Mozilla root store")

    monkeypatch.setattr(certrules, "mozilla_roots", no_bundle)
    _validate(*_pems(ca, [HOST]))


def test_pem_files_that_are_not_regular_or_too_big_are_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO (no writer: open() would block), a directory and a 1 MiB + 1 file: OSError at once."""
    from fopproxy.sources import MAX_PEM_FILE_BYTES, read_pem_file

    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    big = tmp_path / "big.pem"
    big.write_bytes(b"A" * (MAX_PEM_FILE_BYTES + 1))
    for path, message in ((fifo, "not a regular file"), (tmp_path, "a directory"), (big, "larger than")):
        with pytest.raises(OSError, match=message):
            read_pem_file(path)
    assert MAX_PEM_FILE_BYTES == 1 << 20
    small = tmp_path / "ok.pem"
    small.write_bytes(b"x" * 100)
    assert read_pem_file(small) == b"x" * 100
