"""The real fopproxy process on loopback: suites, refusals with alerts, streaming, half-close."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support.backends import ThreadedBackend, free_port, http_handler
from tests.support.expected import TLS12_SUITES
from tests.support.proxy import ProxyProcess, client_context, read_to_end, tls_connect


@pytest.fixture
def proxy(tmp_path: Path, proxy_config: ConfigFactory, echo_backend: ThreadedBackend) -> Iterator[ProxyProcess]:
    with ProxyProcess(tmp_path, proxy_config(echo_backend.address)) as running:
        yield running


def _echo_roundtrip(sock: ssl.SSLSocket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


@pytest.mark.parametrize("suite", TLS12_SUITES)
def test_each_card_fop_suite_negotiates_with_dual_certificates(proxy: ProxyProcess, tls_files: TLSFiles, suite: str) -> None:
    """Each of the six suites works, and the certificate type follows the suite (ECDSA vs RSA)."""
    ctx = client_context(tls_files.cafile, ciphers=suite, maximum_version=ssl.TLSVersion.TLSv1_2)
    with tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME) as sock:
        assert sock.version() == "TLSv1.2"
        assert sock.cipher()[0] == suite
        assert _echo_roundtrip(sock, b"ping " + suite.encode()) == b"ping " + suite.encode()


def test_server_prefers_ecdsa_gcm(proxy: ProxyProcess, tls_files: TLSFiles) -> None:
    """With every suite offered, the documented server preference picks ECDHE-ECDSA-AES128-GCM."""
    ctx = client_context(tls_files.cafile)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME) as sock:
        assert sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"


@pytest.mark.parametrize(
    "settings",
    [
        {"maximum_version": ssl.TLSVersion.TLSv1_1, "minimum_version": ssl.TLSVersion.TLSv1, "ciphers": "DEFAULT:@SECLEVEL=0"},
        {"minimum_version": ssl.TLSVersion.TLSv1_3},
        {"ciphers": "ECDHE-RSA-AES256-GCM-SHA384", "maximum_version": ssl.TLSVersion.TLSv1_2},
        {"ciphers": "AES128-GCM-SHA256", "maximum_version": ssl.TLSVersion.TLSv1_2},
        {"ciphers": "ECDHE-ECDSA-AES256-SHA", "maximum_version": ssl.TLSVersion.TLSv1_2},
    ],
    ids=["tls1.0-1.1", "tls1.3-only", "aes256-gcm", "static-rsa", "cbc-sha1"],
)
def test_non_compliant_clients_are_refused(proxy: ProxyProcess, tls_files: TLSFiles, settings: dict) -> None:
    """Old protocols, TLS 1.3 under card-fop and non-listed suites all fail the handshake."""
    ctx = client_context(tls_files.cafile, **settings)
    with pytest.raises(ssl.SSLError) as failure:
        tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME).close()
    # A real alert, not an unexpected EOF.
    assert "ALERT" in (failure.value.reason or "")


def _s_client(port: int, *args: str) -> str:
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SERVER_NAME, *args],
        input="", capture_output=True, text=True, timeout=30,
    )
    return result.stdout + result.stderr


def test_openssl_s_client_tls11_sees_protocol_version_alert(proxy: ProxyProcess) -> None:
    """openssl s_client -tls1_1 (at SECLEVEL 0) receives alert 70 protocol_version."""
    output = _s_client(proxy.port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "alert protocol version" in output
    assert "alert number 70" in output


def test_openssl_s_client_unlisted_suite_sees_handshake_failure(proxy: ProxyProcess) -> None:
    output = _s_client(proxy.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
    assert "alert handshake failure" in output
    assert "alert number 40" in output


def test_openssl_s_client_compliant_suite_succeeds(proxy: ProxyProcess, tls_files: TLSFiles) -> None:
    output = _s_client(proxy.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256", "-CAfile", str(tls_files.cafile))
    assert "Cipher is ECDHE-RSA-AES128-GCM-SHA256" in output
    assert "Verify return code: 0 (ok)" in output


def test_curl_through_the_proxy(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    """curl, verifying the chain and the name, gets the backend's HTTP answer."""
    with ThreadedBackend(http_handler) as backend, ProxyProcess(tmp_path, proxy_config(backend.address)) as proxy:
        result = subprocess.run(
            ["curl", "-sS", "--cacert", str(tls_files.cafile), "--resolve", f"{SERVER_NAME}:{proxy.port}:127.0.0.1",
             f"https://{SERVER_NAME}:{proxy.port}/x", "-w", "\n%{http_code} %{ssl_verify_result}"],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.endswith("200 0")
        assert "hello from the backend" in result.stdout
        log = proxy.wait_for_log("reason=done")
    assert f"sni={SERVER_NAME}" in log


async def test_64_mib_round_trip_byte_exact(proxy: ProxyProcess, tls_files: TLSFiles) -> None:
    """64 MiB of random bytes go up and come back through the echo backend unchanged.

    One event loop drives both directions: an SSL socket shared by two threads is not safe
    (OpenSSL objects must not be read and written concurrently), and would test the client.
    """
    import asyncio

    size = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    sent_hash = hashlib.sha256()
    received_hash = hashlib.sha256()
    reader, writer = await asyncio.open_connection(
        proxy.host, proxy.port, ssl=client_context(tls_files.cafile), server_hostname=SERVER_NAME
    )

    async def send() -> None:
        for i in range(64):
            chunk = bytes([i]) + block[1:]
            sent_hash.update(chunk)
            writer.write(chunk)
            await writer.drain()

    async def receive() -> int:
        received = 0
        while received < size:
            chunk = await reader.read(1 << 20)
            assert chunk, f"stream ended early after {received} bytes:\n{proxy.log()[-2000:]}"
            received_hash.update(chunk)
            received += len(chunk)
        return received

    _, received = await asyncio.wait_for(asyncio.gather(send(), receive()), timeout=120)
    writer.close()
    assert received == size
    assert received_hash.hexdigest() == sent_hash.hexdigest()


def test_client_half_close_still_receives_answer(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    """The client sends its request and close_notify; the backend answers after reading EOF."""
    def answer_after_eof(conn: socket.socket) -> None:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(b"got " + str(len(data)).encode())
        conn.shutdown(socket.SHUT_WR)

    with ThreadedBackend(answer_after_eof) as backend, ProxyProcess(tmp_path, proxy_config(backend.address)) as proxy:
        ctx = client_context(tls_files.cafile)
        raw = socket.create_connection((proxy.host, proxy.port), timeout=10)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
        _drive(raw, tls, incoming, outgoing, tls.do_handshake)
        tls.write(b"x" * 100_000)
        raw.sendall(outgoing.read())
        _drive(raw, tls, incoming, outgoing, tls.unwrap, tolerate_want_read=True)  # our close_notify
        raw.sendall(outgoing.read())
        answer = b""
        closed_cleanly = False
        while True:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                data = raw.recv(65536)
                if not data:
                    break
                incoming.write(data)
            except ssl.SSLZeroReturnError:
                closed_cleanly = True
                break
        raw.close()
    assert answer == b"got 100000"
    assert closed_cleanly, "the proxy must end the stream with close_notify after the last byte"


def _drive(raw: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, step, tolerate_want_read: bool = False) -> None:
    for _ in range(100):
        try:
            step()
            return
        except ssl.SSLWantReadError:
            if outgoing.pending:
                raw.sendall(outgoing.read())
            if tolerate_want_read:
                return
            data = raw.recv(65536)
            if not data:
                raise ConnectionError("closed during handshake") from None
            incoming.write(data)
    raise AssertionError("handshake did not finish")


def test_backend_down_closes_client_promptly(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    """With nothing listening on the backend port, the client's connection ends at once."""
    dead = f"127.0.0.1:{free_port()}"
    with ProxyProcess(tmp_path, proxy_config(dead)) as proxy:
        ctx = client_context(tls_files.cafile)
        started = time.monotonic()
        with tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME, ragged_eof_is_error=True) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            data, how = read_to_end(sock)
        assert data == b""
        assert how != "close_notify", "an answer that never came must not look complete"
        assert time.monotonic() - started < 2.0
        log = proxy.wait_for_log("backend_connect:refused")
    assert f"backend {dead} unavailable (refused)" in log


def test_handshake_timeout_closes_silent_client(tmp_path: Path, proxy_config: ConfigFactory, echo_backend: ThreadedBackend) -> None:
    """A client that connects and sends nothing is closed at the handshake timeout."""
    config = proxy_config(echo_backend.address, timeouts={"handshake": 1, "connect": 2, "idle": 60, "drain": 5})
    with ProxyProcess(tmp_path, config) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(100) == b""
            elapsed = time.monotonic() - started
        assert 0.8 < elapsed < 3.0
        proxy.wait_for_log("handshake_error:timeout")


def test_idle_timeout_closes_quiet_connection(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    config = proxy_config(echo_backend.address, timeouts={"handshake": 5, "connect": 2, "idle": 1, "drain": 5})
    with ProxyProcess(tmp_path, config) as proxy:
        with tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME) as sock:
            assert _echo_roundtrip(sock, b"hi") == b"hi"
            started = time.monotonic()
            assert sock.recv(100) == b""  # close_notify, then EOF
            assert 0.8 < time.monotonic() - started < 3.0
        proxy.wait_for_log("reason=idle_timeout")


def test_max_connections_sheds_before_handshake(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """Past max_connections new clients are closed before any TLS; earlier ones keep working."""
    with ProxyProcess(tmp_path, proxy_config(echo_backend.address, max_connections=2)) as proxy:
        ctx = client_context(tls_files.cafile)
        first = tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME)
        second = tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME).close()
        assert _echo_roundtrip(first, b"still here") == b"still here"
        first.close()
        second.close()
        # Both slots are free once both closes are logged (the shed client logs no such line).
        proxy.wait_for_log("connection closed", count=2)
        with tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME) as again:
            assert _echo_roundtrip(again, b"back") == b"back"


