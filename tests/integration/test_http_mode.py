"""mode: http with the real process, a plain HTTP backend on loopback and real clients (curl,
Python's http.client over TLS): header truth, pipelining, smuggling, proxy answers, streaming,
metrics."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support.backends import free_port
from tests.support.clientpki import issue_client
from tests.support.httpbackend import PATTERN, RecordingServer, pattern_digest
from tests.support.pki import CA
from tests.support.proxy import ProxyProcess, client_context, tls_connect
from tests.test_http_request import CATALOGUE

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is the independent client")


@pytest.fixture
def backend() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def http_config(proxy_config: ConfigFactory, backend: str, **overrides: Any) -> dict[str, Any]:
    config = proxy_config(backend, mode="http", metrics={"listen": f"127.0.0.1:{free_port()}"})
    config.update(overrides)
    return config


@pytest.fixture
def proxy(tmp_path: Path, proxy_config: ConfigFactory, backend: RecordingServer) -> Iterator[ProxyProcess]:
    with ProxyProcess(tmp_path, http_config(proxy_config, backend.address)) as running:
        yield running


def connection(proxy: ProxyProcess, tls_files: TLSFiles, timeout: float = 30) -> http.client.HTTPSConnection:
    ctx = client_context(tls_files.cafile)
    ctx.check_hostname = False  # we connect to 127.0.0.1; the chain is still verified
    return http.client.HTTPSConnection(proxy.host, proxy.port, context=ctx, timeout=timeout)


def curl(proxy: ProxyProcess, tls_files: TLSFiles, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl", "-sS", "--max-time", "20", "--cacert", str(tls_files.cafile),
            "--resolve", f"{SERVER_NAME}:{proxy.port}:127.0.0.1", "-w", "\n%{http_code}",
            *args, f"https://{SERVER_NAME}:{proxy.port}{path}",
        ],
        capture_output=True, text=True, timeout=30,
    )


def raw_exchange(proxy: ProxyProcess, tls_files: TLSFiles, data: bytes, timeout: float = 10) -> bytes:
    """Send `data` over TLS, read until the proxy closes; returns everything received."""
    sock = tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME, timeout=timeout)
    with sock:
        sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return received


class KeepOpen:
    """A file whose close() does nothing: http.client closes it after each response body."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def close(self) -> None:
        pass


