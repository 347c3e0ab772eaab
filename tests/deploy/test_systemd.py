"""The systemd unit: systemd-analyze accepts it, and it is hardened and reloadable."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.support import DEPLOY, SYSTEMD_UNIT

INSTALLED_BINARY = "/opt/fopproxy/bin/fopproxy"


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections to key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not installed (package systemd)")
    return path


def unit_copy(tmp_path: Path) -> Path:
    """The unit with its ExecStart binary pointed at an executable that exists here: verify
    checks that the binary is executable, and /opt/fopproxy is a VM install path."""
    text = SYSTEMD_UNIT.read_text().replace(INSTALLED_BINARY, str(Path(sys.executable).resolve()))
    copy = tmp_path / SYSTEMD_UNIT.name
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """No error and no warning (an unknown or misspelt directive is only a warning, so stderr must
    be empty too)."""
    analyze = systemd_analyze()
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit_copy(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above is live: a typo in a directive shows up on stderr."""
    analyze = systemd_analyze()
    copy = unit_copy(tmp_path)
    copy.write_text(copy.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "NoNewPrivilege" in result.stderr


def test_exposure_score_is_low(tmp_path: Path) -> None:
    """systemd's own hardening score: at most 2.0 of 10 (lower is better)."""
    analyze = systemd_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit_copy(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if "Unknown option" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip(f"this systemd-analyze has no offline security check: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_runs_as_dedicated_user_and_reloads_with_sighup() -> None:
    """A dedicated user (created by the sysusers file), SIGHUP on reload, no restart loop on a
    bad config (exit 2), stop timeout above the default drain."""
    service = read_unit(SYSTEMD_UNIT)["Service"]
    assert service["User"] == ["fopproxy"] and service["Group"] == ["fopproxy"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["ExecStart"] == [f"{INSTALLED_BINARY} -c /etc/fopproxy/proxy.yaml"]
    assert service["RestartPreventExitStatus"] == ["2"]
    assert int(service["TimeoutStopSec"][0]) > 30
    sysusers = (DEPLOY / "systemd" / "fopproxy.sysusers").read_text()
    assert any(line.split()[:2] == ["u", "fopproxy"] for line in sysusers.splitlines())
    hardening = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "CapabilityBoundingSet": ""}
    for key, value in hardening.items():
        assert service[key] == [value], key
