"""Resumption across workers and pods: tickets issued by one process resume on any other.

The real process, a real client (Python's ssl, and `openssl s_client` as an independent witness
for early data), 200 reconnections each offering the session it last got.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fopproxy.tickets import write_key_file
from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support.backends import ThreadedBackend
from tests.support.proxy import ProxyProcess, client_context, run_cli

RECONNECTIONS = 200


def _reconnect(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession | None]:
    """One connection offering `session`: an echo round trip; (resumed?, the session to keep)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=SERVER_NAME, session=session) as tls:
        tls.sendall(b"ping")
        assert tls.recv(16) == b"ping"  # TLS 1.3 tickets arrive with (before) this answer
        return bool(tls.session_reused), tls.session


def _resumed_fraction(port: int, ctx: ssl.SSLContext, count: int = RECONNECTIONS) -> float:
    _, session = _reconnect(port, ctx, None)
    resumed = 0
    for _ in range(count):
        reused, new = _reconnect(port, ctx, session)
        resumed += reused
        session = new or session
    return resumed / count


def _client(tls_files: TLSFiles, version: str) -> ssl.SSLContext:
    ctx = client_context(tls_files.cafile)
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    return ctx


def _config(proxy_config: ConfigFactory, backend: ThreadedBackend, version: str, **tickets: Any) -> dict[str, Any]:
    config = proxy_config(backend.address)
    config["tls"]["profile"] = "card-fop-tls13" if version == "TLSv1_3" else "card-fop"
    if tickets:
        config["tls"]["session_tickets"] = tickets
    return config


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_reconnections_resume_whichever_worker_they_reach(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend,
    workers: int, version: str,
) -> None:
    """>= 95 % of 200 reconnections resume with workers: 2 and 4, TLS 1.2 and TLS 1.3."""
    config = _config(proxy_config, echo_backend, version)
    config["workers"] = workers
    with ProxyProcess(tmp_path, config) as proxy:
        fraction = _resumed_fraction(proxy.port, _client(tls_files, version))
    print(f"workers {workers} {version}: {fraction:.1%} of {RECONNECTIONS} reconnections resumed")
    assert fraction >= 0.95


def test_without_shared_keys_reconnections_miss_other_workers(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend,
) -> None:
    """The control: tickets off, each worker's session-ID cache is its own, so about 1/N resume."""
    config = _config(proxy_config, echo_backend, "TLSv1_2", enabled=False)
    config["workers"] = 4
    with ProxyProcess(tmp_path, config) as proxy:
        fraction = _resumed_fraction(proxy.port, _client(tls_files, "TLSv1_2"), 100)
    print(f"tickets off, workers 4: {fraction:.1%} resumed")
    assert fraction < 0.8


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_key_file_shared_by_two_pods(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend, version: str,
) -> None:
    """Two processes holding one key file resume each other's sessions; without it they don't."""
    key_file = tmp_path / "tickets.key"
    write_key_file(str(key_file))
    ctx = _client(tls_files, version)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    with (
        ProxyProcess(tmp_path / "a", _config(proxy_config, echo_backend, version, key_file=str(key_file))) as a,
        ProxyProcess(tmp_path / "b", _config(proxy_config, echo_backend, version, key_file=str(key_file))) as b,
        ProxyProcess(tmp_path / "c", _config(proxy_config, echo_backend, version)) as c,
    ):
        _, session = _reconnect(a.port, ctx, None)
        resumed, _ = _reconnect(b.port, ctx, session)
        assert resumed, "a ticket from pod a did not resume on pod b"
        _, session = _reconnect(a.port, ctx, None)
        resumed, _ = _reconnect(c.port, ctx, session)
        assert not resumed, "a pod without the key file resumed pod a's session"


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_key_file_rotation_keeps_previous_key(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend,
    version: str,
) -> None:
    """New key first: old tickets still resume (their ClientHello names the older key, so the
    connection moves to the context that opens every key); old key removed: full handshake."""
    key_file = tmp_path / "tickets.key"
    write_key_file(str(key_file))
    old_key = key_file.read_bytes()
    ctx = _client(tls_files, version)
    config = _config(proxy_config, echo_backend, version, key_file=str(key_file))
    config["tls"]["reload_interval"] = 0.2
    with ProxyProcess(tmp_path, config) as proxy:
        _, session = _reconnect(proxy.port, ctx, None)
        write_key_file(str(tmp_path / "new.key"))
        new_key = (tmp_path / "new.key").read_bytes()
        key_file.write_bytes(new_key + old_key)
        proxy.wait_for_log("session ticket keys", count=2)
        resumed, _ = _reconnect(proxy.port, ctx, session)
        assert resumed, "a ticket under the previous key must still resume"
        key_file.write_bytes(new_key)
        proxy.wait_for_log("session ticket keys", count=3)
        resumed, _ = _reconnect(proxy.port, ctx, session)
        assert not resumed, "a ticket under a removed key must not resume"


