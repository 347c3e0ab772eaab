"""`fopproxy check`: each broken certificate fails for its own reason; a good dual config passes."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fopproxy.cli import main
from tests.support.pki import CA, Pair, _pem_key

SERVER_NAME = "api.example.test"
SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "compliance-report.schema.json").read_text())


def write_config(folder: Path, pairs: list[Pair], server_name: str = SERVER_NAME, **tls: Any) -> Path:
    config = {
        "listen": "127.0.0.1:8443",
        "backend": "127.0.0.1:8080",
        "server_name": server_name,
        "tls": {"certificates": [{"cert": str(p.cert), "key": str(p.key)} for p in pairs], **tls},
    }
    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    """Run `fopproxy check --json` in-process; return the exit code and the validated report."""
    code = main(["check", "-c", str(path), "--json"])
    report = json.loads(capsys.readouterr().out)
    jsonschema.validate(report, SCHEMA)
    return code, report


def failed(report: dict[str, Any]) -> set[str]:
    return {r["rule"] for r in report["results"] if r["status"] == "FAIL"}


def good_rsa(ca: CA, folder: Path) -> Pair:
    return ca.write(folder, "rsa", [SERVER_NAME], "rsa")


def test_good_dual_certificate_config_passes(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """ECDSA + RSA from a private CA: every rule passes, trust is a warning with the CA fingerprint."""
    ecdsa = ca.write(tmp_path, "ecdsa", [SERVER_NAME], "ecdsa")
    code, report = run_check(write_config(tmp_path, [ecdsa, good_rsa(ca, tmp_path)]), capsys)
    assert code == 0
    assert failed(report) == set()
    trust = [r for r in report["results"] if r["rule"] == "cert.trust"]
    fingerprint = ca.cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert [r["status"] for r in trust] == ["WARN", "WARN"]
    assert all(fingerprint in r["detail"] for r in trust)
    assert report["summary"] == {"pass": report["summary"]["pass"], "warn": 2, "fail": 0, "skip": 0, "verdict": "PASS", "exit_code": 0}
    assert [c["key"] for c in report["facts"]["certificates"]] == ["ECDSA secp256r1", "RSA 2048"]


def test_cn_mismatch_fails_names(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """A certificate without SAN whose CN is another host fails the name rule (and start-up)."""
    bad = ca.write(tmp_path, "ecdsa", [], "ecdsa", cn="other.example.test", san=False)
    code, report = run_check(write_config(tmp_path, [bad]), capsys)
    assert code == 1
    assert failed(report) == {"cert.names", "startup"}
    names = next(r for r in report["results"] if r["rule"] == "cert.names")
    assert "other.example.test" in names["detail"]


def test_wildcard_one_label_too_deep_fails(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """`*.example.test` does not cover `api.pay.example.test` (RFC 6125: one label only)."""
    wildcard = ca.write(tmp_path, "ecdsa", ["*.example.test"], "ecdsa")
    code, report = run_check(write_config(tmp_path, [wildcard], server_name="api.pay.example.test"), capsys)
    assert code == 1
    assert failed(report) == {"cert.names", "startup"}


def test_wildcard_one_label_passes(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """The same wildcard covers `api.example.test`: the name rule passes."""
    wildcard = ca.write(tmp_path, "ecdsa", ["*.example.test"], "ecdsa")
    code, report = run_check(write_config(tmp_path, [wildcard]), capsys)
    assert (code, failed(report)) == (0, set())


def test_expired_certificate_fails_validity(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """An expired leaf is a FAIL line, not a crash, even though `run` would refuse it."""
    now = datetime.now(UTC)
    expired = ca.write(tmp_path, "ecdsa", [SERVER_NAME], "ecdsa", not_before=now - timedelta(days=100), not_after=now - timedelta(days=1))
    code, report = run_check(write_config(tmp_path, [expired]), capsys)
    assert code == 1
    assert failed(report) == {"cert.validity", "startup"}
    assert "expired on" in next(r for r in report["results"] if r["rule"] == "cert.validity")["detail"]


def test_expiring_soon_is_a_warning(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """Under 30 days left: WARN with the days left, exit 0."""
    soon = ca.write(tmp_path, "ecdsa", [SERVER_NAME], "ecdsa", not_after=datetime.now(UTC) + timedelta(days=10))
    code, report = run_check(write_config(tmp_path, [soon]), capsys)
    validity = next(r for r in report["results"] if r["rule"] == "cert.validity")
    assert code == 0
    assert validity["status"] == "WARN"
    assert validity["facts"]["days_left"] in (9, 10)


def test_rsa_1024_fails_key(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """RSA 1024 fails the key rule."""
    weak = ca.write(tmp_path, "rsa", [SERVER_NAME], "rsa", rsa_bits=1024)
    code, report = run_check(write_config(tmp_path, [weak]), capsys)
    assert code == 1
    assert failed(report) == {"cert.key", "startup"}
    assert "1024 bits" in next(r for r in report["results"] if r["rule"] == "cert.key")["detail"]


def sha1_pair(ca: CA, folder: Path) -> Pair:
    """A leaf signed with SHA-1: cryptography refuses to sign that, the openssl CLI does not."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = folder / "ca.key"
    ca_key.write_bytes(_pem_key(ca.key))
    (folder / "ca.pem").write_bytes(ca.cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .sign(key, hashes.SHA256())
    )
    (folder / "leaf.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    (folder / "ext.cnf").write_text(f"subjectAltName=DNS:{SERVER_NAME}\nbasicConstraints=critical,CA:FALSE\n")
    subprocess.run(
        ["openssl", "x509", "-req", "-sha1", "-days", "60", "-in", str(folder / "leaf.csr"),
         "-CA", str(folder / "ca.pem"), "-CAkey", str(ca_key), "-set_serial", "4097",
         "-extfile", str(folder / "ext.cnf"), "-out", str(folder / "sha1.pem")],
        check=True, capture_output=True,
    )
    ca_key.unlink()
    leaf = (folder / "sha1.pem").read_bytes()
    assert x509.load_pem_x509_certificate(leaf).signature_hash_algorithm.name == "sha1"
    cert_path, key_path = folder / "sha1-chain.pem", folder / "sha1.key"
    cert_path.write_bytes(leaf + ca.cert_pem)
    key_path.write_bytes(_pem_key(key))
    return Pair(cert_path, key_path, 4097, cert_path.read_bytes(), key_path.read_bytes())


def test_sha1_signature_fails(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """A SHA-1-signed leaf fails the signature rule, and `run` refuses it for that reason."""
    code, report = run_check(write_config(tmp_path, [sha1_pair(ca, tmp_path / "sha1")]), capsys)
    assert code == 1
    assert failed(report) == {"cert.signature", "startup"}
    startup = next(r for r in report["results"] if r["rule"] == "startup")
    assert "signed with SHA1" in startup["detail"]
    assert "SHA1" in next(r for r in report["results"] if r["rule"] == "cert.signature")["detail"]


def test_key_mismatch_fails(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """A key from another pair fails the key-match rule."""
    one = ca.write(tmp_path / "a", "ecdsa", [SERVER_NAME], "ecdsa")
    other = ca.write(tmp_path / "b", "ecdsa", [SERVER_NAME], "ecdsa")
    mixed = Pair(one.cert, other.key, one.serial, one.cert_pem, other.key_pem)
    code, report = run_check(write_config(tmp_path, [mixed]), capsys)
    assert code == 1
    assert failed(report) == {"cert.key_match", "startup"}


def intermediate_chain(root: CA, folder: Path) -> tuple[bytes, bytes, bytes, bytes]:
    """(leaf, intermediate, root PEM, leaf key PEM): a leaf under an intermediate under `root`."""
    now = datetime.now(UTC)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fopproxy test intermediate")]))
        .issuer_name(root.cert.subject)
        .public_key(inter_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(inter.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(inter_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return leaf.public_bytes(pem), inter.public_bytes(pem), root.cert_pem, _pem_key(leaf_key)


def test_wrong_chain_order_fails(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """leaf, root, intermediate: the chain rule fails and names the certificate out of place."""
    leaf, inter, root, key = intermediate_chain(ca, tmp_path)
    (tmp_path / "chain.pem").write_bytes(leaf + root + inter)
    (tmp_path / "leaf.key").write_bytes(key)
    pair = Pair(tmp_path / "chain.pem", tmp_path / "leaf.key", 0, b"", b"")
    code, report = run_check(write_config(tmp_path, [pair]), capsys)
    assert code == 1
    assert failed(report) == {"cert.chain", "startup"}
    chain = next(r for r in report["results"] if r["rule"] == "cert.chain")
    assert "certificate #0" in chain["detail"]


def test_right_chain_order_with_intermediate_passes(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """leaf, intermediate, root: complete and in order."""
    leaf, inter, root, key = intermediate_chain(ca, tmp_path)
    (tmp_path / "chain.pem").write_bytes(leaf + inter + root)
    (tmp_path / "leaf.key").write_bytes(key)
    pair = Pair(tmp_path / "chain.pem", tmp_path / "leaf.key", 0, b"", b"")
    code, report = run_check(write_config(tmp_path, [pair]), capsys)
    assert (code, failed(report)) == (0, set())


def test_missing_intermediate_is_reported(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """A leaf whose issuer is in neither the file nor the Mozilla store gets a chain warning."""
    leaf, _inter, _root, key = intermediate_chain(ca, tmp_path)
    (tmp_path / "leaf.pem").write_bytes(leaf)
    (tmp_path / "leaf.key").write_bytes(key)
    pair = Pair(tmp_path / "leaf.pem", tmp_path / "leaf.key", 0, b"", b"")
    _code, report = run_check(write_config(tmp_path, [pair]), capsys)
    chain = next(r for r in report["results"] if r["rule"] == "cert.chain")
    assert chain["status"] == "WARN"
    assert "fopproxy test intermediate" in chain["detail"]


def test_tls13_profile_reports_the_restricted_suites(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """card-fop-tls13: check reports exactly the two TLS 1.3 suites the runtime would serve."""
    pair = ca.write(tmp_path, "ecdsa", [SERVER_NAME], "ecdsa")
    code, report = run_check(write_config(tmp_path, [pair], profile="card-fop-tls13"), capsys)
    assert code == 0
    assert report["facts"]["tls13_suites"] == ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"]
    tls13 = next(r for r in report["results"] if r["rule"] == "suites.tls13")
    assert tls13["status"] == "PASS"
    assert tls13["facts"]["tls13_suites"] == ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"]


def test_key_type_without_selected_suite_fails(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """An RSA certificate with only ECDSA suites selected fails key_types (run refuses it too)."""
    rsa_pair = good_rsa(ca, tmp_path)
    ecdsa = ca.write(tmp_path, "ecdsa", [SERVER_NAME], "ecdsa")
    code, report = run_check(
        write_config(tmp_path, [ecdsa, rsa_pair], ciphers=["ECDHE-ECDSA-AES128-GCM-SHA256"]), capsys
    )
    assert code == 1
    assert failed(report) == {"certificates.key_types", "startup"}


def test_unreadable_files_are_a_fail_line(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing certificate file is a FAIL naming the file; the other certificate is still judged."""
    good = ca.write(tmp_path, "ecdsa", [SERVER_NAME], "ecdsa")
    missing = Pair(tmp_path / "nope.pem", tmp_path / "nope.key", 0, b"", b"")
    code, report = run_check(write_config(tmp_path, [good, missing]), capsys)
    assert code == 1
    read = [r for r in report["results"] if r["rule"] == "cert.read"]
    assert [r["status"] for r in read] == ["PASS", "FAIL"]
    assert "nope.pem" in read[1]["detail"]


def test_unreadable_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config that cannot be parsed: exit 2 and the usual one-line config error."""
    path = tmp_path / "proxy.yaml"
    path.write_text("listen: [\n")
    assert main(["check", "-c", str(path)]) == 2
    assert "YAML syntax error" in capsys.readouterr().err
    assert main(["check", "-c", str(tmp_path / "missing.yaml")]) == 2


def test_text_table_is_aligned(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """The human table: every row's DETAIL column starts at the same offset as the header's."""
    pair = ca.write(tmp_path, "ecdsa", [SERVER_NAME], "ecdsa")
    assert main(["check", "-c", str(write_config(tmp_path, [pair]))]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("STATUS"))
    column = out[header].index("DETAIL")
    rows = out[header + 1 : out.index("", header)]
    # Six config rules, eight for the certificate (read, key_match, key, signature, validity,
    # names, chain, trust), then key-type coverage, client_auth (off), startup and the
    # native-access row.
    assert len(rows) == 18
    assert all(row[column - 2 : column] == "  " and row[column] != " " for row in rows)
    assert out[-2].startswith("PASS: ")


def test_startup_row_names_the_problem_run_stops_at(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """Expired and covering another host: both rows fail, and `run`'s one refusal is the expiry."""
    now = datetime.now(UTC).replace(microsecond=0)
    end = now - timedelta(days=1)
    pair = ca.write(tmp_path, "ecdsa", ["other.example.test"], "ecdsa", not_before=now - timedelta(days=90), not_after=end)
    code, report = run_check(write_config(tmp_path, [pair]), capsys)
    assert code == 1
    assert failed(report) == {"cert.validity", "cert.names", "startup"}
    startup = next(r for r in report["results"] if r["rule"] == "startup")
    assert startup["detail"] == (
        f"fopproxy run would refuse to start: tls.certificates[0]: {pair.cert}: expired on {end.isoformat()}"
    )


def test_startup_row_reports_an_unreadable_second_entry_first(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    """`run` reads every file before judging any, so a missing file outranks a bad first entry."""
    bad = ca.write(tmp_path, "ecdsa", ["other.example.test"], "ecdsa")
    missing = Pair(tmp_path / "nope.pem", tmp_path / "nope.key", 0, b"", b"")
    _code, report = run_check(write_config(tmp_path, [bad, missing]), capsys)
    startup = next(r for r in report["results"] if r["rule"] == "startup")
    assert startup["detail"] == (
        "fopproxy run would refuse to start: tls.certificates[1]: cannot read "
        f"{tmp_path / 'nope.pem'}: No such file or directory"
    )
