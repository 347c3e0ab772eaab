"""`workers: 2`: two processes share the port; SIGTERM stops them all with exit 0."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support.backends import ThreadedBackend
from tests.support.proxy import ProxyProcess, client_context, tls_connect


def test_two_workers_serve_and_stop_cleanly(tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles, echo_backend: ThreadedBackend) -> None:
    with ProxyProcess(tmp_path, proxy_config(echo_backend.address, workers=2)) as proxy:
        log = proxy.log()
        pids = set(re.findall(r"pid (\d+), certificates", log))
        assert len(pids) == 2, log
        ctx = client_context(tls_files.cafile)
        for i in range(20):
            with tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME) as sock:
                payload = f"request {i}".encode()
                sock.sendall(payload)
                assert sock.recv(100) == payload
        proxy.signal(signal.SIGTERM)
        assert proxy.proc.wait(20) == 0
