"""Issue 13 item 4: a bad certificate file neither blocks nor kills the reloader.

The real process, with a metrics listener: the certificate is replaced by a FIFO, by a 200 MiB
file, and a reload meets an OSError (memfd_create failing with EMFILE, injected by strace). In
each case /healthz keeps answering, handshakes keep working on the old certificate, the failure
is logged and counted, and a later valid rotation is served.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import SERVER_NAME
from tests.reliability.support import rss_kib, wait_until
from tests.support.backends import ThreadedBackend, free_port
from tests.support.pki import CA, Pair
from tests.support.proxy import ProxyProcess, client_context, tls_connect

STRACE = shutil.which("strace")
INTERVAL = 0.5
GRACE = 1.0


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status == 200
    except (OSError, urllib.error.URLError):
        return False


def reload_failures(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        body = answer.read().decode()
    for line in body.splitlines():
        if line.startswith('fopproxy_certificate_reloads_total{result="failure"}'):
            return float(line.split()[-1])
    raise AssertionError("no failure counter in /metrics")


def served_serial(proxy: ProxyProcess, cafile: Path) -> int:
    with tls_connect(proxy.host, proxy.port, client_context(cafile), SERVER_NAME, timeout=5) as sock:
        der = sock.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


class Folder:
    """One certificate pair at fixed paths, replaced the way an operator would."""

    def __init__(self, ca: CA, folder: Path) -> None:
        self.ca = ca
        self.folder = folder
        self.issued = 0
        self.cert = folder / "tls.crt"
        self.key = folder / "tls.key"

    def issue(self) -> Pair:
        self.issued += 1
        return self.ca.write(self.folder / "issued", f"p{self.issued}", [SERVER_NAME], "ecdsa")

    def install(self, pair: Pair) -> None:
        for data, path in ((pair.cert_pem, self.cert), (pair.key_pem, self.key)):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)


def start(tmp_path: Path, folder: Folder, backend: ThreadedBackend, wrapper: Sequence[str] = ()) -> tuple[ProxyProcess, int]:
    metrics = free_port()
    config = {
        "listen": f"127.0.0.1:{free_port()}",
        "backend": backend.address,
        "server_name": SERVER_NAME,
        "tls": {
            "certificates": [{"cert": str(folder.cert), "key": str(folder.key)}],
            "reload_interval": INTERVAL,
            "reload_grace": GRACE,
        },
        "metrics": {"listen": f"127.0.0.1:{metrics}"},
        "timeouts": {"handshake": 5, "connect": 2, "idle": 60, "drain": 5},
        "logging": {"level": "info", "connections": False},
    }
    return ProxyProcess(tmp_path, config, wrapper=wrapper), metrics


@pytest.fixture
def folder(tmp_path: Path, ca: CA) -> Folder:
    made = Folder(ca, tmp_path / "certs")
    made.folder.mkdir()
    made.install(made.issue())
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    return made


def test_fifo_certificate_neither_blocks_nor_stops_the_reloader(tmp_path: Path, folder: Folder, echo_backend: ThreadedBackend) -> None:
    """A FIFO where the certificate was: health and handshakes go on; the next valid file is served."""
    cafile = tmp_path / "ca.pem"
    proxy, metrics = start(tmp_path, folder, echo_backend)
    with proxy:
        first = served_serial(proxy, cafile)
        folder.cert.unlink()
        os.mkfifo(folder.cert)
        assert wait_until(lambda: reload_failures(metrics) >= 1 if healthz(metrics) else False, GRACE + 10), proxy.log()
        assert "not a regular file" in proxy.log()
        for _ in range(3):
            assert healthz(metrics)
            assert served_serial(proxy, cafile) == first
        folder.cert.unlink()
        new = folder.issue()
        folder.install(new)
        assert wait_until(lambda: served_serial(proxy, cafile) == new.serial, 10), proxy.log()
        assert "Traceback" not in proxy.log()


def test_oversized_certificate_is_refused_without_reading_it(tmp_path: Path, folder: Folder, echo_backend: ThreadedBackend) -> None:
    """A 200 MiB certificate file: refused, counted, and RSS grows by less than 8 MiB."""
    cafile = tmp_path / "ca.pem"
    proxy, metrics = start(tmp_path, folder, echo_backend)
    with proxy:
        first = served_serial(proxy, cafile)
        before = rss_kib(proxy.pid)
        big = folder.cert.with_suffix(".big")
        with big.open("wb") as out:  # real bytes, not a sparse hole: a PEM head then 200 MiB
            out.write(folder.cert.read_bytes())
            block = b"A" * (1 << 20)
            for _ in range(200):
                out.write(block)
        big.replace(folder.cert)
        assert wait_until(lambda: reload_failures(metrics) >= 1, GRACE + 15), proxy.log()
        time.sleep(INTERVAL * 3)  # a few more checks of the same big file
        after = rss_kib(proxy.pid)
        print(f"200 MiB certificate file: RSS {before} KiB -> {after} KiB ({after - before:+d} KiB)")
        assert after - before < 8 * 1024
        assert "larger than" in proxy.log()
        assert healthz(metrics)
        assert served_serial(proxy, cafile) == first
        new = folder.issue()
        folder.install(new)
        assert wait_until(lambda: served_serial(proxy, cafile) == new.serial, 10), proxy.log()


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_oserror_inside_a_reload_is_logged_counted_and_retried(tmp_path: Path, folder: Folder, echo_backend: ThreadedBackend) -> None:
    """memfd_create fails with EMFILE for the first rotation's attempts: each is logged and
    counted, the watcher lives on, and a later attempt serves the new certificate."""
    cafile = tmp_path / "ca.pem"
    trace = tmp_path / "memfd.trace"
    assert STRACE is not None
    # Start-up builds the set twice, two memfds each (certificate and key); calls 5-7 (the
    # rotation's first three attempts) fail.
    wrapper = [
        STRACE, "-D", "-f", "-qq", "-o", str(trace), "-e", "trace=memfd_create", "-e", "signal=none",
        "-e", "inject=memfd_create:error=EMFILE:when=5..7", "--",
    ]
    proxy, metrics = start(tmp_path, folder, echo_backend, wrapper)
    with proxy:
        new = folder.issue()
        folder.install(new)
        assert wait_until(lambda: served_serial(proxy, cafile) == new.serial, 20), proxy.log()
        injected = [line for line in trace.read_text().splitlines() if "(INJECTED)" in line]
        assert len(injected) == 3, trace.read_text()
        assert reload_failures(metrics) == 3
        assert proxy.log().count("retrying at the next check") == 3
        assert healthz(metrics)
