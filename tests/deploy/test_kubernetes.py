"""The Kubernetes example: it renders with kustomize and every object passes its API schema."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    CRD_VALIDATE_DIR,
    IN_CI,
    KUBERNETES,
    KUSTOMIZATIONS,
    find,
    fopproxy_container,
    kustomize_build,
    require_tool,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (test extra)")

# Oldest Kubernetes the example targets (the native preStop `sleep` action is on by default from
# 1.30) and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CORE_GROUPS = ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "autoscaling/v2")


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda p: p.relative_to(KUBERNETES).as_posix())
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return kustomize_build(request.param)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_match_the_kubernetes_schemas(rendered: list[dict[str, Any]], version: str) -> None:
    """Every built-in object validates strictly (unknown fields are errors) against the API schema."""
    core = [d for d in rendered if d["apiVersion"] in CORE_GROUPS]
    assert {d["kind"] for d in core} >= {"Deployment", "Service", "ConfigMap"}
    for doc in core:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message} at {list(exc.path)}")


def test_custom_resources_match_their_crd_schemas(rendered: list[dict[str, Any]]) -> None:
    """ServiceMonitor, PrometheusRule and Certificate validate against prometheus-operator's and
    cert-manager's CRD schemas (the @kubernetes-models npm packages)."""
    node = require_tool("node")
    if not (CRD_VALIDATE_DIR / "node_modules").is_dir():
        message = f"CRD validators not installed in {CRD_VALIDATE_DIR} (.ci/setup.d/40-deploy.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    custom = [d for d in rendered if d["apiVersion"] not in CORE_GROUPS]
    assert custom, "the example has custom resources (ServiceMonitor, PrometheusRule)"
    result = subprocess.run(
        [node, str(Path(__file__).with_name("crd_validate.mjs")), str(CRD_VALIDATE_DIR)],
        input=json.dumps(custom), capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_crd_validator_rejects_a_broken_resource() -> None:
    """The CRD check is live: a PrometheusRule rule without expr is refused."""
    node = require_tool("node")
    if not (CRD_VALIDATE_DIR / "node_modules").is_dir():
        pytest.skip(f"CRD validators not installed in {CRD_VALIDATE_DIR}")
    broken = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "x"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]},
    }
    result = subprocess.run(
        [node, str(Path(__file__).with_name("crd_validate.mjs")), str(CRD_VALIDATE_DIR)],
        input=json.dumps([broken]), capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1 and "expr" in result.stdout


def test_every_manifest_is_part_of_a_kustomization() -> None:
    """No YAML under deploy/kubernetes escapes rendering (and so validation)."""
    referenced: set[Path] = set()
    for directory in KUSTOMIZATIONS:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        referenced.add(directory / "kustomization.yaml")
        for entry in kustomization.get("resources", []):
            referenced.add((directory / entry).resolve())
        for generator in kustomization.get("configMapGenerator", []):
            referenced.update((directory / f).resolve() for f in generator.get("files", []))
    files = {p.resolve() for p in KUBERNETES.rglob("*.y*ml")}
    assert files - {p.resolve() for p in referenced} == set()


def test_sidecar_is_locked_down(rendered: list[dict[str, Any]]) -> None:
    """Both containers run non-root, read-only, without privilege escalation or capabilities."""
    pod = find(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "add" not in sc["capabilities"], container["name"]
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], container["name"]
        assert resources["limits"]["memory"], container["name"]


def test_certificates_are_mounted_so_rotation_reaches_the_proxy(rendered: list[dict[str, Any]]) -> None:
    """kubernetes.io/tls Secrets reach fopproxy through a folder mount (a subPath mount never
    updates, which would defeat hot reload), with the standard tls.crt/tls.key keys."""
    pod = find(rendered, "Deployment")["spec"]["template"]["spec"]
    container = fopproxy_container(rendered)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        assert "subPath" not in mount and "subPathExpr" not in mount, mount
        # Only the in-memory /tmp is writable.
        assert mount.get("readOnly") is True or "emptyDir" in volumes[mount["name"]], mount
    secrets = [
        source["secret"]
        for mount in container["volumeMounts"]
        for source in volumes[mount["name"]].get("projected", {}).get("sources", [])
        if "secret" in source
    ]
    assert len(secrets) == 2, "one ECDSA and one RSA kubernetes.io/tls Secret"
    for secret in secrets:
        assert sorted(item["key"] for item in secret["items"]) == ["tls.crt", "tls.key"]


def test_probes_use_the_health_endpoints_on_the_metrics_port(rendered: list[dict[str, Any]]) -> None:
    """Liveness asks /healthz and readiness /readyz, both on the named metrics port."""
    container = fopproxy_container(rendered)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports) == {"https", "metrics"}


def test_network_policy_admits_only_monitoring_to_the_metrics_port(rendered: list[dict[str, Any]]) -> None:
    """The pod is isolated for ingress: TLS from anywhere, metrics only from the monitoring namespace."""
    policy = find(rendered, "NetworkPolicy")["spec"]
    pod = find(rendered, "Deployment")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {port["port"]: rule.get("from") for rule in policy["ingress"] for port in rule["ports"]}
    assert by_port == {
        "https": None,  # no `from`: every source
        "metrics": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    }
    # The named ports exist on the fopproxy container, so the policy cannot silently match nothing.
    ports = {p["name"] for p in fopproxy_container(rendered)["ports"]}
    assert set(by_port) == ports


def test_cert_manager_overlay_issues_both_key_types() -> None:
    """The overlay's Certificates fill exactly the Secrets the pod mounts, one ECDSA, one RSA,
    with the public hostname as CN (Google checks the CN)."""
    docs = kustomize_build(KUBERNETES / "overlays" / "cert-manager")
    certificates = [d for d in docs if d["kind"] == "Certificate"]
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    mounted = {
        source["secret"]["name"]
        for volume in pod["volumes"]
        for source in volume.get("projected", {}).get("sources", [])
        if "secret" in source
    }
    assert {c["spec"]["secretName"] for c in certificates} == mounted
    assert sorted(c["spec"]["privateKey"]["algorithm"] for c in certificates) == ["ECDSA", "RSA"]
    config = yaml.safe_load(find(docs, "ConfigMap")["data"]["proxy.yaml"])
    for certificate in certificates:
        assert certificate["spec"]["commonName"] == config["server_name"]
        assert config["server_name"] in certificate["spec"]["dnsNames"]
