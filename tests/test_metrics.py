"""The collector, snapshots, worker aggregation and the HTTP responder, without the proxy process."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fopproxy.certs import CertificateSource, load_certificate_set
from fopproxy.http.stats import HttpStats
from fopproxy.metrics.aggregate import WorkerAggregator, snapshot_path
from fopproxy.metrics.collector import make_registry
from fopproxy.metrics.http import MetricsHTTPProtocol, respond
from fopproxy.metrics.snapshot import MetricsSnapshot, take_snapshot
from fopproxy.outbound.collector import ClientCertificateGauge, OutboundSnapshot
from fopproxy.policy import DEFAULT_PROFILE, PROFILES, select_suites
from fopproxy.reasons import CloseReason
from fopproxy.stats import BACKEND_ERROR_REASONS, HANDSHAKE_BUCKETS, HANDSHAKE_ERROR_REASONS, Stats
from tests.conftest import SERVER_NAME, TLSFiles
from tests.support.backends import ThreadedBackend
from tests.support.memtls import opened_connection

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: bytes) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def fake_worker(tls_files: TLSFiles, stats: Stats, active: set[Any] | None = None, ready: bool = True) -> Any:
    """A Worker's read-only surface with a real, validated certificate set."""
    sources = [CertificateSource(tls_files.ecdsa.cert, tls_files.ecdsa.key), CertificateSource(tls_files.rsa.cert, tls_files.rsa.key)]
    certificates = load_certificate_set(sources, SERVER_NAME, select_suites(PROFILES[DEFAULT_PROFILE], ()))
    return SimpleNamespace(
        stats=stats,
        relay=SimpleNamespace(active=active if active is not None else set()),
        store=SimpleNamespace(current=certificates, tickets=None),
        outbound=None,
        ready=ready,
        http_stats=_one_http_request(),
    )


def _one_http_request() -> HttpStats:
    """mode: http's counters with one request, so its labelled families have a sample."""
    http = HttpStats()
    http.requests[("POST", 200)] += 1
    return http


def busy_stats() -> Stats:
    stats = Stats()
    stats.handshakes[("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")] += 5
    stats.handshakes[("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")] += 2
    stats.handshake_errors["no_shared_cipher"] += 3
    for seconds in (0.0003, 0.004, 0.004, 7.0, 30.0):
        stats.handshake_duration.observe(seconds)
    stats.connections_active = 1
    stats.connections_rejected["limit"] += 4
    stats.bytes_to_backend = 1000
    stats.bytes_to_client = 5000
    stats.backend_connect_errors["refused"] += 1
    stats.backend_connect_duration.observe(0.002)
    stats.reloads["failure"] += 1
    return stats


def test_exposition_shows_every_counter_with_its_labels(tls_files: TLSFiles) -> None:
    """Counters, gauges and certificate gauges carry the values in Stats under the public names."""
    worker = fake_worker(tls_files, busy_stats())
    samples = parse(generate_latest(make_registry(lambda: take_snapshot(worker, 1234.5))))
    assert samples[("fopproxy_tls_handshakes_total", frozenset({("version", "TLSv1.2"), ("cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")}))] == 5
    assert samples[("fopproxy_tls_handshakes_total", frozenset({("version", "TLSv1.2"), ("cipher", "ECDHE-RSA-AES128-GCM-SHA256")}))] == 2
    assert samples[("fopproxy_tls_handshake_errors_total", frozenset({("reason", "no_shared_cipher")}))] == 3
    assert samples[("fopproxy_connections_active", frozenset())] == 1
    assert samples[("fopproxy_connections_rejected_total", frozenset({("reason", "limit")}))] == 4
    assert samples[("fopproxy_bytes_total", frozenset({("direction", "to_backend")}))] == 1000
    assert samples[("fopproxy_bytes_total", frozenset({("direction", "to_client")}))] == 5000
    assert samples[("fopproxy_backend_connect_errors_total", frozenset({("reason", "refused")}))] == 1
    assert samples[("fopproxy_certificate_reloads_total", frozenset({("result", "failure")}))] == 1
    # No reload yet: the start-up load is the last success.
    assert samples[("fopproxy_certificate_last_reload_success_timestamp_seconds", frozenset())] == 1234.5
    ecdsa = frozenset({("name", SERVER_NAME), ("serial", format(tls_files.ecdsa.serial, "x")), ("key_type", "ecdsa")})
    rsa = frozenset({("name", SERVER_NAME), ("serial", format(tls_files.rsa.serial, "x")), ("key_type", "rsa")})
    not_after = worker.store.current.certificates[0].not_after.timestamp()
    assert samples[("fopproxy_certificate_not_after_timestamp_seconds", ecdsa)] == not_after
    assert ("fopproxy_certificate_not_before_timestamp_seconds", rsa) in samples
    assert ("fopproxy_build_info", frozenset()) not in samples  # build_info always has labels
    assert any(name == "fopproxy_build_info" for name, _ in samples)


