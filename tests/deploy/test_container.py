"""The container image, built and run for real: a private dockerd, a local Debian base, wheels
built on the host (no registry or index is reachable from a build here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import fopproxy
from tests.conftest import SERVER_NAME, TLSFiles
from tests.deploy.dockerd import DaemonUnavailable, Docker, base_image, private_docker
from tests.deploy.support import DEPLOY, REPO
from tests.support.backends import ThreadedBackend, free_port, http_handler
from tests.support.pki import CA
from tests.support.proxy import client_context, tls_connect

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

IMAGE_USER = "10001:10001"
ALLOWED_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
}


def metrics_in_checkout() -> bool:
    """Whether this checkout's fopproxy serves metrics.listen (/metrics, /healthz, /readyz)."""
    return (REPO / "fopproxy" / "metrics" / "__init__.py").exists() or (REPO / "fopproxy" / "metrics.py").exists()


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    try:
        with private_docker() as daemon:
            yield daemon
    except DaemonUnavailable as exc:
        pytest.skip(f"no Docker daemon here: {exc}")


@pytest.fixture(scope="module")
def image(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image built from this checkout's Dockerfile, offline, on the local base."""
    base = base_image(docker)
    context = tmp_path_factory.mktemp("context")
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(REPO / "fopproxy", context / "fopproxy", ignore=shutil.ignore_patterns("__pycache__"))
    (context / "deploy" / "docker").mkdir(parents=True)
    shutil.copy(DEPLOY / "docker" / "constraints.txt", context / "deploy" / "docker")
    # Wheels for the base's Python (Debian bookworm: 3.11, as the host), at the pinned versions.
    wheels = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--only-binary=:all:",
         "-c", str(context / "deploy" / "docker" / "constraints.txt"), "-w", str(context / "wheels"), str(context)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert wheels.returncode == 0, wheels.stdout[-3000:] + wheels.stderr[-3000:]
    tag = f"fopproxy-test:{uuid.uuid4().hex[:12]}"
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    docker.run(
        "build", "--network", "host", "--force-rm", "-t", tag,
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "OFFLINE=1",
        "--build-arg", f"VERSION={fopproxy.__version__}", "--build-arg", f"REVISION={revision or 'unknown'}",
        str(context), timeout=900,
    )
    yield tag
    docker.run("rmi", "-f", tag, check=False)
    docker.run("image", "prune", "-f", check=False)


class Container:
    """One fopproxy container with a generated config and certificates mounted read-only."""

    def __init__(self, docker: Docker, image: str, folder: Path, ca: CA, network: str, config: dict[str, Any], *extra: str) -> None:
        self.docker = docker
        self.name = f"fopproxy-test-{uuid.uuid4().hex[:12]}"
        etc = folder / "etc"
        self.tls = TLSFiles(etc / "tls", ca)
        config = {
            "server_name": SERVER_NAME,
            "tls": {"certificates": [
                {"cert": "tls/ecdsa.pem", "key": "tls/ecdsa.key"},
                {"cert": "tls/rsa.pem", "key": "tls/rsa.key"},
            ]},
            "timeouts": {"handshake": 5, "connect": 2, "idle": 60, "drain": 10},
            **config,
        }
        (etc / "proxy.yaml").write_text(yaml.safe_dump(config))
        # The container user is not the owner: test keys must be world-readable (never do this
        # with real keys; in Kubernetes fsGroup does it).
        for path in [etc, *etc.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        folder.chmod(0o755)
        docker.run(
            "run", "-d", "--name", self.name, "--network", network, "--read-only",
            "--user", IMAGE_USER, "--tmpfs", "/tmp", "-v", f"{etc}:/etc/fopproxy:ro", *extra, image,
        )

    def logs(self) -> str:
        result = self.docker.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            state = self.docker.inspect(self.name)["State"]
            if not state["Running"]:
                raise AssertionError(f"container exited with {state['ExitCode']}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the logs after {timeout} s:\n{self.logs()}")
            time.sleep(0.2)

    def remove(self) -> None:
        self.docker.run("rm", "-f", self.name, check=False)


@pytest.fixture(scope="module")
def backend() -> Iterator[ThreadedBackend]:
    with ThreadedBackend(http_handler) as server:
        yield server


@pytest.fixture(scope="module")
def serving(docker: Docker, image: str, ca: CA, backend: ThreadedBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Container, int, int]]:
    """The image on the host network in front of a loopback backend: (container, tls, metrics)."""
    tls_port, metrics_port = free_port(), free_port()
    config: dict[str, Any] = {"listen": f"127.0.0.1:{tls_port}", "backend": backend.address}
    if metrics_in_checkout():
        config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    container = Container(docker, image, tmp_path_factory.mktemp("serving"), ca, "host", config)
    try:
        container.wait_for_log("listening on")
        yield container, tls_port, metrics_port
    finally:
        container.remove()


def test_image_metadata(docker: Docker, image: str) -> None:
    """Non-root numeric user, both ports exposed, Python healthcheck, fopproxy entrypoint with
    the documented config, OCI labels carrying the version."""
    config = docker.inspect(image)["Config"]
    assert config["User"] == IMAGE_USER
    assert set(config["ExposedPorts"]) == {"8443/tcp", "9100/tcp"}
    assert config["Entrypoint"] == ["/opt/fopproxy/bin/fopproxy"] and config["Cmd"] == ["-c", "/etc/fopproxy/proxy.yaml"]
    assert config["Healthcheck"]["Test"][0] == "CMD" and "python" in config["Healthcheck"]["Test"][1]
    assert config["Labels"]["org.opencontainers.image.version"] == fopproxy.__version__
    assert config["Labels"]["org.opencontainers.image.title"] == "fopproxy"


def test_image_carries_no_build_tools(docker: Docker, image: str) -> None:
    """No compiler, no curl, no pip: the runtime image installs and fetches nothing."""
    probe = "import shutil; print(' '.join(t for t in ('gcc', 'cc', 'make', 'curl', 'wget', 'pip', 'pip3') if shutil.which(t)))"
    result = docker.run("run", "--rm", "--network", "none", "--entrypoint", "/opt/fopproxy/bin/python", image, "-c", probe)
    assert result.stdout.strip() == ""
    versions = docker.run("run", "--rm", "--network", "none", image, "--version")
    assert versions.stdout.strip() == f"fopproxy {fopproxy.__version__}"


def test_tls_through_the_container(serving: tuple[Container, int, int], tmp_path: Path) -> None:
    """curl reaches the loopback backend through the read-only, non-root container, and the
    handshake is a compliant TLS 1.2 one."""
    container, tls_port, _ = serving
    curl = shutil.which("curl")
    assert curl, "curl (.ci/setup.d/10-core.sh)"
    result = subprocess.run(
        [curl, "-sS", "--max-time", "20", "--cacert", str(container.tls.cafile),
         "--resolve", f"{SERVER_NAME}:{tls_port}:127.0.0.1", f"https://{SERVER_NAME}:{tls_port}/"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr + container.logs()
    assert result.stdout == "hello from the backend\n"
    with tls_connect("127.0.0.1", tls_port, client_context(container.tls.cafile), SERVER_NAME) as conn:
        assert conn.version() == "TLSv1.2"
        cipher = conn.cipher()
        assert cipher is not None and cipher[0] in ALLOWED_TLS12


def test_container_runs_read_only_as_non_root(docker: Docker, serving: tuple[Container, int, int]) -> None:
    """The proxy process has uid 10001 on a read-only root filesystem."""
    container, _, _ = serving
    details = docker.inspect(container.name)
    assert details["HostConfig"]["ReadonlyRootfs"] is True
    status = Path(f"/proc/{details['State']['Pid']}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"10001"}


def test_healthz_on_the_metrics_port(serving: tuple[Container, int, int]) -> None:
    """/healthz and /readyz answer 200 on the metrics listener of the running container."""
    if not metrics_in_checkout():
        pytest.skip("this checkout's fopproxy has no metrics listener yet (fopproxy/metrics.py)")
    _, _, metrics_port = serving
    deadline = time.monotonic() + 30
    while True:
        try:
            for path in ("/healthz", "/readyz"):
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=5) as response:
                    assert response.status == 200, path
            return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_docker_healthcheck_turns_healthy(docker: Docker, image: str, ca: CA, tmp_path: Path) -> None:
    """With the image's defaults (metrics on 9100) in a network namespace of its own, Docker runs
    the image's HEALTHCHECK and marks the container healthy; with two workers, so the supervisor's
    private socket folder works on the read-only root (it lives on the /tmp tmpfs)."""
    if not metrics_in_checkout():
        pytest.skip("this checkout's fopproxy has no metrics listener yet (fopproxy/metrics.py)")
    config = {
        "listen": "0.0.0.0:8443", "backend": "127.0.0.1:8080", "metrics": {"listen": "0.0.0.0:9100"}, "workers": 2,
    }
    # Same command, checked every second instead of every 30 s.
    container = Container(docker, image, tmp_path, ca, "none", config, "--health-interval=1s", "--health-start-period=30s")
    try:
        container.wait_for_log("listening on")
        deadline = time.monotonic() + 60
        while (health := docker.inspect(container.name)["State"]["Health"])["Status"] != "healthy":
            assert health["Status"] != "unhealthy", json.dumps(health["Log"][-3:], indent=1)
            assert time.monotonic() < deadline, f"still {health['Status']} after 60 s"
            time.sleep(1)
    finally:
        container.remove()


def test_docker_stop_drains_and_exits_zero(docker: Docker, image: str, ca: CA, tmp_path: Path) -> None:
    """`docker stop` sends SIGTERM to fopproxy as PID 1; it drains and exits 0 well before the
    stop timeout would kill it."""
    config = {"listen": "0.0.0.0:8443", "backend": "127.0.0.1:8080"}
    container = Container(docker, image, tmp_path, ca, "none", config)
    try:
        container.wait_for_log("listening on")
        started = time.monotonic()
        docker.run("stop", "-t", "40", container.name, timeout=90)
        elapsed = time.monotonic() - started
        state = docker.inspect(container.name)["State"]
        assert state["ExitCode"] == 0, container.logs()
        assert elapsed < 35, f"stop took {elapsed:.1f} s: SIGTERM was not handled"
    finally:
        container.remove()
