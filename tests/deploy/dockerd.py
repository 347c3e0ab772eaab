"""A private Docker daemon for the container tests, and the base image they build on.

The daemon gets its own socket, exec root and pid file (so it never touches a system dockerd) and
no bridge or iptables rules (containers use the host network or none). Its data root and the
debootstrapped base are cached under CACHE, so later runs skip the minutes of debootstrap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.proxy import stop_process

CACHE = Path(os.environ.get("FOPPROXY_TEST_CACHE", "/var/cache/fopproxy-test"))
DEBIAN_MIRROR = os.environ.get("FOPPROXY_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the base must hold: the Dockerfile only needs python3 and its venv module.
BASE_SUITE, BASE_PACKAGES = "bookworm", ("python3", "python3-venv")


class DaemonUnavailable(Exception):
    """dockerd cannot run here (not root, not installed, or it exits at start)."""


class Docker:
    """A running private dockerd and a client bound to its socket."""

    def __init__(self, dockerd: str, client: str, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "docker.sock"
        self.pidfile = workdir / "docker.pid"
        self.log_path = workdir / "dockerd.log"
        self.client = client
        self.data_root = CACHE / "docker"
        self.data_root.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                dockerd,
                "--data-root", str(self.data_root),
                "--exec-root", str(workdir / "exec"),
                "-H", f"unix://{self.socket}",
                "--pidfile", str(self.pidfile),
                "--bridge=none", "--iptables=false", "--ip6tables=false",
            ],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise DaemonUnavailable(f"dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.socket.exists() and self.run("version", check=False, timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonUnavailable(f"dockerd not answering after 90 s: {self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 8) -> str:
        self._log.flush()
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def run(self, *args: str, check: bool = True, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        result = subprocess.run(
            [self.client, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False, **kwargs
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def inspect(self, what: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.run("inspect", what).stdout)
        return data[0]

    def has_image(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False, timeout=30).returncode == 0

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 30 s; then unmount what it left under its exec root."""
        stop_process(self.proc, timeout=30, kill_after=10)
        self._log.close()
        exec_root = str(self.workdir / "exec")
        with Path("/proc/mounts").open() as mounts:
            leftovers = [line.split()[1] for line in mounts if line.split()[1].startswith(exec_root)]
        for mountpoint in sorted(leftovers, reverse=True):
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True, timeout=30)


@contextlib.contextmanager
def cache_lock(timeout: float = 900) -> Iterator[None]:
    """One private daemon per data root at a time (two test runs on one machine queue here)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{CACHE}/lock held for {timeout} s by another test run") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def private_docker() -> Iterator[Docker]:
    if os.geteuid() != 0:
        raise DaemonUnavailable(f"dockerd needs root here (no rootless setup); running as uid {os.geteuid()}")
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DaemonUnavailable("dockerd is not installed (Debian package docker.io)")
    # The client shipped with this dockerd, so API versions match.
    client = str(Path(dockerd).with_name("docker")) if Path(dockerd).with_name("docker").exists() else shutil.which("docker")
    if client is None:
        raise DaemonUnavailable("no docker client next to dockerd or on PATH")
    # A short path: containerd's socket lives under the exec root, and socket paths max out at 108.
    workdir = Path(tempfile.mkdtemp(prefix="fpd-", dir="/tmp"))
    try:
        with cache_lock():
            docker = Docker(dockerd, client, workdir)
            try:
                yield docker
            finally:
                docker.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def base_image(docker: Docker) -> str:
    """A local python3 base (debootstrap + docker import), since no registry is reachable.

    Keyed by the month: a rebuild a month keeps security updates coming without paying for
    debootstrap on every run.
    """
    key = f"{BASE_SUITE}-{datetime.now(UTC):%Y%m}"
    ref = f"fopproxy-test-base:{key}"
    if docker.has_image(ref):
        return ref
    for tag in docker.run("images", "fopproxy-test-base", "--format", "{{.Tag}}").stdout.split():
        docker.run("rmi", f"fopproxy-test-base:{tag}", check=False)
    tarball = CACHE / f"base-{key}.tar"
    if not tarball.exists():
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            raise AssertionError("debootstrap is not installed (Debian package debootstrap)")
        for old in CACHE.glob("base-*.tar"):
            old.unlink()
        with tempfile.TemporaryDirectory(prefix="fopproxy-rootfs-", dir=CACHE) as root:
            result = subprocess.run(
                [debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE, root, DEBIAN_MIRROR],
                capture_output=True, text=True, timeout=1200, check=False,
            )
            assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (Path(root) / junk).glob("*"):
                    if path.is_file():
                        path.unlink()
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", root, "-cf", str(partial), "."], check=True, timeout=600)
            partial.rename(tarball)
    with tarball.open("rb") as data:
        docker.run("import", "-", ref, stdin=data, timeout=600)
    return ref
