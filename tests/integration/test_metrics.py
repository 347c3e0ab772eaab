"""Metrics and health endpoints of the real process: exact counts after known traffic, drain, workers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support.backends import ThreadedBackend, free_port
from tests.support.proxy import ProxyProcess, client_context, stop_process, tls_connect

# Successful handshakes the tests make: suite -> count (one ECDSA and one RSA suite).
SUITES = {"ECDHE-ECDSA-AES128-GCM-SHA256": 3, "ECDHE-RSA-CHACHA20-POLY1305": 2}
HANDSHAKE_TIMEOUT = 2
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> tuple[str, Samples]:
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return body, samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def metrics_config(proxy_config: ConfigFactory, backend: str, workers: int = 1, drain: float = 10) -> tuple[dict[str, Any], int]:
    port = free_port()
    config = proxy_config(
        backend,
        workers=workers,
        metrics={"listen": f"127.0.0.1:{port}"},
        timeouts={"handshake": HANDSHAKE_TIMEOUT, "connect": 2, "idle": 60, "drain": drain},
    )
    return config, port


def echo(sock: ssl.SSLSocket, payload: bytes) -> None:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "echo ended early"
        received += chunk
    assert received == payload


def good_handshakes(proxy: ProxyProcess, tls_files: TLSFiles, suites: dict[str, int] = SUITES) -> int:
    """Make the successful connections; returns the payload bytes sent (and echoed back)."""
    sent = 0
    for suite, count in suites.items():
        for i in range(count):
            ctx = client_context(tls_files.cafile, ciphers=suite, maximum_version=ssl.TLSVersion.TLSv1_2)
            with tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME) as sock:
                assert sock.cipher()[0] == suite
                payload = os.urandom(1000 + 337 * i)
                echo(sock, payload)
                sent += len(payload)
    return sent


def read_until_closed(sock: socket.socket) -> None:
    sock.settimeout(HANDSHAKE_TIMEOUT + 15)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass


def failed_handshakes(proxy: ProxyProcess) -> dict[str, int]:
    """One failure of each kind a client can cause; returns the expected counts by reason."""
    def stall() -> None:  # connects, sends nothing: closed at the handshake timeout
        with socket.create_connection((proxy.host, proxy.port)) as sock:
            read_until_closed(sock)

    staller = threading.Thread(target=stall)
    staller.start()
    old = client_context(verify=False, minimum_version=ssl.TLSVersion.TLSv1,
                         maximum_version=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        tls_connect(proxy.host, proxy.port, old, SERVER_NAME).close()
    unlisted = client_context(verify=False, ciphers="ECDHE-RSA-AES256-GCM-SHA384",
                              maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        tls_connect(proxy.host, proxy.port, unlisted, SERVER_NAME).close()
    with socket.create_connection((proxy.host, proxy.port)) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
        read_until_closed(plain)
    staller.join(HANDSHAKE_TIMEOUT + 20)
    assert not staller.is_alive()
    return {"unsupported_protocol": 1, "no_shared_cipher": 1, "not_tls": 1, "timeout": 1}


def settled_scrape(port: int, timeout: float = 15.0) -> tuple[str, Samples]:
    """A scrape taken once every connection has closed (the counters are final then)."""
    deadline = time.monotonic() + timeout
    while True:
        body, samples = scrape(port)
        if value(samples, "fopproxy_connections_active") == 0 or time.monotonic() > deadline:
            return body, samples
        time.sleep(0.1)


def worker_pids(proxy: ProxyProcess) -> list[int]:
    return [int(pid) for pid in re.findall(r"listening on .*?, pid (\d+),", proxy.log())]


def assert_traffic_counts(samples: Samples, tls_files: TLSFiles, sent: int, errors: dict[str, int]) -> None:
    handshakes = labelled(samples, "fopproxy_tls_handshakes_total")
    assert handshakes == {
        frozenset({("version", "TLSv1.2"), ("cipher", suite)}): float(count) for suite, count in SUITES.items()
    }
    handshake_errors = {dict(labels)["reason"]: v for labels, v in labelled(samples, "fopproxy_tls_handshake_errors_total").items()}
    expected_errors = dict.fromkeys(("unsupported_protocol", "no_shared_cipher", "timeout", "client_eof", "not_tls", "cert_rejected", "invalid_sni", "other"), 0.0)
    expected_errors.update({reason: float(n) for reason, n in errors.items()})
    assert handshake_errors == expected_errors
    good = sum(SUITES.values())
    assert value(samples, "fopproxy_tls_handshake_duration_seconds_count") == good
    assert value(samples, "fopproxy_tls_handshake_duration_seconds_bucket", le="+Inf") == good
    assert value(samples, "fopproxy_backend_connect_duration_seconds_count") == good
    assert value(samples, "fopproxy_bytes_total", direction="to_backend") == sent
    assert value(samples, "fopproxy_bytes_total", direction="to_client") == sent
    assert value(samples, "fopproxy_connections_active") == 0
    assert all(v == 0 for v in labelled(samples, "fopproxy_backend_connect_errors_total").values())
    assert value(samples, "fopproxy_connections_rejected_total", reason="limit") == 0

    leaf = x509.load_pem_x509_certificate(tls_files.ecdsa.cert_pem)
    ecdsa = {"name": SERVER_NAME, "serial": format(tls_files.ecdsa.serial, "x"), "key_type": "ecdsa"}
    assert value(samples, "fopproxy_certificate_not_after_timestamp_seconds", **ecdsa) == leaf.not_valid_after_utc.timestamp()
    assert value(samples, "fopproxy_certificate_not_before_timestamp_seconds", **ecdsa) == leaf.not_valid_before_utc.timestamp()
    assert len(labelled(samples, "fopproxy_certificate_not_after_timestamp_seconds")) == 2  # ECDSA + RSA
    assert value(samples, "fopproxy_certificate_last_reload_success_timestamp_seconds") > time.time() - 300
    build = labelled(samples, "fopproxy_build_info")
    assert len(build) == 1
    assert dict(next(iter(build)))["openssl"] == ssl.OPENSSL_VERSION


@pytest.mark.parametrize("workers", [1, 2])
def test_one_scrape_shows_exactly_the_traffic_produced(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend, workers: int) -> None:
    """K good handshakes with known suites and one failure of each kind appear with exact counts."""
    config, port = metrics_config(proxy_config, echo_backend.address, workers=workers)
    with ProxyProcess(tmp_path, config) as proxy:
        _, before = scrape(port)
        # Every reason is there at 0 before the first error, so alerts have a series to watch.
        assert all(v == 0 for v in labelled(before, "fopproxy_tls_handshake_errors_total").values())
        assert len(labelled(before, "fopproxy_tls_handshake_errors_total")) == 8
        sent = good_handshakes(proxy, tls_files)
        errors = failed_handshakes(proxy)
        body, samples = settled_scrape(port)
        assert_traffic_counts(samples, tls_files, sent, errors)
    if shutil.which("promtool"):  # CI installs it (.ci/setup.d/30-metrics.sh)
        # Exit 0 and no output: valid text format and no lint problems (names, units, help).
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.strip() == "" and check.stderr.strip() == ""


def test_long_transfer_bytes_visible_before_close(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """Bytes of a connection still open are counted, and the counter does not drop when it closes."""
    config, port = metrics_config(proxy_config, echo_backend.address)
    with ProxyProcess(tmp_path, config) as proxy:
        sock = tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME)
        payload = os.urandom(200_000)
        echo(sock, payload)
        _, open_samples = scrape(port)
        assert value(open_samples, "fopproxy_connections_active") == 1
        assert value(open_samples, "fopproxy_bytes_total", direction="to_backend") == len(payload)
        assert value(open_samples, "fopproxy_bytes_total", direction="to_client") == len(payload)
        sock.close()
        _, closed = settled_scrape(port)
        assert value(closed, "fopproxy_connections_active") == 0
        assert value(closed, "fopproxy_bytes_total", direction="to_backend") == len(payload)
        assert value(closed, "fopproxy_bytes_total", direction="to_client") == len(payload)


def test_counters_survive_a_worker_being_replaced(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """With workers: 2, killing a worker does not make any total go backwards."""
    config, port = metrics_config(proxy_config, echo_backend.address, workers=2)
    with ProxyProcess(tmp_path, config) as proxy:
        sent = good_handshakes(proxy, tls_files)
        _, first = settled_scrape(port)
        total = sum(SUITES.values())
        assert sum(labelled(first, "fopproxy_tls_handshakes_total").values()) == total
        victim = worker_pids(proxy)[0]
        os.kill(victim, signal.SIGKILL)
        proxy.wait_for_log("listening on", count=3)
        deadline = time.monotonic() + 15
        while http_get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http_get(port, "/readyz")[0] == 200
        _, second = scrape(port)
        assert labelled(second, "fopproxy_tls_handshakes_total") == labelled(first, "fopproxy_tls_handshakes_total")
        assert value(second, "fopproxy_bytes_total", direction="to_backend") == sent
        assert value(second, "fopproxy_tls_handshake_duration_seconds_count") == total
        good_handshakes(proxy, tls_files, {"ECDHE-ECDSA-AES128-GCM-SHA256": 1})
        _, third = settled_scrape(port)
        assert sum(labelled(third, "fopproxy_tls_handshakes_total").values()) == total + 1
        assert value(third, "fopproxy_connections_active") == 0
        assert len(labelled(third, "fopproxy_certificate_not_after_timestamp_seconds")) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_health_endpoints_and_readyz_503_during_drain(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend, workers: int) -> None:
    """/readyz turns 503 at SIGTERM while a connection drains; /healthz and /metrics keep answering."""
    config, port = metrics_config(proxy_config, echo_backend.address, workers=workers, drain=5)
    proxy = ProxyProcess(tmp_path, config)
    try:
        assert http_get(port, "/healthz") == (200, "ok\n")
        assert http_get(port, "/readyz") == (200, "ready\n")
        assert http_get(port, "/nope")[0] == 404
        sock = tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME)
        echo(sock, b"before drain")
        proxy.signal(signal.SIGTERM)
        deadline = time.monotonic() + 4
        while http_get(port, "/readyz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http_get(port, "/readyz") == (503, "not ready\n")
        assert http_get(port, "/healthz") == (200, "ok\n")
        _, samples = scrape(port)
        assert value(samples, "fopproxy_connections_active") == 1
        echo(sock, b"during drain")  # the open connection still works
        sock.close()
        assert proxy.proc.wait(20) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        proxy.stop()


def test_reload_shows_new_certificate_and_counts_success(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """After a rotation the gauges show the new serial only, and reloads{result=success} is 1."""
    config, port = metrics_config(proxy_config, echo_backend.address)
    with ProxyProcess(tmp_path, config) as proxy:
        _, before = scrape(port)
        assert value(before, "fopproxy_certificate_reloads_total", result="success") == 0
        assert value(before, "fopproxy_certificate_reloads_total", result="failure") == 0
        old_serial = format(tls_files.ecdsa.serial, "x")
        fresh = tls_files.ca.write(tmp_path / "new", "ecdsa", [SERVER_NAME], "ecdsa")
        tls_files.ecdsa.cert.write_bytes(fresh.cert_pem)
        tls_files.ecdsa.key.write_bytes(fresh.key_pem)
        proxy.signal(signal.SIGHUP)
        proxy.wait_for_log("certificates reloaded")
        _, after = scrape(port)
    assert value(after, "fopproxy_certificate_reloads_total", result="success") == 1
    serials = {dict(labels)["serial"] for labels in labelled(after, "fopproxy_certificate_not_after_timestamp_seconds")}
    assert format(fresh.serial, "x") in serials
    assert old_serial not in serials
    assert value(after, "fopproxy_certificate_last_reload_success_timestamp_seconds") >= value(before, "fopproxy_certificate_last_reload_success_timestamp_seconds")


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_port_taken_is_a_clear_startup_error(tmp_path: Path, proxy_config: ConfigFactory, echo_backend: ThreadedBackend, workers: int) -> None:
    """A metrics port already in use stops the start with exit 1 and names metrics.listen."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = proxy_config(echo_backend.address, workers=workers, metrics={"listen": f"127.0.0.1:{port}"})
        proxy = ProxyProcess(tmp_path, config, wait=False)
        try:
            assert proxy.proc.wait(30) == 1
            assert f"fopproxy: cannot listen on metrics.listen 127.0.0.1:{port}: Address already in use" in proxy.log()
        finally:
            proxy.stop()


