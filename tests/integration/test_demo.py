"""README's first command: `fopproxy demo` gives a TLS endpoint that curl can use as written."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.support.backends import free_port
from tests.support.proxy import fopproxy_command, fopproxy_env


def test_demo_endpoint_answers_curl(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = fopproxy_env(TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        fopproxy_command("demo", "--port", str(port), "--metrics-port", str(metrics_port)),
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        curl_line = ""
        deadline = time.monotonic() + 20
        assert proc.stderr is not None
        while time.monotonic() < deadline and "listening on" not in curl_line:
            line = proc.stderr.readline()
            if "curl --cacert" in line:
                curl_cmd = line.split("try:", 1)[1].split()
            curl_line += line
        assert "listening on" in curl_line, curl_line
        assert str(tmp_path / "fopproxy-demo" / "ca.pem") in curl_cmd
        result = subprocess.run([*curl_cmd, "-sS"], capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        assert "fopproxy demo backend" in result.stdout
        assert "GET / HTTP/1.1" in result.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
