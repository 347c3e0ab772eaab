"""`fopproxy check` on tls.client_auth, and `fopproxy scan` telling whether a server asks for one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.clientpki import issue_client
from tests.support.pki import CA
from tests.test_compliance_check import SERVER_NAME, failed, run_check, write_config


def client_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r["rule"] == "client_auth"]


def old_ca(folder: Path) -> Path:
    """A CA certificate that expired yesterday."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "retired clients CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - timedelta(days=400)).not_valid_after(now - timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / "old-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_off_is_one_pass_row(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """Without tls.client_auth: one PASS line saying nothing is asked."""
    pair = ca.write(tmp_path, "ecdsa", [SERVER_NAME])
    code, report = run_check(write_config(tmp_path, [pair]), capsys)
    assert code == 0
    assert [(r["status"], r["detail"]) for r in client_rows(report)] == [("PASS", "off: no client certificate asked for")]
    assert report["facts"]["client_auth"]["mode"] == "off"


def test_require_with_ca_and_allow_passes(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """A usable CA file and an allow-list: PASS, with the CA subjects and the allow summary."""
    pair = ca.write(tmp_path, "ecdsa", [SERVER_NAME])
    clients = CA("clients CA")
    (tmp_path / "clients.pem").write_bytes(clients.cert_pem)
    auth = {"mode": "require", "ca": "clients.pem", "allow": {"cn": ["payments.google.com"], "sha256": ["ab" * 32]}}
    code, report = run_check(write_config(tmp_path, [pair], client_auth=auth), capsys)
    assert code == 0
    [row] = client_rows(report)
    assert row["status"] == "PASS"
    assert "require: 1 trust anchor(s)" in row["detail"] and "CN=clients CA" in row["detail"]
    assert "1 cn, 0 dns, 0 uri, 1 sha256" in row["detail"]
    assert report["facts"]["client_auth"]["ca_names"] == ["CN=clients CA"]
    assert report["facts"]["client_auth"]["allow"]["sha256"] == [("AB:" * 32)[:-1]]


def test_leaf_in_ca_fails_check_and_startup(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """A CA-issued leaf where the CA belongs: FAIL naming tls.client_auth.ca, and run would refuse."""
    pair = ca.write(tmp_path, "ecdsa", [SERVER_NAME])
    leaf = issue_client(CA("clients CA"), tmp_path, "leaf")
    code, report = run_check(write_config(tmp_path, [pair], client_auth={"mode": "require", "ca": str(leaf.cert)}), capsys)
    assert code == 1
    assert failed(report) == {"client_auth", "startup"}
    [row] = client_rows(report)
    assert row["detail"].startswith(f"tls.client_auth.ca: {leaf.cert}: certificate [0]")
    startup = next(r for r in report["results"] if r["rule"] == "startup")
    assert "tls.client_auth.ca" in startup["detail"]


def test_expired_ca_in_a_rotation_bundle_warns(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """An expired CA left in the bundle: WARN (its clients are refused), not a failure."""
    pair = ca.write(tmp_path, "ecdsa", [SERVER_NAME])
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(old_ca(tmp_path).read_bytes() + CA("clients CA").cert_pem)
    code, report = run_check(write_config(tmp_path, [pair], client_auth={"mode": "optional", "ca": str(bundle)}), capsys)
    assert code == 0
    assert [(r["status"], r["subject"]) for r in client_rows(report)] == [
        ("PASS", "tls.client_auth"), ("WARN", "tls.client_auth.ca[0]"),
    ]


def test_public_root_without_allow_warns(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """A Mozilla root as ca with no allow-list would admit anyone it ever issued to: WARN."""
    pair = ca.write(tmp_path, "ecdsa", [SERVER_NAME])
    first = certifi.contents().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    path = tmp_path / "public.pem"
    path.write_text(first[first.index("-----BEGIN"):])
    code, report = run_check(write_config(tmp_path, [pair], client_auth={"mode": "require", "ca": str(path)}), capsys)
    assert code == 0
    statuses = [r["status"] for r in client_rows(report)]
    assert "WARN" in statuses
    assert any("anyone with a certificate" in r["detail"] for r in client_rows(report))


def test_check_refuses_require_without_ca_naming_the_key(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """`fopproxy check` on require without ca (and a malformed pin): exit 2, one line per key."""
    from fopproxy.cli import main

    pair = ca.write(tmp_path, "ecdsa", [SERVER_NAME])
    path = write_config(tmp_path, [pair], client_auth={"mode": "require", "allow": {"sha256": ["12:34"]}})
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tls.client_auth.ca: is required when mode is require" in err
    assert "tls.client_auth.allow.sha256[0]:" in err