def scrape(proxy: ProxyProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://{proxy.config['metrics']['listen']}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_spoofed_forwarding_and_client_cert_headers_are_replaced(proxy: ProxyProcess, tls_files: TLSFiles, backend: RecordingServer) -> None:
    """curl and http.client send forged X-Forwarded-*, Forwarded and Client-Cert: the backend sees only the truth."""
    forged = {
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=6.6.6.6;proto=http", "Client-Cert": ":ZXZpbA==:", "Client-Cert-Chain": ":ZXZpbA==:",
    }
    result = curl(proxy, tls_files, "/headers", *[arg for k, v in forged.items() for arg in ("-H", f"{k}: {v}")])
    body, _, code = result.stdout.rpartition("\n")
    assert code == "200", result.stderr
    conn = connection(proxy, tls_files)
    conn.request("GET", "/headers", headers={**forged, "Host": SERVER_NAME})
    answer = conn.getresponse()
    second = answer.read().decode()
    conn.close()
    for text in (body, second):
        headers = [(k.lower(), v) for k, v in json.loads(text)]
        assert ("x-forwarded-for", "127.0.0.1") in headers
        assert ("x-forwarded-proto", "https") in headers
        assert [v for k, v in headers if k == "x-forwarded-for"] == ["127.0.0.1"]
        assert [v for k, v in headers if k == "forwarded"] == [f'for=127.0.0.1;proto=https;host="{dict(headers)["host"]}"']
        assert not any(k.startswith("client-cert") for k, _ in headers)
        assert "6.6.6.6" not in text and "evil" not in text and "ZXZpbA" not in text
    assert f"{SERVER_NAME}:{proxy.port}" in body  # X-Forwarded-Host is the Host curl sent


def test_fifty_pipelined_requests_answered_in_order(proxy: ProxyProcess, tls_files: TLSFiles, backend: RecordingServer) -> None:
    """50 requests in one write, answers alternating Content-Length and chunked, come back in order."""
    requests = b""
    for i in range(50):
        chunked = "?chunked=1" if i % 2 else ""
        if i % 5 == 4:
            body = b"b" * i
            requests += f"POST /seq/{i}{chunked} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        else:
            requests += f"GET /seq/{i}{chunked} HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n".encode()
    sock = tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME)
    with sock:
        sock.sendall(requests)
        reader = KeepOpen(sock.makefile("rb"))
        bodies = []
        for i in range(50):
            response = http.client.HTTPResponse(sock)
            response.fp = reader  # type: ignore[assignment]  # one buffered reader across responses
            response.begin()
            assert response.status == 200
            assert (response.getheader("Transfer-Encoding") == "chunked") == bool(i % 2)
            bodies.append(response.read().decode())
    assert bodies == [str(i) for i in range(50)]
    assert [r["path"].split("?")[0] for r in backend.requests] == [f"/seq/{i}" for i in range(50)]
    assert backend.connections == 1  # keep-alive upstream


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[tuple[ProxyProcess, TLSFiles, RecordingServer]]:
    """One proxy and backend for the whole catalogue (each case starts with no request recorded)."""
    folder = tmp_path_factory.mktemp("catalogue")
    files = TLSFiles(folder / "tls", ca)
    with RecordingServer() as server:
        config = {
            "listen": f"127.0.0.1:{free_port()}", "backend": server.address, "server_name": SERVER_NAME,
            "tls": {"certificates": files.entries()}, "mode": "http",
        }
        with ProxyProcess(folder, config) as running:
            yield running, files, server


