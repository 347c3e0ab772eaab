"""Client certificates end to end: the real process, real clients (curl, openssl s_client, Python
ssl), a backend that reads the PROXY header with its own parser, metrics and the log line."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.integration.test_metrics import scrape, value
from tests.support.backends import free_port
from tests.support.clientpki import ClientCert, issue_client, self_signed_client
from tests.support.pki import CA
from tests.support.ppbackends import ProxyHttpBackend
from tests.support.proxy import ProxyProcess, client_context, tls_connect

PROFILES = ("card-fop", "card-fop-tls13")
REASONS = ("no_certificate", "untrusted", "expired", "not_allowed")


@dataclass
class Clients:
    folder: Path
    ca: CA
    ca_file: Path
    google: ClientCert
    stranger: ClientCert
    untrusted: ClientCert
    expired: ClientCert
    pinned: ClientCert


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Clients:
    folder = tmp_path_factory.mktemp("clients")
    ca = CA("clients CA")
    now = datetime.now(UTC)
    pinned = self_signed_client(folder, "pinned", cn="pinned.partner.example")
    ca_file = folder / "clients-ca.pem"
    # The CA and a pinned self-signed leaf side by side in one bundle.
    ca_file.write_bytes(ca.cert_pem + pinned.cert.read_bytes())
    return Clients(
        folder, ca, ca_file,
        google=issue_client(ca, folder, "google", cn="payments.google.com", uris=("spiffe://google.com/pay",)),
        stranger=issue_client(ca, folder, "stranger", cn="stranger.example"),
        untrusted=issue_client(CA("another CA"), folder, "untrusted", cn="payments.google.com"),
        expired=issue_client(ca, folder, "expired", cn="payments.google.com",
                             not_before=now - timedelta(days=60), not_after=now - timedelta(days=1)),
        pinned=pinned,
    )


def start(tmp_path: Path, proxy_config: ConfigFactory, backend: ProxyHttpBackend, profile: str,
          client_auth: dict[str, Any], proxy_protocol: str = "v2") -> tuple[ProxyProcess, int]:
    metrics_port = free_port()
    config = proxy_config(backend.address, proxy_protocol=proxy_protocol, metrics={"listen": f"127.0.0.1:{metrics_port}"})
    config["tls"] = {**config["tls"], "profile": profile, "client_auth": client_auth}
    return ProxyProcess(tmp_path, config), metrics_port


# ---- the three clients ---------------------------------------------------------------------------


def curl(proxy: ProxyProcess, tls_files: TLSFiles, cert: ClientCert | None) -> tuple[int, str]:
    """(curl's exit code, body) for GET / through the proxy."""
    args = ["curl", "-sS", "--max-time", "10", "--cacert", str(tls_files.cafile),
            "--resolve", f"{SERVER_NAME}:{proxy.port}:127.0.0.1", f"https://{SERVER_NAME}:{proxy.port}/"]
    if cert is not None:
        args[1:1] = ["--cert", str(cert.cert), "--key", str(cert.key)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout + done.stderr


def s_client(proxy: ProxyProcess, tls_files: TLSFiles, cert: ClientCert | None) -> str:
    """openssl s_client's whole output after sending one request (it prints alerts it got)."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-servername", SERVER_NAME,
            "-CAfile", str(tls_files.cafile), "-verify_return_error", "-ign_eof"]
    if cert is not None:
        args += ["-cert", str(cert.cert), "-key", str(cert.key)]
    done = subprocess.run(args, input=f"GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n", capture_output=True,
                          text=True, timeout=30)
    return done.stdout + done.stderr


def python_get(proxy: ProxyProcess, tls_files: TLSFiles, cert: ClientCert | None) -> dict[str, Any]:
    """GET / with Python's ssl; the backend's JSON answer. Raises ssl.SSLError on a refusal."""
    ctx = client_context(tls_files.cafile)
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    with tls_connect("127.0.0.1", proxy.port, ctx, SERVER_NAME) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        raise ssl.SSLError("closed without an answer")
    return json.loads(data.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


def refused_by_python(proxy: ProxyProcess, tls_files: TLSFiles, cert: ClientCert | None) -> str:
    """The SSLError reason Python's client sees (in TLS 1.3 on the first read, after its Finished)."""
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as caught:
        python_get(proxy, tls_files, cert)
    return getattr(caught.value, "reason", None) or type(caught.value).__name__


# ---- require ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_require_admits_only_allowed_certificates(
    tmp_path: Path, profile: str, proxy_config: ConfigFactory, tls_files: TLSFiles, clients: Clients
) -> None:
    """require + allow (cn or pin): every admitted client reaches the backend with its identity in
    the PROXY v2 header; each refused one fails with its alert, no byte reaches the backend, and
    the metric and the log line say why."""
    auth = {"mode": "require", "ca": str(clients.ca_file),
            "allow": {"cn": ["payments.google.com"], "sha256": [clients.pinned.fingerprint]}}
    with ProxyHttpBackend() as backend:
        proxy, metrics_port = start(tmp_path, proxy_config, backend, profile, auth)
        with proxy:
            # Admitted: curl, s_client and Python with Google's certificate; the pinned one.
            code, body = curl(proxy, tls_files, clients.google)
            assert code == 0, body
            seen = json.loads(body)
            out = s_client(proxy, tls_files, clients.google)
            assert "HTTP/1.1 200 OK" in out, out
            answer = python_get(proxy, tls_files, clients.google)
            pinned = python_get(proxy, tls_files, clients.pinned)
            assert backend.connections == 4

            # Refused, by each client, with the alert OpenSSL sends for the reason.
            code, text = curl(proxy, tls_files, None)
            assert code != 0
            assert re.search(r"alert (handshake failure|certificate required)", s_client(proxy, tls_files, None)), "no alert"
            assert refused_by_python(proxy, tls_files, None) in ("SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV13_ALERT_CERTIFICATE_REQUIRED")
            code, text = curl(proxy, tls_files, clients.untrusted)
            assert code != 0 and "unknown ca" in text.lower(), text
            assert "alert unknown ca" in s_client(proxy, tls_files, clients.untrusted)
            assert refused_by_python(proxy, tls_files, clients.expired) == "SSLV3_ALERT_CERTIFICATE_EXPIRED"
            assert "alert certificate expired" in s_client(proxy, tls_files, clients.expired)
            code, text = curl(proxy, tls_files, clients.stranger)
            assert code != 0 and "handshake failure" in text.lower(), text
            assert refused_by_python(proxy, tls_files, clients.stranger) == "SSLV3_ALERT_HANDSHAKE_FAILURE"

            # Nothing of a refused connection reached the backend: not even a dial.
            assert backend.connections == 4
            assert backend.errors == []
            body, samples = scrape(metrics_port)
            log = proxy.wait_for_log("reason=client_auth:not_allowed", count=2)
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, check.stdout + check.stderr

    metric = "fopproxy_tls_client_auth_failures_total"
    assert {r: value(samples, metric, reason=r) for r in REASONS} == {
        "no_certificate": 3, "untrusted": 2, "expired": 2, "not_allowed": 2,
    }
    # The PROXY v2 header each admitted connection began with, as the independent reader saw it.
    version = "TLSv1.3" if profile == "card-fop-tls13" else "TLSv1.2"
    for got in (seen, answer):
        assert got["authority"] == SERVER_NAME and got["family"] == "TCP4" and got["src"] == "127.0.0.1"
        assert got["ssl"]["client"] == 7 and got["ssl"]["verify"] == 0
        assert got["ssl"]["cn"] == "payments.google.com" and got["ssl"]["version"] == version
        assert got["ssl"]["key_alg"] in ("EC256", "RSA2048") and got["ssl"]["sig_alg"] == "ecdsa-with-SHA256"
    assert pinned["ssl"]["cn"] == "pinned.partner.example"
    # One log line per admitted connection carries the certificate's subject and SHA-256.
    assert log.count(f'client_subject="CN=payments.google.com" client_sha256={clients.google.fingerprint}') == 3
    assert f"client_sha256={clients.pinned.fingerprint}" in log
    for reason, count in (("no_certificate", 3), ("untrusted", 2), ("expired", 2)):
        assert log.count(f"reason=client_auth:{reason}") == count, reason
    # A refused certificate is named on its line too: whose it was is what an operator needs.
    for reason, cert, count in (("untrusted", clients.untrusted, 2), ("expired", clients.expired, 2),
                                ("not_allowed", clients.stranger, 2)):
        assert log.count(f"reason=client_auth:{reason} client_subject=") == count, reason
        assert log.count(f"client_sha256={cert.fingerprint}") == count, reason
    assert "reason=client_auth:no_certificate client_subject" not in log


# ---- optional ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_optional_serves_without_certificate_and_refuses_a_bad_one(
    tmp_path: Path, profile: str, proxy_config: ConfigFactory, tls_files: TLSFiles, clients: Clients
) -> None:
    """optional: no certificate is served (the header says so: no cert flags, verify non-zero, no
    CN); a good one is passed on; an untrusted, expired or not-allowed one is refused."""
    auth = {"mode": "optional", "ca": str(clients.ca_file), "allow": {"uri": ["spiffe://google.com/pay"]}}
    with ProxyHttpBackend() as backend:
        proxy, metrics_port = start(tmp_path, proxy_config, backend, profile, auth)
        with proxy:
            code, body = curl(proxy, tls_files, None)
            assert code == 0, body
            anonymous = json.loads(body)
            with_cert = python_get(proxy, tls_files, clients.google)
            assert "HTTP/1.1 200 OK" in s_client(proxy, tls_files, None)
            assert "alert unknown ca" in s_client(proxy, tls_files, clients.untrusted)
            assert refused_by_python(proxy, tls_files, clients.expired) == "SSLV3_ALERT_CERTIFICATE_EXPIRED"
            code, text = curl(proxy, tls_files, clients.stranger)
            assert code != 0, text
            assert backend.connections == 3
            _body, samples = scrape(metrics_port)
    assert anonymous["ssl"]["client"] == 1 and anonymous["ssl"]["verify"] != 0 and anonymous["ssl"]["cn"] is None
    assert with_cert["ssl"]["client"] == 7 and with_cert["ssl"]["cn"] == "payments.google.com"
    metric = "fopproxy_tls_client_auth_failures_total"
    assert {r: value(samples, metric, reason=r) for r in REASONS} == {
        "no_certificate": 0, "untrusted": 1, "expired": 1, "not_allowed": 1,
    }


