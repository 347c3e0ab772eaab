"""The PrometheusRule's alerts: valid for promtool, behaving as intended, same as deploy/prometheus/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    KUBERNETES,
    PROMETHEUS_DIR,
    find,
    kustomize_build,
    prometheus_rules_file,
    require_tool,
)

# promtool unit tests of the standalone rules (deploy/prometheus/), run here on the
# PrometheusRule's copy.
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"


@pytest.fixture(scope="module")
def rule_groups() -> dict[str, Any]:
    """The rendered PrometheusRule's spec: a Prometheus rules file's content."""
    spec: dict[str, Any] = find(kustomize_build(KUBERNETES / "base"), "PrometheusRule")["spec"]
    return spec


def _write_rules(folder: Path, groups: dict[str, Any]) -> Path:
    path = folder / "fopproxy-rules.yml"
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return path


def test_promtool_accepts_the_rules(rule_groups: dict[str, Any], tmp_path: Path) -> None:
    """`promtool check rules` parses every expression and template."""
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(_write_rules(tmp_path, rule_groups))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in rule_groups["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_alerts_fire_when_they_should(rule_groups: dict[str, Any], tmp_path: Path) -> None:
    """`promtool test rules` with deploy/prometheus/'s unit tests, on the PrometheusRule's copy:
    each alert fires on a bad series (after its `for`) and stays quiet on a healthy one."""
    promtool = require_tool("promtool")
    if not RULE_TESTS.exists():
        pytest.skip(f"no promtool unit tests ({RULE_TESTS.relative_to(PROMETHEUS_DIR.parent.parent)}) in this checkout")
    (rule_file,) = yaml.safe_load(RULE_TESTS.read_text())["rule_files"]
    (tmp_path / rule_file).write_text(yaml.safe_dump(rule_groups, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The promtool check is live: a syntax error in an expression fails it."""
    promtool = require_tool("promtool")
    broken = {"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "rate(fopproxy_x[5m]"}]}]}
    result = subprocess.run(
        [promtool, "check", "rules", str(_write_rules(tmp_path, broken))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0


def test_prometheus_rule_equals_the_standalone_rules_file(rule_groups: dict[str, Any]) -> None:
    """Kubernetes and plain Prometheus users get the same alerts (deploy/prometheus/)."""
    path = prometheus_rules_file()
    if path is None:
        pytest.skip("deploy/prometheus/ has no rules file (with top-level `groups`) in this checkout")
    assert yaml.safe_load(path.read_text())["groups"] == rule_groups["groups"]
