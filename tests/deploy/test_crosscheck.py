"""Ports, paths, users and metric names agree across the code, the documented config, the
Dockerfile, the Kubernetes example and the systemd unit, so none of them can drift alone."""

from __future__ import annotations

import importlib.util
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

import fopproxy
from fopproxy.config import Config, Timeouts, load_config
from tests.conftest import ConfigFactory
from tests.deploy.support import (
    DOCKERFILE,
    KUBERNETES,
    REPO,
    SYSTEMD_UNIT,
    find,
    fopproxy_container,
    kustomize_build,
)
from tests.deploy.test_dockerfile import final, parse_dockerfile
from tests.deploy.test_systemd import read_unit
from tests.support.backends import ThreadedBackend, free_port
from tests.support.proxy import ProxyProcess, wait_for_port

CONFIG_PATH = "/etc/fopproxy/proxy.yaml"


@pytest.fixture(scope="module")
def documented() -> Config:
    """config/proxy.yaml, the documented defaults, as fopproxy itself reads it."""
    return load_config(REPO / "config" / "proxy.yaml")


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return kustomize_build(KUBERNETES / "base")


@pytest.fixture(scope="module")
def pod_config(docs: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The ConfigMap's proxy.yaml, loaded by fopproxy (unknown keys or bad values fail here),
    placed where the pod mounts it."""
    folder = tmp_path_factory.mktemp("etc-fopproxy")
    path = folder / "proxy.yaml"
    path.write_text(find(docs, "ConfigMap")["data"]["proxy.yaml"])
    return load_config(path)


@pytest.fixture(scope="module")
def dockerfile() -> list[Any]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_ports_agree(documented: Config, pod_config: Config, docs: list[dict[str, Any]], dockerfile: list[Any]) -> None:
    """TLS 8443 and metrics 9100: config defaults, pod config, container ports, Service target,
    scrape annotation, Dockerfile EXPOSE and HEALTHCHECK."""
    assert documented.metrics.listen is not None and pod_config.metrics.listen is not None
    tls, metrics = documented.listen.port, documented.metrics.listen.port
    assert (pod_config.listen.port, pod_config.metrics.listen.port) == (tls, metrics)
    container = fopproxy_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"https": tls, "metrics": metrics}
    service = {p["name"]: p for p in find(docs, "Service")["spec"]["ports"]}
    assert service["https"]["port"] == 443 and ports[service["https"]["targetPort"]] == tls
    assert ports[service["metrics"]["targetPort"]] == metrics
    assert find(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"
    annotations = find(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics)
    (expose,) = final(dockerfile, "EXPOSE")
    assert sorted(map(int, expose.args.split())) == sorted([tls, metrics])
    (health,) = final(dockerfile, "HEALTHCHECK")
    assert f"127.0.0.1:{metrics}/healthz" in health.args
    # Both listeners must be reachable from outside the pod / container.
    assert pod_config.listen.host == "0.0.0.0" and pod_config.metrics.listen.host == "0.0.0.0"


def test_backend_is_the_api_containers_loopback_address(pod_config: Config, docs: list[dict[str, Any]]) -> None:
    """fopproxy dials exactly where the API container is told to listen, on loopback."""
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    (api,) = [c for c in pod["containers"] if c["name"] != "fopproxy"]
    listen = {e["name"]: e["value"] for e in api["env"]}["LISTEN_ADDRESS"]
    assert str(pod_config.backend) == listen
    assert listen.startswith("127.")
    assert "ports" not in api, "the API must not be exposed past the proxy"


def test_config_and_certificate_paths_agree(pod_config: Config, docs: list[dict[str, Any]], dockerfile: list[Any]) -> None:
    """The default command's config path is where the pod mounts the config, and every
    certificate path in it is a file the projected volume provides."""
    (cmd,) = final(dockerfile, "CMD")
    assert json.loads(cmd.args) == ["-c", CONFIG_PATH]
    container = fopproxy_container(docs)
    assert container["args"] == ["-c", CONFIG_PATH]
    assert read_unit(SYSTEMD_UNIT)["Service"]["ExecStart"][0].endswith(f"-c {CONFIG_PATH}")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(Path(CONFIG_PATH).parent)]
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    provided = {
        str(Path(mount["mountPath"]) / item["path"])
        for source in volume["projected"]["sources"]
        for kind in ("configMap", "secret")
        if kind in source
        for item in source[kind]["items"]
    }
    assert CONFIG_PATH in provided
    assert pod_config.source is not None
    for certificate in pod_config.tls.certificates:
        for path in (certificate.cert, certificate.key):
            in_pod = Path(mount["mountPath"]) / Path(path).relative_to(pod_config.source.parent)
            assert str(in_pod) in provided, path


def test_user_ids_agree(docs: list[dict[str, Any]], dockerfile: list[Any]) -> None:
    """The image's USER is the pod's runAsUser and fsGroup (which makes the keys readable)."""
    (user,) = final(dockerfile, "USER")
    uid, _, gid = user.args.partition(":")
    context = find(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (int(uid), int(gid), int(gid))


def test_versions_agree(dockerfile: list[Any]) -> None:
    """The image label default and the example's image tag are the package version."""
    (version,) = [i for i in dockerfile if i.keyword == "ARG" and i.args.startswith("VERSION=")]
    assert version.args == f"VERSION={fopproxy.__version__}"
    kustomization = yaml.safe_load((KUBERNETES / "base" / "kustomization.yaml").read_text())
    (image,) = [i for i in kustomization["images"] if i["name"] == "fopproxy"]
    assert image["newTag"] == fopproxy.__version__


def test_shutdown_budgets_cover_the_drain(pod_config: Config, docs: list[dict[str, Any]]) -> None:
    """Kubernetes and systemd wait longer than fopproxy drains, so a rollout never cuts
    connections short."""
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    pause = fopproxy_container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pod_config.timeouts.drain + pause
    stop = int(read_unit(SYSTEMD_UNIT)["Service"]["TimeoutStopSec"][0])
    assert stop > Timeouts().drain


def test_down_alert_matches_the_servicemonitor_job(docs: list[dict[str, Any]]) -> None:
    """Series scraped through the ServiceMonitor get a job label that the target-down alert selects."""
    monitor = find(docs, "ServiceMonitor")["spec"]
    service = find(docs, "Service")["metadata"]["labels"]
    job = service[monitor["jobLabel"]]
    rules = find(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    (down,) = [r for r in rules if r["expr"].startswith("up{")]
    matcher = re.search(r'job(=~?)"([^"]+)"', down["expr"])
    assert matcher, down["expr"]
    operator, value = matcher.groups()
    assert re.fullmatch(value, job) if operator == "=~" else value == job


def referenced_metrics(docs: list[dict[str, Any]]) -> set[str]:
    rules = find(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    return {name for rule in rules for name in re.findall(r"\bfopproxy_[a-z_]+\b", rule["expr"])}


def test_alerts_use_metrics_fopproxy_exports(
    docs: list[dict[str, Any]], proxy_config: ConfigFactory, tmp_path: Path
) -> None:
    """Every fopproxy_* name in the alerts appears in a real fopproxy's /metrics."""
    names = referenced_metrics(docs)
    assert names >= {
        "fopproxy_certificate_not_after_timestamp_seconds",
        "fopproxy_tls_handshakes_total",
        "fopproxy_tls_handshake_errors_total",
        "fopproxy_backend_connect_errors_total",
    }
    if importlib.util.find_spec("fopproxy.metrics") is None:
        pytest.skip("this checkout has no metrics exposition yet (fopproxy/metrics.py)")
    metrics_port = free_port()
    with ThreadedBackend(lambda conn: None) as backend:
        config = proxy_config(backend.address, metrics={"listen": f"127.0.0.1:{metrics_port}"})
        # An outbound entry too (with a client certificate), so its families are exported.
        certificate = config["tls"]["certificates"][0]
        config["outbound"] = [{
            "listen": f"127.0.0.1:{free_port()}", "connect": f"{backend.address}",
            "server_name": "vgw.googleapis.test", "trust": certificate["cert"],
            "client_certificate": {"cert": certificate["cert"], "key": certificate["key"]},
        }]
        with ProxyProcess(tmp_path, config) as proxy:
            wait_for_port("127.0.0.1", metrics_port, proc=proxy.proc)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                exposition = response.read().decode()
    exported = set(re.findall(r"^(fopproxy_[a-z_]+)", exposition, re.MULTILINE))
    # A family with no sample yet (a counter, or a gauge such as the outbound server's
    # certificate expiry before the first call) still has its # TYPE line.
    exported |= set(re.findall(r"^# TYPE (fopproxy_[a-z_]+) (?:counter|gauge)", exposition, re.MULTILINE))
    exported |= {f"{name}_total" for name in re.findall(r"^# TYPE (fopproxy_[a-z_]+) counter", exposition, re.MULTILINE)}
    assert names <= exported, sorted(names - exported)