def test_early_data_is_refused(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend,
) -> None:
    """TLS 1.3 tickets allow no 0-RTT: openssl s_client does not even send it; scan says so."""
    openssl = shutil.which("openssl")
    assert openssl is not None
    config = _config(proxy_config, echo_backend, "TLSv1_3")
    with ProxyProcess(tmp_path, config) as proxy:
        sess = tmp_path / "sess.pem"
        request = tmp_path / "early.txt"
        request.write_bytes(b"early data that must not be replayed")
        base = [openssl, "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-servername", SERVER_NAME,
                "-tls1_3", "-CAfile", str(tls_files.cafile)]
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([*base, "-sess_out", str(sess), "-ign_eof"], input=b"hello\n",
                           capture_output=True, timeout=2, check=False)
        assert sess.exists(), "no TLS 1.3 session was saved"
        second = subprocess.run([*base, "-sess_in", str(sess), "-early_data", str(request)],
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False)
        out = second.stdout.decode(errors="replace") + second.stderr.decode(errors="replace")
        assert "Reused, TLSv1.3" in out, out
        assert "Early data was accepted" not in out, out
        assert "Early data was not sent" in out or "Early data was rejected" in out, out
        scan = run_cli("scan", f"127.0.0.1:{proxy.port}", "--servername", SERVER_NAME,
                       "--cafile", str(tls_files.cafile), "--json")
    assert '"max_early_data": 0' in scan.stdout, scan.stdout + scan.stderr


def test_resumptions_are_counted_across_workers(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend,
) -> None:
    """fopproxy_tls_resumptions_total (summed by the supervisor) equals what the client saw."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from tests.support.backends import free_port

    config = _config(proxy_config, echo_backend, "TLSv1_2")
    config["workers"] = 2
    config["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
    ctx = _client(tls_files, "TLSv1_2")
    with ProxyProcess(tmp_path, config) as proxy:
        _, session = _reconnect(proxy.port, ctx, None)
        seen = 0
        for _ in range(30):
            reused, session = _reconnect(proxy.port, ctx, session)
            seen += reused
        url = f"http://{config['metrics']['listen']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("fopproxy_tls_resumptions_total", (("version", "TLSv1.2"),))] == seen == 30
    handshakes = sum(v for (name, _), v in values.items() if name == "fopproxy_tls_handshakes_total")
    assert handshakes == 31
    assert values[("fopproxy_tls_ticket_key_rotations_total", ())] == 0


def test_ticket_key_command_writes_a_private_key_file_once(tmp_path: Path) -> None:
    """`fopproxy ticket-key FILE`: 80-byte keys, mode 0600; never over an existing file (exit 2)."""
    from fopproxy.tickets import parse_key_file

    path = tmp_path / "tickets.key"
    made = run_cli("ticket-key", str(path), "--keys", "2")
    assert made.returncode == 0, made.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(parse_key_file(path.read_bytes())) == 2
    again = run_cli("ticket-key", str(path))
    assert again.returncode == 2
    assert "cannot write" in again.stderr
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"\xff" * 81)
    config_path = _write_config(tmp_path, bad)
    checked = run_cli("check", "-c", str(config_path), "--json")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    rows = [r for r in json.loads(checked.stdout)["results"] if r["subject"] == "tls.session_tickets.key_file"]
    assert [r["status"] for r in rows] == ["FAIL"]
    assert "not a whole number" in rows[0]["detail"]
    refused = run_cli("run", "-c", str(config_path))
    assert refused.returncode == 2
    assert "tls.session_tickets.key_file" in refused.stderr and "Traceback" not in refused.stderr


def _write_config(tmp_path: Path, key_file: Path) -> Path:
    import yaml

    from tests.conftest import TLSFiles as Files
    from tests.support.pki import CA

    files = Files(tmp_path / "tls", CA())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:1", "backend": "127.0.0.1:2", "server_name": SERVER_NAME,
        "tls": {"certificates": files.entries(), "session_tickets": {"key_file": str(key_file)}},
    }))
    return path
