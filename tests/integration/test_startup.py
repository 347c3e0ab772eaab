"""What `fopproxy -c FILE` refuses at start, and the CLI's contract (exit codes, one-line errors)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from fopproxy import __version__
from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support.backends import ThreadedBackend
from tests.support.pki import CA
from tests.support.proxy import ProxyProcess, client_context, run_cli, tls_connect


def _run_config(tmp_path: Path, config: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("-c", str(path), timeout=30)
    return result.returncode, result.stderr


def _assert_clean_error(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.strip(), "an error must be printed"


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.strip() == f"fopproxy {__version__}"
    help_text = run_cli("--help").stdout
    for word in ("-c", "run", "demo", "exit codes"):
        assert word in help_text


def test_no_arguments_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage" in result.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"timeouts": {"idel": 5}}, "config error: timeouts.idel: unknown key"),
        ({"max_connections": "lots"}, "config error: max_connections: expected an integer, got a string"),
        ({"listen": "127.0.0.1"}, "config error: listen: '127.0.0.1' is not host:port"),
        ({"backend": "unix:"}, "config error: backend: unix: needs a socket path"),
    ],
)
def test_config_errors_exit_2_with_key_path(tmp_path: Path, proxy_config: ConfigFactory, change: dict[str, Any], expected: str) -> None:
    config = proxy_config("127.0.0.1:1")
    config.update(change)
    code, stderr = _run_config(tmp_path, config)
    assert code == 2
    _assert_clean_error(stderr)
    assert expected in stderr


def test_cipher_outside_profile_exit_2(tmp_path: Path, proxy_config: ConfigFactory) -> None:
    config = proxy_config("127.0.0.1:1")
    config["tls"]["ciphers"] = ["ECDHE-RSA-AES256-GCM-SHA384"]
    code, stderr = _run_config(tmp_path, config)
    assert code == 2
    assert "config error: tls.ciphers: [0] 'ECDHE-RSA-AES256-GCM-SHA384' is not a suite of profile 'card-fop'" in stderr


def test_missing_config_file_exit_2(tmp_path: Path) -> None:
    result = run_cli("-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    _assert_clean_error(result.stderr)
    assert "cannot read" in result.stderr


def _with_cert(proxy_config: ConfigFactory, entry: dict[str, str], **tls: Any) -> dict[str, Any]:
    config = proxy_config("127.0.0.1:1")
    config["tls"] = {"certificates": [entry], **tls}
    return config


def _cert_error(tmp_path: Path, config: dict[str, Any], expected: str) -> None:
    code, stderr = _run_config(tmp_path, config)
    assert code == 2, stderr
    _assert_clean_error(stderr)
    assert "tls.certificates[0]" in stderr
    assert expected in stderr


def test_key_mismatch_refused(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    entry = {"cert": str(tls_files.ecdsa.cert), "key": str(tls_files.rsa.key)}
    _cert_error(tmp_path, _with_cert(proxy_config, entry), "does not match certificate")


def test_expired_refused(tmp_path: Path, proxy_config: ConfigFactory, ca: CA) -> None:
    now = datetime.now(UTC)
    pair = ca.write(tmp_path, "old", [SERVER_NAME], not_before=now - timedelta(days=100), not_after=now - timedelta(days=1))
    _cert_error(tmp_path, _with_cert(proxy_config, {"cert": str(pair.cert), "key": str(pair.key)}), "expired on")


def test_not_yet_valid_refused(tmp_path: Path, proxy_config: ConfigFactory, ca: CA) -> None:
    now = datetime.now(UTC)
    pair = ca.write(tmp_path, "future", [SERVER_NAME], not_before=now + timedelta(days=2), not_after=now + timedelta(days=90))
    _cert_error(tmp_path, _with_cert(proxy_config, {"cert": str(pair.cert), "key": str(pair.key)}), "not valid before")


def test_small_rsa_refused(tmp_path: Path, proxy_config: ConfigFactory, ca: CA) -> None:
    pair = ca.write(tmp_path, "weak", [SERVER_NAME], "rsa", rsa_bits=1024)
    _cert_error(tmp_path, _with_cert(proxy_config, {"cert": str(pair.cert), "key": str(pair.key)}), "RSA key has 1024 bits, at least 2048 needed")


def test_key_type_without_selected_suite_refused(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    entry = {"cert": str(tls_files.rsa.cert), "key": str(tls_files.rsa.key)}
    config = _with_cert(proxy_config, entry, ciphers=["ECDHE-ECDSA-AES128-GCM-SHA256"])
    _cert_error(tmp_path, config, "a RSA key, but no selected suite uses one")


@pytest.mark.parametrize(
    ("names", "cn", "san"),
    [
        (["other.example.test"], None, True),
        (["*.example.test"], None, True),  # covers one label only: not a.b.example.test
        ([], "wrong.example.test", False),
    ],
    ids=["san-mismatch", "wildcard-too-deep", "cn-mismatch"],
)
def test_name_not_covered_refused(tmp_path: Path, proxy_config: ConfigFactory, ca: CA, names: list[str], cn: str | None, san: bool) -> None:
    pair = ca.write(tmp_path, "named", names, cn=cn, san=san)
    config = _with_cert(proxy_config, {"cert": str(pair.cert), "key": str(pair.key)})
    config["server_name"] = "a.b.example.test" if names == ["*.example.test"] else SERVER_NAME
    _cert_error(tmp_path, config, "does not cover server_name")


def test_wrong_chain_order_refused(tmp_path: Path, proxy_config: ConfigFactory, ca: CA) -> None:
    """Leaf followed by a certificate that did not sign it: refused, naming the chain problem."""
    pair = ca.write(tmp_path, "leaf", [SERVER_NAME], chain=False)
    pair.cert.write_bytes(pair.cert_pem + CA("another CA").cert_pem)
    entry = {"cert": str(pair.cert), "key": str(pair.key)}
    _cert_error(tmp_path, _with_cert(proxy_config, entry), "is not signed by the next one in the file")


def test_broken_pem_refused(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    _cert_error(tmp_path, _with_cert(proxy_config, {"cert": str(bad), "key": str(tls_files.ecdsa.key)}), "no complete PEM certificate in the file")


def test_missing_key_file_refused(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles) -> None:
    entry = {"cert": str(tls_files.ecdsa.cert), "key": str(tmp_path / "missing.key")}
    _cert_error(tmp_path, _with_cert(proxy_config, entry), "cannot read")


def test_encrypted_key_with_passphrase_file(tmp_path: Path, proxy_config: ConfigFactory, ca: CA, echo_backend: ThreadedBackend, tls_files: TLSFiles) -> None:
    """An encrypted key starts with its passphrase file; without it, a clear error."""
    pair = ca.write(tmp_path / "enc", "enc", [SERVER_NAME], password=b"s3cret pass")
    (tmp_path / "enc" / "pass").write_text("s3cret pass\n")
    entry = {"cert": str(pair.cert), "key": str(pair.key)}
    _cert_error(tmp_path, _with_cert(proxy_config, entry), "private key")
    config = proxy_config(echo_backend.address)
    config["tls"] = {"certificates": [{**entry, "passphrase_file": str(tmp_path / "enc" / "pass")}]}
    with ProxyProcess(tmp_path, config) as proxy:
        with tls_connect(proxy.host, proxy.port, client_context(tls_files.cafile), SERVER_NAME) as sock:
            sock.sendall(b"enc")
            assert sock.recv(10) == b"enc"
        assert "s3cret" not in proxy.log()


def test_port_in_use_exits_1(tmp_path: Path, proxy_config: ConfigFactory) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, stderr = _run_config(tmp_path, proxy_config("127.0.0.1:1", listen=f"127.0.0.1:{port}"))
    assert code == 1
    _assert_clean_error(stderr)
    assert f"cannot listen on 127.0.0.1:{port}" in stderr


def test_sni_picks_among_several_certificates(tmp_path: Path, proxy_config: ConfigFactory, ca: CA, echo_backend: ThreadedBackend, tls_files: TLSFiles) -> None:
    """Two ECDSA certificates both cover server_name; SNI for the extra name picks the second."""
    main = ca.write(tmp_path, "main", [SERVER_NAME])
    extra = ca.write(tmp_path, "extra", [SERVER_NAME, "pay.example.test"])
    config = proxy_config(echo_backend.address)
    config["tls"] = {"certificates": [{"cert": str(main.cert), "key": str(main.key)}, {"cert": str(extra.cert), "key": str(extra.key)}]}
    from cryptography import x509

    with ProxyProcess(tmp_path, config) as proxy:
        ctx = client_context(tls_files.cafile)
        served = {}
        for name in (SERVER_NAME, "pay.example.test"):
            with tls_connect(proxy.host, proxy.port, ctx, name) as sock:
                served[name] = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number
        with tls_connect(proxy.host, proxy.port, client_context(verify=False), None) as sock:
            served["none"] = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number
    assert served[SERVER_NAME] == main.serial
    assert served["pay.example.test"] == extra.serial
    assert served["none"] == main.serial


@pytest.mark.parametrize("workers", [1, 2])
def test_tells_systemd_when_every_worker_is_ready(tmp_path: Path, proxy_config: ConfigFactory, echo_backend: ThreadedBackend, workers: int) -> None:
    """With $NOTIFY_SOCKET (systemd Type=notify), READY=1 arrives once, after every worker listens."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(30)
        config = proxy_config(echo_backend.address, workers=workers)
        with ProxyProcess(tmp_path, config, wait=False, env={"NOTIFY_SOCKET": str(path)}) as proxy:
            assert notify.recv(256) == b"READY=1"
            with socket.create_connection((proxy.host, proxy.port), timeout=5):
                pass  # serving when READY=1 came (log lines may be flushed a moment later)
            proxy.wait_for_log("listening on", count=workers, timeout=5)
            notify.settimeout(0.5)
            with pytest.raises(TimeoutError):
                notify.recv(256)
            assert proxy.stop() == 0