def test_fixed_reasons_are_exported_at_zero_before_any_event(tls_files: TLSFiles) -> None:
    """Alerts need a series before the first error: every reason of the fixed sets is there at 0."""
    samples = parse(generate_latest(make_registry(lambda: take_snapshot(fake_worker(tls_files, Stats()), 0.0))))
    for reason in HANDSHAKE_ERROR_REASONS:
        assert samples[("fopproxy_tls_handshake_errors_total", frozenset({("reason", reason)}))] == 0
    for reason in BACKEND_ERROR_REASONS:
        assert samples[("fopproxy_backend_connect_errors_total", frozenset({("reason", reason)}))] == 0
    for reason in ("limit", "draining"):
        assert samples[("fopproxy_connections_rejected_total", frozenset({("reason", reason)}))] == 0
    for result in ("success", "failure"):
        assert samples[("fopproxy_certificate_reloads_total", frozenset({("result", result)}))] == 0


def test_histogram_buckets_are_cumulative_with_inf_and_sum(tls_files: TLSFiles) -> None:
    """Per-bucket counts in Stats become Prometheus' cumulative `le` buckets, +Inf = count."""
    samples = parse(generate_latest(make_registry(lambda: take_snapshot(fake_worker(tls_files, busy_stats()), 0.0))))

    def bucket(le: str) -> float:
        return samples[("fopproxy_tls_handshake_duration_seconds_bucket", frozenset({("le", le)}))]

    assert bucket("0.0005") == 1
    assert bucket("0.005") == 3
    assert bucket("5.0") == 3
    assert bucket("10.0") == 4
    assert bucket("+Inf") == 5
    assert samples[("fopproxy_tls_handshake_duration_seconds_count", frozenset())] == 5
    assert samples[("fopproxy_tls_handshake_duration_seconds_sum", frozenset())] == pytest.approx(37.0083)
    bounds = [b for (name, labels), _ in samples.items() if name == "fopproxy_tls_handshake_duration_seconds_bucket" for _, b in labels]
    assert len(bounds) == len(HANDSHAKE_BUCKETS) + 1


