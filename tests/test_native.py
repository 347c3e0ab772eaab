"""native: every reach past Python's ssl API works here, or falls back; config stays light."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

from cryptography import x509

from fopproxy import native
from tests.conftest import SERVER_NAME, TLSFiles

REPO = Path(__file__).parents[1]


def test_loading_the_config_pulls_in_neither_cryptography_nor_ctypes(tls_files: TLSFiles, tmp_path: Path) -> None:
    """Importing fopproxy.config (and loading a config) must not import cryptography or ctypes."""
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"listen: 127.0.0.1:8443\nbackend: 127.0.0.1:8080\nserver_name: {SERVER_NAME}\n"
        f"tls:\n  certificates:\n    - cert: {tls_files.ecdsa.cert}\n      key: {tls_files.ecdsa.key}\n"
    )
    script = (
        "import sys; from fopproxy.config import load_config; "
        f"load_config({str(config)!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'ctypes')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_unverified_chain_is_der_on_this_python(tls_files: TLSFiles) -> None:
    """The peer's chain comes back as DER bytes, leaf first, whichever shape this Python returns."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tls_files.ecdsa.cert, tls_files.ecdsa.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    try:
        with client.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as tls:
            chain = native.unverified_chain(tls)
    finally:
        thread.join(10)
        listener.close()
    assert chain and all(isinstance(der, bytes) for der in chain)
    leaf = x509.load_der_x509_certificate(chain[0])
    assert leaf.serial_number == tls_files.ecdsa.serial


def test_fast_sslobj_has_what_the_relay_calls_or_falls_back() -> None:
    """The private object is used only where it has every method; anything else gets the SSLObject."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=SERVER_NAME)
    fast = native.fast_sslobj(obj)
    for name in ("read", "write", "do_handshake", "version", "cipher", "pending"):
        assert callable(getattr(fast, name))

    class Hollow:
        _sslobj = object()

    hollow = Hollow()
    assert native.fast_sslobj(hollow) is hollow  # type: ignore[arg-type]


def test_status_names_every_native_access() -> None:
    """`fopproxy check` prints these; on this CPython with glibc every one is active."""
    status = native.status()
    assert set(status) == {
        "libssl (TLS 1.3 suites, groups, session cache)", "memory BIO release",
        "relay fast path (_sslobj)", "heap trim (malloc_trim)", "peer chain",
        "ticket key in libssl (resumption without Python)",
    }
    assert status["libssl (TLS 1.3 suites, groups, session cache)"] == "active"
    assert status["memory BIO release"] == "active"
    assert status["heap trim (malloc_trim)"] == "active"
    assert status["ticket key in libssl (resumption without Python)"] == "active"


def test_check_shows_the_pinned_groups_and_native_status_even_under_a_widening_openssl_conf(tls_files: TLSFiles, tmp_path: Path) -> None:
    """`fopproxy check` with an OPENSSL_CONF whose Groups add P-521, X448 and ffdhe2048: the
    key_exchange line still lists exactly X25519, P-256, P-384 per version, and a runtime line
    says which native accesses are active."""
    from tests.reliability.test_groups import WIDENING_CONF
    from tests.support.proxy import fopproxy_command, fopproxy_env

    conf = tmp_path / "widen.cnf"
    conf.write_text(WIDENING_CONF)
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"listen: 127.0.0.1:8443\nbackend: 127.0.0.1:8080\nserver_name: {SERVER_NAME}\n"
        f"tls:\n  profile: card-fop-tls13\n  certificates:\n"
        f"    - {{cert: {tls_files.ecdsa.cert}, key: {tls_files.ecdsa.key}}}\n"
    )
    done = subprocess.run(
        fopproxy_command("check", "-c", str(config)), capture_output=True, text=True, timeout=60,
        env=fopproxy_env(OPENSSL_CONF=str(conf)),
    )
    lines = done.stdout.splitlines()
    exchange = next(line for line in lines if "key_exchange" in line)
    assert exchange.startswith("PASS")
    assert "TLSv1.2: X25519, P-256, P-384; TLSv1.3: X25519, P-256, P-384" in exchange
    runtime = next(line for line in lines if " runtime " in line)
    assert "libssl (TLS 1.3 suites, groups, session cache): active" in runtime
    assert "relay fast path (_sslobj)" in runtime
