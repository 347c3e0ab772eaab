"""Network faults inside a network namespace this test creates (never the host's loopback):
packet loss (nftables), a rate limit (tbf) and added latency (a userspace delay relay).

Needs root and `ip netns`; skips with the reason otherwise. This kernel has no netem, hence
nftables `numgen random` for loss and a userspace relay for latency.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TLSFiles
from tests.support.proxy import REPO, fopproxy_env


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace with its loopback up; deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if not shutil.which("ip"):
        pytest.skip("iproute2 (ip) is not installed")
    name = f"fopx-{uuid.uuid4().hex[:8]}"
    created = _run("ip", "netns", "add", name)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        up = _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        assert up.returncode == 0, up.stderr
        yield name
    finally:
        _run("ip", "netns", "del", name)


def _in_ns(ns: str, *args: str) -> None:
    done = _run("ip", "netns", "exec", ns, *args)
    if done.returncode != 0:
        pytest.skip(f"{' '.join(args[:3])} not permitted here: {done.stderr.strip()}")


def _scenario(ns: str, mode: str, folder: Path, tls_files: TLSFiles, **spec: object) -> dict:
    spec |= {"cafile": str(tls_files.cafile), "certificates": tls_files.entries()}
    (folder / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.reliability.netns_scenario", mode, str(folder)],
        capture_output=True, text=True, timeout=240, cwd=REPO, env=fopproxy_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_packet_loss_keeps_streams_byte_exact(netns: str, tmp_path: Path, tls_files: TLSFiles) -> None:
    """20% random packet loss on the namespace's loopback: 3 transfers of 128 KiB arrive intact."""
    if not shutil.which("nft"):
        pytest.skip("nftables (nft) is not installed")
    _in_ns(netns, "nft", "add", "table", "inet", "fopx")
    _in_ns(netns, "nft", "add", "chain", "inet", "fopx", "input", "{ type filter hook input priority 0; }")
    _in_ns(netns, "nft", "add", "rule", "inet", "fopx", "input", "numgen", "random", "mod", "100", "<", "20", "drop")
    result = _scenario(netns, "loss", tmp_path, tls_files, size=128 * 1024, count=3,
                       timeouts={"handshake": 60, "connect": 30, "idle": 60, "drain": 5})
    counters = _run("ip", "netns", "exec", netns, "nft", "list", "ruleset").stdout
    print(f"20% loss: intact {result['intact']}, seconds {result['seconds']}, reasons {result['log_reasons']}")
    assert all(result["intact"]) and len(result["intact"]) == 3
    assert result["log_reasons"] == ["done"] * 3
    assert "drop" in counters


def test_rate_limit_keeps_streams_byte_exact(netns: str, tmp_path: Path, tls_files: TLSFiles) -> None:
    """A 16 Mbit/s tbf on the namespace's loopback: 1 MiB echoes intact, visibly slowed."""
    # tbf drops any packet larger than its burst, and loopback's 64 KiB MTU (GSO) exceeds it.
    _in_ns(netns, "ip", "link", "set", "lo", "mtu", "1500")
    _in_ns(netns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "16mbit", "burst", "32kb", "latency", "400ms")
    result = _scenario(netns, "rate", tmp_path, tls_files, size=1024 * 1024, count=2,
                       timeouts={"handshake": 10, "connect": 5, "idle": 30, "drain": 5})
    print(f"16 Mbit/s: intact {result['intact']}, seconds {result['seconds']}")
    assert all(result["intact"])
    # 1 MiB crosses loopback four times (client->proxy->backend->proxy->client): >= ~2 s at 16 Mbit/s.
    assert min(result["seconds"]) > 1.0
    assert result["log_reasons"] == ["done"] * 2


@pytest.mark.parametrize(("handshake_timeout", "expect_ok"), [(1, False), (10, True)])
def test_latency_against_the_handshake_timeout(netns: str, tmp_path: Path, tls_files: TLSFiles, handshake_timeout: int, expect_ok: bool) -> None:
    """500 ms each way (the proxy sees the client's Finished ~1.5 s after accept): a 1 s handshake
    timeout closes it, a 10 s one lets it through and the transfer is intact."""
    result = _scenario(netns, "latency", tmp_path, tls_files, size=256 * 1024, delay=0.5,
                       timeouts={"handshake": handshake_timeout, "connect": 5, "idle": 30, "drain": 5})
    outcome, seconds = result["handshake"]
    print(f"latency 500ms, handshake timeout {handshake_timeout}s: handshake {outcome} in {seconds:.2f}s; "
          f"transfer intact {result['intact']} in {result['seconds']}s; reasons {result['log_reasons']}")
    if expect_ok:
        assert outcome == "ok"
        assert all(result["intact"])
        assert "done" in result["log_reasons"]
    else:
        assert outcome.startswith("failed")
        assert "handshake_error:timeout" in result["log_reasons"]
