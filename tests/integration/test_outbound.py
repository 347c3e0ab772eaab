"""Outbound with the real process: a legacy app's plain TCP carried to TLS servers on loopback
that stand in for Google (a test CA, good and broken certificates, old or odd servers)."""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import free_port
from tests.support.pki import CA, Pair, write_self_signed
from tests.support.proxy import ProxyProcess, run_cli
from tests.support.upstream import Seen, TLSServer, echo, read_all, server_context

GOOGLE = "vgw.googleapis.test"
# The six suites of the Card FOP rule (IANA order does not matter here), written literally.
SIX = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
}
SCSV = "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"  # a signal (RFC 5746), not a suite
REQUEST = b"POST /v1/echo HTTP/1.1\r\nhost: vgw.googleapis.test\r\ncontent-length: 6\r\n\r\nsecret"


class PKI:
    def __init__(self, folder: Path, ca: CA) -> None:
        self.folder = folder
        self.ca = ca
        folder.mkdir(parents=True, exist_ok=True)
        self.cafile = folder / "ca.pem"
        self.cafile.write_bytes(ca.cert_pem)
        self.google: Pair = ca.write(folder, "google", [GOOGLE], "ecdsa")
        self.google_rsa: Pair = ca.write(folder, "google-rsa", [GOOGLE], "rsa")


@pytest.fixture
def pki(tmp_path: Path, ca: CA) -> PKI:
    return PKI(tmp_path / "pki", ca)


def outbound_config(server: TLSServer, pki: PKI, **entry: Any) -> dict[str, Any]:
    """An outbound-only config toward `server`, trusting the test CA."""
    item: dict[str, Any] = {
        "name": "google",
        "listen": f"127.0.0.1:{free_port()}",
        "connect": server.address,
        "server_name": GOOGLE,
        "trust": str(pki.cafile),
    }
    item.update(entry)
    return {
        "outbound": [item],
        "timeouts": {"handshake": 5, "connect": 2, "idle": 60, "drain": 10},
        "logging": {"level": "info"},
    }


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], ProxyProcess]]:
    running: list[ProxyProcess] = []

    def run(config: dict[str, Any]) -> ProxyProcess:
        proxy = ProxyProcess(tmp_path, config)
        running.append(proxy)
        return proxy

    yield run
    for proxy in running:
        proxy.stop()


def app_call(proxy: ProxyProcess, payload: bytes, *, timeout: float = 10.0) -> bytes:
    """What the legacy app does: plain TCP, send, half-close, read to the end."""
    with socket.create_connection((proxy.host, proxy.port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)


def test_offers_exactly_the_six_suites_with_sni_and_echoes(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """Seen from the server: TLS 1.2 only, the six suites and nothing else, SNI = server_name."""
    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), echo) as server:
        proxy = start(outbound_config(server, pki))
        assert app_call(proxy, REQUEST) == REQUEST
        server.wait_finished(1)
        (seen,) = server.seen
    assert seen.hello is not None
    offered = [s for s in seen.hello.suites if s != SCSV]
    assert set(offered) == SIX
    assert len(offered) == 6
    assert seen.hello.sni == GOOGLE
    assert "TLSv1.3" not in seen.hello.versions
    assert seen.version == "TLSv1.2"
    assert seen.cipher in SIX
    log = proxy.log()
    assert re.search(r"direction=outbound outbound=google .* reason=done", log), log