def test_scan_sees_fopproxy_require_and_the_ca_names(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, clients: Clients
) -> None:
    """`fopproxy scan` against fopproxy with require: `required`, naming the CA and the pin."""
    from tests.integration.test_scan import run_scan

    with ProxyHttpBackend() as backend:
        proxy, _ = start(tmp_path, proxy_config, backend, "card-fop", {"mode": "require", "ca": str(clients.ca_file)})
        with proxy:
            _code, report = run_scan(f"127.0.0.1:{proxy.port}", tls_files.cafile)
    assert report["facts"]["client_auth"] == {
        "mode": "required", "ca_names": ["CN=clients CA", "CN=pinned.partner.example"],
    }


def test_connection_with_client_auth_off_logs_no_certificate_fields(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, clients: Clients
) -> None:
    """Off: the client's certificate is not even asked for; the log line is unchanged."""
    with ProxyHttpBackend() as backend:
        proxy, _ = start(tmp_path, proxy_config, backend, "card-fop", {"mode": "off"}, proxy_protocol="v1")
        with proxy:
            code, body = curl(proxy, tls_files, clients.google)
            assert code == 0, body
            log = proxy.wait_for_log("reason=done")
        [header] = backend.headers
    assert (header.version, header.family, header.src) == (1, "TCP4", "127.0.0.1")
    assert "client_subject" not in log


