"""`fopproxy cert selfsigned` writes a pair that passes `check`; `cert show` reads any chain."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fopproxy.cli import main
from tests.support.pki import CA


def make(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["cert", "selfsigned", "--out", str(tmp_path / "tls"), *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_selfsigned_pair_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str], key_type: str) -> None:
    """The pair passes check (trust only a warning), the key is 0600, the fingerprint matches."""
    out = make(tmp_path, capsys, "--name", "api.example.test", "--key-type", key_type)
    cert_path, key_path = tmp_path / "tls" / f"{key_type}.pem", tmp_path / "tls" / f"{key_type}.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert fingerprint in out
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:8443", "backend": "127.0.0.1:8080", "server_name": "api.example.test",
        "tls": {"certificates": [{"cert": str(cert_path), "key": str(key_path)}]},
    }))
    assert main(["check", "-c", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {r["rule"]: r["status"] for r in report["results"]}
    assert statuses["cert.trust"] == "WARN"
    assert {s for r, s in statuses.items() if r != "cert.trust"} == {"PASS"}
    trust = next(r for r in report["results"] if r["rule"] == "cert.trust")
    assert trust["facts"] == {"self_signed": True, "fingerprint_sha256": fingerprint}


def test_selfsigned_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run without --force leaves the existing key alone and exits 2."""
    make(tmp_path, capsys, "--name", "api.example.test")
    key = (tmp_path / "tls" / "ecdsa.key").read_bytes()
    assert main(["cert", "selfsigned", "--name", "x.example.test", "--out", str(tmp_path / "tls")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "tls" / "ecdsa.key").read_bytes() == key
    make(tmp_path, capsys, "--name", "x.example.test", "--force")
    assert (tmp_path / "tls" / "ecdsa.key").read_bytes() != key


def test_show_prints_subject_names_issuer_validity_key_fingerprint(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """cert show on a leaf + CA chain describes both certificates."""
    pair = ca.write(tmp_path, "rsa", ["api.example.test", "*.pay.example.test"], "rsa")
    assert main(["cert", "show", str(pair.cert)]) == 0
    out = capsys.readouterr().out
    leaf = x509.load_pem_x509_certificate(pair.cert_pem)
    assert "[leaf]" in out and "[chain #1]" in out
    assert "names:       api.example.test, *.pay.example.test" in out
    assert "issuer:      CN=fopproxy test CA" in out
    assert "key:         RSA 2048" in out
    assert "days left" in out
    assert leaf.fingerprint(hashes.SHA256()).hex(":").upper() in out
    assert "(self-signed)" in out  # the CA at the end


def test_show_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing or non-PEM file: one line, exit 2."""
    assert main(["cert", "show", str(tmp_path / "missing.pem")]) == 2
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert main(["cert", "show", str(tmp_path / "junk.pem")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "missing.pem" in err[0] and "junk.pem" in err[1]
