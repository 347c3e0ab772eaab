"""Rotating the client CA file: old -> old+new -> new, with clients handshaking all along."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path

from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support.backends import ThreadedBackend
from tests.support.clientpki import ClientCert, issue_client
from tests.support.pki import CA
from tests.support.proxy import ProxyProcess, client_context, tls_connect

LOOP_LIMIT = 3000  # handshakes per phase, at most
LOOP_SECONDS = 20.0  # and at most this long


def replace_atomically(path: Path, data: bytes) -> None:
    """How a deploy tool writes: a new file renamed over the old one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def one_exchange(port: int, tls_files: TLSFiles, cert: ClientCert, profile_max: ssl.TLSVersion) -> bool:
    ctx = client_context(tls_files.cafile, maximum_version=profile_max)
    ctx.load_cert_chain(str(cert.cert), str(cert.key))
    try:
        with tls_connect("127.0.0.1", port, ctx, SERVER_NAME, timeout=5) as sock:
            sock.sendall(b"ping")
            return sock.recv(4) == b"ping"
    except (OSError, ssl.SSLError):
        return False


class Loop(threading.Thread):
    """Handshake + echo with one certificate, over and over, counting failures (bounded)."""

    def __init__(self, port: int, tls_files: TLSFiles, cert: ClientCert, version: ssl.TLSVersion) -> None:
        super().__init__(daemon=True)
        self.args = (port, tls_files, cert, version)
        self.stop = threading.Event()
        self.ok = 0
        self.failed = 0

    def run(self) -> None:
        deadline = time.monotonic() + LOOP_SECONDS
        while not self.stop.is_set() and self.ok + self.failed < LOOP_LIMIT and time.monotonic() < deadline:
            if one_exchange(*self.args):
                self.ok += 1
            else:
                self.failed += 1


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_ca_bundle_rotation_without_failed_handshakes(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend
) -> None:
    """Old CA -> a bundle of old and new -> new only, picked up by the reload watcher: the old
    CA's client never fails until the bundle drops it, the new CA's client never fails once the
    bundle has it. Under card-fop-tls13 with TLS 1.2 and TLS 1.3 clients."""
    old, new = CA("clients CA 2026"), CA("clients CA 2027")
    old_client = issue_client(old, tmp_path, "old", cn="payments.google.com")
    new_client = issue_client(new, tmp_path, "new", cn="payments.google.com")
    ca_file = tmp_path / "clients.pem"
    ca_file.write_bytes(old.cert_pem)
    config = proxy_config(echo_backend.address)
    config["tls"] = {**config["tls"], "profile": "card-fop-tls13", "reload_interval": 0.2,
                     "client_auth": {"mode": "require", "ca": str(ca_file), "allow": {"cn": ["payments.google.com"]}}}
    figures = []
    with ProxyProcess(tmp_path, config) as proxy:
        port = proxy.port
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            assert one_exchange(port, tls_files, old_client, version)
            assert not one_exchange(port, tls_files, new_client, version)

        # Phase 1: the old CA's client keeps handshaking while the bundle gains the new CA.
        loops = [Loop(port, tls_files, old_client, v) for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)]
        for loop in loops:
            loop.start()
        time.sleep(0.5)
        replace_atomically(ca_file, old.cert_pem + new.cert_pem)
        assert wait_until(lambda: one_exchange(port, tls_files, new_client, ssl.TLSVersion.TLSv1_3)), "new CA never admitted"
        time.sleep(0.5)
        for loop in loops:
            loop.stop.set()
            loop.join(30)
        figures.append(("old client, old -> old+new", sum(x.ok for x in loops), sum(x.failed for x in loops)))

        # Phase 2: the new CA's client keeps handshaking while the old CA is dropped.
        loops = [Loop(port, tls_files, new_client, v) for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)]
        for loop in loops:
            loop.start()
        time.sleep(0.5)
        replace_atomically(ca_file, new.cert_pem)
        assert wait_until(lambda: not one_exchange(port, tls_files, old_client, ssl.TLSVersion.TLSv1_2)), "old CA never dropped"
        time.sleep(0.5)
        for loop in loops:
            loop.stop.set()
            loop.join(30)
        figures.append(("new client, old+new -> new", sum(x.ok for x in loops), sum(x.failed for x in loops)))
        log = proxy.log()
    print("\nclient CA rotation (handshakes ok / failed):", figures)
    assert log.count("certificates reloaded") == 2
    for _phase, ok, failed in figures:
        assert failed == 0
        assert ok >= 20


def exchange(port: int, ctx: ssl.SSLContext,
             session: ssl.SSLSession | None = None) -> tuple[bool, bool, ssl.SSLSession | None]:
    """(echoed, resumed, the session to resume next time) for one connection."""
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname=SERVER_NAME, session=session) as sock:
            sock.sendall(b"ping")
            ok = sock.recv(4) == b"ping"  # TLS 1.3: the ticket arrives with the first read
            return ok, sock.session_reused, sock.session
    except (OSError, ssl.SSLError):
        return False, False, None


def test_a_session_from_a_dropped_ca_is_not_resumed(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend
) -> None:
    """Session IDs, tickets and TLS 1.3 PSKs skip the client's certificate: once the bundle drops
    the CA a client was admitted under, its saved session must not let it back in."""
    old, new = CA("clients CA 2026"), CA("clients CA 2027")
    old_client = issue_client(old, tmp_path, "old", cn="payments.google.com")
    ca_file = tmp_path / "clients.pem"
    ca_file.write_bytes(old.cert_pem + new.cert_pem)
    config = proxy_config(echo_backend.address)
    config["tls"] = {**config["tls"], "profile": "card-fop-tls13", "reload_interval": 0.2,
                     "client_auth": {"mode": "require", "ca": str(ca_file)}}
    with ProxyProcess(tmp_path, config) as proxy:
        sessions = {}
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_context(tls_files.cafile, maximum_version=version, minimum_version=version)
            ctx.load_cert_chain(str(old_client.cert), str(old_client.key))
            ok, _, session = exchange(proxy.port, ctx)
            assert ok and session is not None
            ok, resumed, session = exchange(proxy.port, ctx, session)
            assert ok and resumed, f"{version.name}: resumption does not work at all here"
            sessions[version] = (ctx, session)
        replace_atomically(ca_file, new.cert_pem)
        assert wait_until(lambda: not one_exchange(proxy.port, tls_files, old_client, ssl.TLSVersion.TLSv1_2))
        for version, (ctx, session) in sessions.items():
            ok, resumed, _ = exchange(proxy.port, ctx, session)
            assert (ok, resumed) == (False, False), version.name