@pytest.mark.parametrize(("data", "status"), [(c[1], c[2]) for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_smuggling_attempts_refused_and_nothing_reaches_the_backend(shared: tuple[ProxyProcess, TLSFiles, RecordingServer], data: bytes, status: int) -> None:
    """Each request of the catalogue, followed by a smuggled GET: the answer is 400/501 and close;
    the backend completes no request."""
    proxy, tls_files, backend = shared
    backend.requests.clear()
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    received = raw_exchange(proxy, tls_files, data + smuggled)
    assert received.startswith(f"HTTP/1.1 {status} ".encode()), received[:200]
    assert b"Connection: close\r\n" in received
    assert received.count(b"HTTP/1.1 ") == 1
    time.sleep(0.2)  # a request the backend were reading would be recorded by now
    assert backend.requests == []


def test_502_when_the_backend_is_down_or_resets(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, backend: RecordingServer) -> None:
    config = http_config(proxy_config, f"127.0.0.1:{free_port()}")
    with ProxyProcess(tmp_path, config) as proxy:
        result = curl(proxy, tls_files, "/anything")
        assert result.stdout.endswith("\n502"), result
        assert "502 Bad Gateway" in result.stdout
        assert 'fopproxy_http_requests_total{code="502",method="GET"} 1.0' in urllib.request.urlopen(
            f"http://{config['metrics']['listen']}/metrics", timeout=10).read().decode()
    (tmp_path / "b").mkdir()
    with ProxyProcess(tmp_path / "b", http_config(proxy_config, backend.address)) as proxy:
        result = curl(proxy, tls_files, "/reset")
        assert result.stdout.endswith("\n502"), result


def test_504_when_the_backend_says_nothing_for_the_idle_timeout(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, backend: RecordingServer) -> None:
    config = http_config(proxy_config, backend.address, timeouts={"handshake": 5, "connect": 2, "idle": 1, "drain": 5})
    with ProxyProcess(tmp_path, config) as proxy:
        started = time.monotonic()
        result = curl(proxy, tls_files, "/sleep/4")
        assert result.stdout.endswith("\n504"), result
        assert time.monotonic() - started < 3.5
        assert "reason=backend_timeout" in proxy.wait_for_log("status=504")


def test_431_for_a_head_over_the_limit(proxy: ProxyProcess, tls_files: TLSFiles, backend: RecordingServer) -> None:
    result = curl(proxy, tls_files, "/headers", "-H", "X-Big: " + "a" * 20000)
    assert result.stdout.endswith("\n431"), result
    result = curl(proxy, tls_files, "/headers", "-H", "X-Fits: " + "a" * 8000)
    assert result.stdout.endswith("\n200"), result
    assert len(backend.requests) == 1


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_64_mib_upload_and_download_stream_with_bounded_memory(proxy: ProxyProcess, tls_files: TLSFiles, backend: RecordingServer) -> None:
    """64 MiB each way (Content-Length and chunked) pass intact; the proxy's peak RSS grows by a
    few MiB, not by the body size."""
    size = 64 * 1024 * 1024
    conn = connection(proxy, tls_files, timeout=120)
    conn.request("GET", "/bytes/1024")  # warm up: first-use allocations are not the body's
    conn.getresponse().read()
    before = _rss_kib(proxy.pid, "VmRSS")

    def body() -> Iterator[bytes]:
        for _ in range(size // len(PATTERN)):
            yield PATTERN

    # The backend stalls before reading each upload, the client before reading each download:
    # a proxy without backpressure would hold most of the body meanwhile.
    conn.request("POST", "/upload?stall=1", body=body(), headers={"Content-Length": str(size)})
    assert conn.getresponse().read().decode() == f"{size} {pattern_digest(size)}"
    conn.request("POST", "/upload?stall=1", body=body(), encode_chunked=True)
    assert conn.getresponse().read().decode() == f"{size} {pattern_digest(size)}"
    for path in (f"/bytes/{size}", f"/bytes/{size}?chunked=1"):
        conn.request("GET", path)
        answer = conn.getresponse()
        digest = hashlib.sha256()
        total = 0
        time.sleep(1.5)
        while chunk := answer.read(1 << 20):
            digest.update(chunk)
            total += len(chunk)
        assert (total, digest.hexdigest()) == (size, pattern_digest(size))
    conn.close()
    growth_mib = (_rss_kib(proxy.pid, "VmHWM") - before) / 1024
    print(f"peak RSS growth moving 4 x 64 MiB: {growth_mib:.1f} MiB")
    assert growth_mib < 24, f"peak RSS grew by {growth_mib:.1f} MiB moving 256 MiB"


def test_metrics_count_exactly_the_requests_made(proxy: ProxyProcess, tls_files: TLSFiles, backend: RecordingServer) -> None:
    """Known traffic, then one scrape: per method and code, the duration count and the errors match."""
    conn = connection(proxy, tls_files)
    for _ in range(7):
        conn.request("GET", "/seq/1")
        conn.getresponse().read()
    for _ in range(3):
        conn.request("POST", "/upload", body=b"12345")
        conn.getresponse().read()
    for _ in range(2):
        conn.request("GET", "/nowhere")
        conn.getresponse().read()
    conn.request("PROPFIND", "/seq/2")
    conn.getresponse().read()
    conn.close()
    assert raw_exchange(proxy, tls_files, b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").startswith(b"HTTP/1.1 400")
    samples = scrape(proxy)
    requests = {dict(labels)["method"] + " " + dict(labels)["code"]: v for (name, labels), v in samples.items() if name == "fopproxy_http_requests_total"}
    assert requests == {"GET 200": 7, "POST 200": 3, "GET 404": 2, "OTHER 501": 1, "OTHER 400": 1}
    assert samples[("fopproxy_http_request_duration_seconds_count", frozenset())] == 14
    assert samples[("fopproxy_http_request_body_bytes_total", frozenset())] == 15
    assert samples[("fopproxy_http_errors_total", frozenset({("reason", "bad_request")}))] == 1
    log = proxy.wait_for_log("status=400")
    assert log.count("fopproxy.http request method=") == 14
    assert "path=/upload status=200 bytes_in=5" in log
    assert "connection closed" not in log  # one line per request instead


def test_query_string_never_logged(proxy: ProxyProcess, tls_files: TLSFiles) -> None:
    result = curl(proxy, tls_files, "/seq/3?card=4111111111111111")
    assert result.stdout.endswith("\n200")
    log = proxy.wait_for_log("path=/seq/3")
    assert "4111" not in log


def test_sigterm_closes_idle_keep_alive_connections_at_once(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, backend: RecordingServer) -> None:
    """Draining does not wait for keep-alive clients between requests: they are closed cleanly."""
    with ProxyProcess(tmp_path, http_config(proxy_config, backend.address)) as proxy:
        sock = tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME)
        sock.sendall(f"GET /seq/1 HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n".encode())
        answer = b""
        while not answer.endswith(b"\r\n\r\n1"):  # head and body may come as two records
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert proxy.proc.wait(5) == 0
        assert time.monotonic() - started < 3
        assert sock.recv(65536) == b""  # close_notify: a clean end, not a reset
        sock.close()


def test_upgrade_and_connect_refused(proxy: ProxyProcess, tls_files: TLSFiles, backend: RecordingServer) -> None:
    result = curl(proxy, tls_files, "/ws", "-H", "Upgrade: websocket", "-H", "Connection: Upgrade")
    assert result.stdout.endswith("\n501"), result
    assert backend.requests == []


def test_head_and_expect_continue_through_curl(proxy: ProxyProcess, tls_files: TLSFiles, backend: RecordingServer) -> None:
    result = curl(proxy, tls_files, "/bytes/5000", "-I")
    assert result.stdout.endswith("\n200") and "content-length: 5000" in result.stdout.lower()
    upload = tmp = Path(proxy.folder) / "body.bin"
    tmp.write_bytes(b"z" * 200_000)
    result = curl(proxy, tls_files, "/upload", "-H", "Expect: 100-continue", "--data-binary", f"@{upload}")
    assert result.stdout.startswith("200000 ") and result.stdout.endswith("\n200"), result


def test_unix_socket_backend_is_not_required_for_http_but_works(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    """A backend on a Unix socket is dialled the same way (a minimal server answering one request)."""
    path = tmp_path / "api.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    config = http_config(proxy_config, f"unix:{path}")
    with server, ProxyProcess(tmp_path, config) as proxy:
        conn = connection(proxy, tls_files)
        conn.request("GET", "/")
        client, _ = server.accept()
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(4096)
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            assert conn.getresponse().read() == b"ok"
        assert b"X-Forwarded-For: 127.0.0.1\r\n" in head
        conn.close()


def test_counts_add_up_across_workers(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, backend: RecordingServer) -> None:
    """workers: 2: the supervisor's scrape sums both workers' request counts."""
    config = http_config(proxy_config, backend.address, workers=2)
    with ProxyProcess(tmp_path, config) as proxy:
        for _ in range(10):  # a connection each: the kernel spreads them over the workers
            conn = connection(proxy, tls_files)
            conn.request("GET", "/seq/1")
            assert conn.getresponse().read() == b"1"
            conn.close()
        samples = scrape(proxy)
        assert samples[("fopproxy_http_requests_total", frozenset({("method", "GET"), ("code", "200")}))] == 10
        assert samples[("fopproxy_http_request_duration_seconds_count", frozenset())] == 10


def test_json_access_lines_parse_with_every_field(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, backend: RecordingServer) -> None:
    config = http_config(proxy_config, backend.address, logging={"level": "info", "format": "json"})
    with ProxyProcess(tmp_path, config) as proxy:
        assert curl(proxy, tls_files, "/seq/9?secret=1").stdout.endswith("\n200")
        log = proxy.wait_for_log('"path":"/seq/9"')
    (line,) = [json.loads(x) for x in log.splitlines() if '"msg":"request"' in x]
    assert {k: line[k] for k in ("method", "path", "status", "bytes_in", "client", "cert", "reason")} == {
        "method": "GET", "path": "/seq/9", "status": 200, "bytes_in": 0,
        "client": line["client"], "cert": "-", "reason": "-",
    }
    assert line["client"].startswith("127.0.0.1:") and line["bytes_out"] > 0 and 0 < line["duration"] < 5


def test_client_auth_certificate_and_proxy_header_reach_the_backend(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, ca: CA) -> None:
    """tls.client_auth + proxy_protocol v1 in http mode: the backend reads one PROXY line per
    backend connection, then requests that carry the verified certificate as RFC 9440 Client-Cert
    (a forged one removed); the access line names the subject."""
    client = issue_client(ca, tmp_path / "clients", "partner", cn="payments.google.com")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    config = http_config(proxy_config, f"127.0.0.1:{server.getsockname()[1]}", proxy_protocol="v1")
    config["tls"] = {**config["tls"], "client_auth": {"mode": "require", "ca": str(tls_files.cafile)}}
    with server, ProxyProcess(tmp_path, config) as proxy:
        received: list[bytes] = []

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                data = b""
                for _ in range(2):  # two requests on one backend connection
                    while data.count(b"\r\n\r\n") < len(received) + 1:
                        data += conn.recv(65536)
                    received.append(data)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", str(tls_files.cafile), "--cert", str(client.cert),
             "--key", str(client.key), "--resolve", f"{SERVER_NAME}:{proxy.port}:127.0.0.1",
             "-H", "Client-Cert: :ZXZpbA==:", f"https://{SERVER_NAME}:{proxy.port}/a", f"https://{SERVER_NAME}:{proxy.port}/b"],
            capture_output=True, text=True, timeout=30,
        )
        thread.join(10)
        assert result.stdout == "okok", result.stderr
        stream = received[-1]
        assert stream.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
        assert stream.count(b"PROXY ") == 1
        leaf = base64.b64encode(client.der)
        assert stream.count(b"Client-Cert: :" + leaf + b":\r\n") == 2
        assert b"ZXZpbA" not in stream
        log = proxy.wait_for_log("path=/b")
        assert "cert=CN=payments.google.com" in log


class RacingBackend:
    """A keep-alive backend whose idle timer always wins: on each connection it answers the
    first request, then closes when the next one arrives, without answering it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.heads: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.heads.append(data.split(b"\r\n", 1)[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(65536)  # the next request: closed unanswered

    def close(self) -> None:
        self.listener.close()


def test_get_on_a_connection_the_backend_drops_is_sent_again_post_is_a_502(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    """Python's http.client keeps one TLS connection; the backend closes its kept-alive
    connection as the second request arrives. A GET is sent again on a new connection and
    answered (the client sees two 200s); a POST is answered 502, never sent twice."""
    racing = RacingBackend()
    try:
        with ProxyProcess(tmp_path, http_config(proxy_config, racing.address)) as proxy:
            client = connection(proxy, tls_files)
            for path in ("/a", "/b"):
                client.request("GET", path)
                response = client.getresponse()
                assert (response.status, response.read()) == (200, b"ok")
            assert racing.heads == [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1"]
            assert racing.connections == 2
            client.close()
            proxy.wait_for_log("sent again on a new connection")

            client = connection(proxy, tls_files)
            client.request("GET", "/c")
            assert client.getresponse().read() == b"ok"
            client.request("POST", "/pay", body=b"{}")
            response = client.getresponse()
            assert response.status == 502
            response.read()
            client.close()
            assert racing.heads[-1] == b"GET /c HTTP/1.1"
            assert racing.connections == 3
    finally:
        racing.close()