def test_python_socket_sees_its_own_port_in_the_header(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, clients: Clients
) -> None:
    """The source port in the header is the client's own (not the proxy's backend socket)."""
    with ProxyHttpBackend() as backend:
        proxy, _ = start(tmp_path, proxy_config, backend, "card-fop", {"mode": "off"})
        with proxy:
            raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            port = raw.getsockname()[1]
            with client_context(tls_files.cafile).wrap_socket(raw, server_hostname=SERVER_NAME) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
                while sock.recv(65536):
                    pass
        [header] = backend.headers
    assert (header.sport, header.dport) == (port, proxy.port)


def test_refusals_are_summed_over_workers(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, clients: Clients
) -> None:
    """workers: 2: the supervisor's scrape sums every worker's refusals."""
    metrics_port = free_port()
    with ProxyHttpBackend() as backend:
        config = proxy_config(backend.address, workers=2, proxy_protocol="v2", metrics={"listen": f"127.0.0.1:{metrics_port}"})
        config["tls"] = {**config["tls"], "client_auth": {"mode": "require", "ca": str(clients.ca_file)}}
        with ProxyProcess(tmp_path, config) as proxy:
            for _ in range(6):
                refused_by_python(proxy, tls_files, None)
            for _ in range(4):
                refused_by_python(proxy, tls_files, clients.untrusted)
            assert python_get(proxy, tls_files, clients.stranger)["ssl"]["cn"] == "stranger.example"
            _body, samples = scrape(metrics_port)
    metric = "fopproxy_tls_client_auth_failures_total"
    assert {r: value(samples, metric, reason=r) for r in REASONS} == {
        "no_certificate": 6, "untrusted": 4, "expired": 0, "not_allowed": 0,
    }


def test_resumed_session_keeps_the_identity_with_the_session_flag(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, clients: Clients
) -> None:
    """TLS 1.2 resumption (session-ID cache): no certificate is sent again, the session's is the
    identity; the v2 header says so (CERT_SESS without CERT_CONN) and the log still names it."""
    auth = {"mode": "require", "ca": str(clients.ca_file), "allow": {"cn": ["payments.google.com"]}}
    with ProxyHttpBackend() as backend:
        proxy, _ = start(tmp_path, proxy_config, backend, "card-fop", auth)
        with proxy:
            ctx = client_context(tls_files.cafile)
            ctx.load_cert_chain(str(clients.google.cert), str(clients.google.key))
            answers = []
            session = None
            for _ in range(2):
                raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                with ctx.wrap_socket(raw, server_hostname=SERVER_NAME, session=session) as sock:
                    sock.sendall(f"GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n".encode())
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                    answers.append((sock.session_reused, json.loads(data.partition(b"\r\n\r\n")[2])))
                    session = sock.session
            log = proxy.wait_for_log("reason=done", count=2)
    (first_reused, first), (second_reused, second) = answers
    assert (first_reused, second_reused) == (False, True)
    assert first["ssl"]["client"] == 7 and second["ssl"]["client"] == 5
    assert second["ssl"]["verify"] == 0 and second["ssl"]["cn"] == "payments.google.com"
    assert log.count(f"client_sha256={clients.google.fingerprint}") == 2