# ---- a real Prometheus server ----------------------------------------------------------------


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Any]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus (Debian package prometheus) is not installed")

    class Server:
        def __init__(self) -> None:
            self.port = free_port()
            self.proc: subprocess.Popen[bytes] | None = None

        def start(self, target_port: int) -> None:
            folder = tmp_path / "prometheus"
            folder.mkdir()
            (folder / "prometheus.yml").write_text(json.dumps({
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "fopproxy", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
            }))
            self.log = (folder / "prometheus.log").open("wb")
            self.proc = subprocess.Popen(
                [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=self.log, stderr=subprocess.STDOUT,
            )

        def query(self, expr: str) -> list[dict[str, Any]]:
            url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            with urllib.request.urlopen(url, timeout=5) as answer:
                data = json.load(answer)
            assert data["status"] == "success", data
            return list(data["data"]["result"])

    server = Server()
    try:
        yield server
    finally:
        if server.proc is not None:
            stop_process(server.proc, timeout=15)
            server.log.close()


def test_real_prometheus_scrapes_the_handshake_count(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend, prometheus_server: Any) -> None:
    """Prometheus scrapes fopproxy: up == 1 and the handshake total equals what the test made."""
    config, port = metrics_config(proxy_config, echo_backend.address)
    with ProxyProcess(tmp_path, config) as proxy:
        good_handshakes(proxy, tls_files)
        expected = float(sum(SUITES.values()))
        prometheus_server.start(port)
        deadline = time.monotonic() + 90
        up: list[dict[str, Any]] = []
        total: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                up = prometheus_server.query('up{job="fopproxy"}')
                total = prometheus_server.query('sum(fopproxy_tls_handshakes_total{job="fopproxy"})')
            except (OSError, urllib.error.URLError):
                pass  # still starting
            if up and up[0]["value"][1] == "1" and total and float(total[0]["value"][1]) == expected:
                break
            time.sleep(0.5)
        assert up and up[0]["value"][1] == "1", up
        assert total and float(total[0]["value"][1]) == expected, total
        by_cipher = prometheus_server.query('fopproxy_tls_handshakes_total{cipher="ECDHE-RSA-CHACHA20-POLY1305"}')
        assert [float(r["value"][1]) for r in by_cipher] == [float(SUITES["ECDHE-RSA-CHACHA20-POLY1305"])]