def test_sigterm_drains_open_connection_then_exits_zero(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """After SIGTERM new connections are refused, the open one keeps working, exit code 0."""
    import signal
    proxy = ProxyProcess(tmp_path, proxy_config(echo_backend.address))
    ctx = client_context(tls_files.cafile)
    with tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME) as sock:
        proxy.signal(signal.SIGTERM)
        proxy.wait_for_log("draining 1 open connections")  # logged once the listener is closed
        with pytest.raises(OSError):
            socket.create_connection((proxy.host, proxy.port), timeout=2).close()
        assert _echo_roundtrip(sock, b"during drain") == b"during drain"
    assert proxy.proc.wait(15) == 0
    proxy.stop()


def test_ipv6_listener(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        port = free_port("::1")
    except OSError:
        pytest.skip("::1 is not configured on this machine")
    with ProxyProcess(tmp_path, proxy_config(echo_backend.address, listen=f"[::1]:{port}")):
        with tls_connect("::1", port, client_context(tls_files.cafile), SERVER_NAME) as sock:
            assert _echo_roundtrip(sock, b"v6") == b"v6"


def test_unix_socket_backend(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    path = tmp_path / "api.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(1024).upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with ProxyProcess(tmp_path, proxy_config("unix:api.sock")) as proxy:
        with tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME) as sock:
            sock.sendall(b"hello unix")
            assert sock.recv(100) == b"HELLO UNIX"
    server.close()


def test_json_connection_log(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """logging.format json: one parseable object per line with the connection's fields."""
    import json

    config = proxy_config(echo_backend.address, logging={"level": "info", "format": "json"})
    with ProxyProcess(tmp_path, config) as proxy:
        with tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME) as sock:
            assert _echo_roundtrip(sock, b"json please") == b"json please"
        proxy.wait_for_log('"reason":"done"')
        events = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    closed = [e for e in events if e.get("msg") == "connection closed"]
    assert closed
    event = closed[-1]
    assert event["sni"] == SERVER_NAME
    assert event["version"] == "TLSv1.2"
    assert event["bytes_to_backend"] == len(b"json please")
    assert event["bytes_to_client"] == len(b"json please")
    assert event["client"].startswith("127.0.0.1:")


def test_second_sigterm_exits_at_once(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    """With a long drain and an open connection, a second signal ends the wait immediately."""
    import signal

    config = proxy_config(echo_backend.address, timeouts={"handshake": 5, "connect": 2, "idle": 60, "drain": 60})
    proxy = ProxyProcess(tmp_path, config)
    sock = tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME)
    try:
        assert _echo_roundtrip(sock, b"x") == b"x"
        proxy.signal(signal.SIGTERM)
        proxy.wait_for_log("draining 1 open connections")
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert proxy.proc.wait(10) == 1
        assert time.monotonic() - started < 5
    finally:
        sock.close()
        proxy.stop()
