"""`fopproxy check -c` covers outbound entries: trust, client certificate, client policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fopproxy.cli import main
from tests.support.pki import CA

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "compliance-report.schema.json").read_text())


def _check(folder: Path, entry: dict[str, Any], capsys: pytest.CaptureFixture[str],
           **top: Any) -> tuple[int, dict[str, Any]]:
    item = {"name": "google", "listen": "127.0.0.1:9443", "connect": "vgw.googleapis.test:443"}
    item.update(entry)
    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump({"outbound": [item], **top}))
    code = main(["check", "-c", str(path), "--json"])
    report = json.loads(capsys.readouterr().out)
    jsonschema.validate(report, SCHEMA)
    return code, report


def _by_rule(report: dict[str, Any], subject: str = "outbound[0]") -> dict[str, dict[str, Any]]:
    return {r["rule"]: r for r in report["results"] if r["subject"] == subject}


def test_outbound_only_config_passes_with_mozilla_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _check(tmp_path, {}, capsys)
    assert code == 0
    rules = _by_rule(report)
    assert rules["outbound.trust"]["status"] == "PASS"
    assert rules["outbound.trust"]["detail"].startswith("mozilla: ")
    assert not _by_rule(report, "outbound[0].client_certificate")  # none configured
    policy = rules["outbound.client_policy"]["detail"]
    assert policy.startswith("offers TLSv1_2..TLSv1_2 with ECDHE-ECDSA-AES128-GCM-SHA256, ")
    assert rules["startup"]["status"] == "PASS"
    assert report["facts"]["outbound"][0]["server_name"] == "vgw.googleapis.test"


def test_expired_client_certificate_and_unreadable_trust_fail(
    tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    old = ca.write(tmp_path, "client", ["p.test"], not_before=now - timedelta(days=9),
                   not_after=now - timedelta(days=1))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    code, report = _check(tmp_path, {"trust": "ca.pem",
                                     "client_certificate": {"cert": "client.pem", "key": "client.key"}}, capsys)
    assert code == 1
    rules = _by_rule(report)
    assert rules["outbound.trust"]["status"] == "PASS"
    client = _by_rule(report, "outbound[0].client_certificate")  # the served ones' rule rows
    assert client["cert.validity"]["status"] == "FAIL"
    assert client["cert.validity"]["detail"].startswith("expired on")
    assert client["cert.key_match"]["status"] == "PASS"
    assert client["cert.names"]["status"] == "SKIP"  # a client certificate covers no server name
    assert rules["startup"]["status"] == "FAIL"
    assert f"outbound[0].client_certificate: {old.cert}: expired on" in rules["startup"]["detail"]
    (tmp_path / "ca.pem").write_text("garbage\n")
    code, report = _check(tmp_path, {"trust": "ca.pem"}, capsys)
    assert code == 1
    assert _by_rule(report)["outbound.trust"]["status"] == "FAIL"


def test_inbound_report_gains_outbound_lines(tmp_path: Path, ca: CA, capsys: pytest.CaptureFixture[str]) -> None:
    pair = ca.write(tmp_path, "ecdsa", ["api.example.test"])
    code, report = _check(
        tmp_path, {}, capsys, listen="127.0.0.1:8443", backend="127.0.0.1:8080",
        server_name="api.example.test", tls={"certificates": [{"cert": str(pair.cert), "key": str(pair.key)}]},
    )
    subjects = {r["subject"] for r in report["results"]}
    assert {"tls.certificates[0]", "outbound[0]"} <= subjects
    assert code == 0