async def test_open_connections_bytes_count_and_never_step_back_on_close(tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """In-flight bytes are included; when the real connection closes its bytes move into Stats unchanged."""
    relay, conn, client = await opened_connection(tls_files, echo_backend)
    relay.stats.bytes_to_backend = 10
    payload = os.urandom(50_000)
    client.send(payload)
    for _ in range(500):
        if conn.to_client >= len(payload):
            break
        await asyncio.sleep(0.01)
    worker = fake_worker(tls_files, relay.stats, relay.active)
    during = take_snapshot(worker, 0.0)
    assert (during.bytes_to_backend, during.bytes_to_client) == (10 + len(payload), len(payload))
    conn.close(CloseReason.IDLE_TIMEOUT)  # the close path the sweeper takes, then the transport's
    conn.connection_lost(None)
    assert not relay.active
    after = take_snapshot(worker, 0.0)
    assert (after.bytes_to_backend, after.bytes_to_client) == (10 + len(payload), len(payload))
    assert after.connections_active == 0


def test_snapshot_json_round_trip_and_sum(tls_files: TLSFiles) -> None:
    """A worker's snapshot survives JSON; two snapshots add counters and merge certificates."""
    snap = take_snapshot(fake_worker(tls_files, busy_stats()), 99.0)
    again = MetricsSnapshot.from_json(snap.to_json())
    assert again == snap
    total = snap + again
    assert total.handshakes[("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")] == 10
    assert total.handshake_duration.counts == tuple(2 * c for c in snap.handshake_duration.counts)
    assert total.connections_active == 2
    assert len(total.certificates) == 2  # the same two certificates, not four
    assert snap.add_counters(again).connections_active == snap.connections_active  # gauges not folded
    with pytest.raises(ValueError, match="not a worker snapshot"):
        MetricsSnapshot.from_json(b'{"handshakes": []}')


# ---- supervisor aggregation over real Unix sockets ---------------------------------------------


class SnapshotServer:
    """A worker's snapshot socket, played by a thread that answers `snapshot()` as JSON."""

    def __init__(self, path: Path, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self.path = path
        self.snapshot = snapshot
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.snapshot().to_json())

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def servers() -> Iterator[list[SnapshotServer]]:
    started: list[SnapshotServer] = []
    yield started
    for server in started:
        if server.sock.fileno() >= 0:
            server.close()


def handshakes(count: int, ready: bool = True) -> MetricsSnapshot:
    return MetricsSnapshot(handshakes={("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"): count}, bytes_to_backend=10 * count,
                    connections_active=count, ready=ready)


def total_handshakes(snap: MetricsSnapshot) -> int:
    return sum(snap.handshakes.values())


def test_aggregator_sums_workers_and_keeps_exited_workers_counts(tmp_path: Path, servers: list[SnapshotServer]) -> None:
    """Totals are the sum over workers and never drop when a worker exits and is replaced."""
    counts = {101: 3, 102: 2}
    for pid in list(counts):
        servers.append(SnapshotServer(snapshot_path(tmp_path, pid), lambda pid=pid: handshakes(counts[pid])))
    aggregator = WorkerAggregator(tmp_path, workers=2)
    snap, ready = aggregator.poll()
    assert (total_handshakes(snap), snap.bytes_to_backend, snap.connections_active, ready) == (5, 50, 5, 2)
    assert snap.ready

    counts[101] = 7  # worker 101 made more handshakes, then crashed before the next scrape
    servers[0].close()
    snap, ready = aggregator.poll()
    assert total_handshakes(snap) == 5  # 101 does not answer: its last snapshot still counts
    assert ready == 1
    assert not snap.ready
    aggregator.on_child_exit(0, 101)
    assert not snapshot_path(tmp_path, 101).exists()
    snap, _ = aggregator.poll()
    assert total_handshakes(snap) == 5  # folded into the base
    assert snap.connections_active == 2  # the dead worker's connections are gone

    counts[103] = 1
    servers.append(SnapshotServer(snapshot_path(tmp_path, 103), lambda: handshakes(counts[103])))
    snap, ready = aggregator.poll()
    assert (total_handshakes(snap), ready, snap.ready) == (6, 2, True)


def test_aggregator_ignores_an_answer_from_a_worker_already_folded(tmp_path: Path, servers: list[SnapshotServer]) -> None:
    """A worker reaped while a scrape was querying it is not counted twice."""
    aggregator = WorkerAggregator(tmp_path, workers=1)

    def answer_then_die() -> MetricsSnapshot:
        aggregator.on_child_exit(0, 201)  # the supervisor reaps it mid-query
        return handshakes(4)

    servers.append(SnapshotServer(snapshot_path(tmp_path, 201), lambda: handshakes(3)))
    assert total_handshakes(aggregator.poll()[0]) == 3
    servers[0].snapshot = answer_then_die
    snap, ready = aggregator.poll()
    assert total_handshakes(snap) == 3  # the folded 3; the late 4 is dropped, never 7
    assert ready == 0
    assert total_handshakes(aggregator.poll()[0]) == 3


# ---- HTTP ------------------------------------------------------------------------------------


def test_routes_and_methods(tls_files: TLSFiles) -> None:
    registry = make_registry(lambda: take_snapshot(fake_worker(tls_files, Stats()), 0.0))
    assert respond("GET", "/healthz", None, registry, lambda: False).status == 200
    assert respond("GET", "/readyz", None, registry, lambda: True).status == 200
    assert respond("GET", "/readyz", None, registry, lambda: False).status == 503
    assert respond("GET", "/metrics?x=1", None, registry, lambda: False).status == 200
    assert respond("GET", "/", None, registry, lambda: True).status == 404
    assert respond("POST", "/metrics", None, registry, lambda: True).status == 405
    openmetrics = respond("GET", "/metrics", "application/openmetrics-text; version=1.0.0", registry, lambda: True)
    assert openmetrics.content_type.startswith("application/openmetrics-text")
    assert openmetrics.body.endswith(b"# EOF\n")


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_asyncio_responder_over_loopback(tls_files: TLSFiles) -> None:
    """The worker-side responder answers GET, HEAD, bad and oversized requests, then closes."""
    registry = make_registry(lambda: take_snapshot(fake_worker(tls_files, busy_stats()), 0.0))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MetricsHTTPProtocol(registry, lambda: True), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        assert length == len(body)
        assert b"fopproxy_tls_handshakes_total" in body
        head_only = await _exchange(port, b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200 OK") and head_only.endswith(b"\r\n\r\n")
        assert (await _exchange(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await _exchange(port, b"GET /" + b"a" * 20000)).startswith(b"HTTP/1.1 431")
    finally:
        server.close()
        await server.wait_closed()


# ---- deploy/prometheus -----------------------------------------------------------------------


def exported_names(tls_files: TLSFiles) -> set[str]:
    snapshot = take_snapshot(fake_worker(tls_files, busy_stats()), 0.0)
    # With one outbound that made a call, so that its families have samples too.
    outbound = OutboundSnapshot(
        "google", handshakes={("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"): 1}, peer_not_after=1.0,
        client_certificate=ClientCertificateGauge("CN=partner", "3c", "ecdsa", 0.0, 1.0),
    )
    snapshot = dataclasses.replace(snapshot, outbound=(outbound,))
    registry = make_registry(lambda: snapshot)
    return {s.name for family in registry.collect() for s in family.samples}


def test_rules_and_dashboard_use_only_exported_metrics(tls_files: TLSFiles) -> None:
    """Every fopproxy_* name in the alert rules and the Grafana dashboard is one the code exports."""
    exported = exported_names(tls_files)
    files = sorted(DEPLOY.glob("*.yml")) + sorted(DEPLOY.glob("*.json"))
    assert {f.name for f in files} >= {"alerts.yml", "grafana-dashboard.json"}
    used: set[str] = set()
    for file in files:
        used |= set(re.findall(r"\bfopproxy_[a-z][a-z0-9_]*", file.read_text()))
    assert used, "no fopproxy_ metric names found"
    assert used - exported == set()
    # The headline metrics are on the dashboard.
    dashboard = (DEPLOY / "grafana-dashboard.json").read_text()
    for name in ("fopproxy_tls_handshakes_total", "fopproxy_tls_handshake_errors_total",
                 "fopproxy_certificate_not_after_timestamp_seconds", "fopproxy_bytes_total",
                 "fopproxy_backend_connect_errors_total", "fopproxy_connections_active"):
        assert name in dashboard


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus) is not installed")
def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    """`promtool check rules` accepts the rules, and their own unit tests fire when they should."""
    check = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    written = sum(len(group["rules"]) for group in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"])
    assert written >= 10  # 7 for the listener, 3 for outbound
    assert f"SUCCESS: {written} rules found" in check.stdout
    unit = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr
