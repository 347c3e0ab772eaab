"""A failed accept() concerns one pending connection, never the listener.

accept(2) can fail for reasons that belong to a single queued connection or to a moment of
kernel memory pressure (ENOBUFS, ENOMEM, EPROTO, EPERM from a security module...). Event loops
differ in what they do then: some close the listening socket for good, which would leave a
sidecar alive, "ready" and refusing every client. The real fopproxy process runs under strace,
which makes accept4() fail with the given errno (the call is not executed, so the
connection stays queued); every client must still be served, by the same listener.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SERVER_NAME
from tests.reliability.conftest import StartProxy
from tests.reliability.support import AsyncBackend, echo_roundtrip
from tests.support.proxy import tls_connect

STRACE = shutil.which("strace")


def _can_trace() -> bool:
    """ptrace may be forbidden (containers without CAP_SYS_PTRACE, Yama scope 3)."""
    if STRACE is None:
        return False
    done = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=none", "true"], capture_output=True, timeout=30)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _can_trace(), reason="strace missing or ptrace not permitted")

CLIENTS = 6


@pytest.mark.parametrize("error", ["ENOBUFS", "ENOMEM", "EPROTO", "EPERM"])
def test_failed_accepts_never_stop_the_listener(
    start_proxy: StartProxy, echo_server: AsyncBackend, ctx: ssl.SSLContext, tmp_path: Path, error: str
) -> None:
    trace = tmp_path / "accept4.trace"
    assert STRACE is not None
    # Calls 2-4 fail: the first client's accept works, the second client's fails three times
    # in a row before it is taken. No metrics listener, so every accept4 is the TLS listener's.
    # -D: strace traces from a detached grandchild, so the process the test started (and signals
    # and waits for) is fopproxy itself.
    wrapper = [
        STRACE, "-D", "-f", "-qq", "-o", str(trace), "-e", "trace=accept4", "-e", "signal=none",
        "-e", f"inject=accept4:error={error}:when=2..4", "--",
    ]
    proxy = start_proxy(echo_server.address, wrapper=wrapper)
    for number in range(CLIENTS):
        with tls_connect(proxy.host, proxy.port, ctx, SERVER_NAME) as conn:
            payload = os.urandom(4096)
            assert echo_roundtrip(conn, payload) == payload, f"client {number} was not relayed"
    injected = [line for line in trace.read_text().splitlines() if "(INJECTED)" in line]
    assert len(injected) == 3, f"strace did not fail accept4 as asked:\n{trace.read_text()}"
    assert all(error in line for line in injected)
    assert proxy.stop() == 0, "fopproxy did not drain and exit 0"
    assert "Traceback" not in proxy.log_path.read_text()
