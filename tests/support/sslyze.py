"""sslyze, the independent scanner, run as a subprocess from its own venv."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

SSLYZE = Path(os.environ.get("FOPPROXY_SSLYZE", "/opt/fopproxy-sslyze/bin/sslyze"))
VERSIONS = {
    "ssl_2_0_cipher_suites": "SSLv2",
    "ssl_3_0_cipher_suites": "SSLv3",
    "tls_1_0_cipher_suites": "TLSv1",
    "tls_1_1_cipher_suites": "TLSv1.1",
    "tls_1_2_cipher_suites": "TLSv1.2",
    "tls_1_3_cipher_suites": "TLSv1.3",
}


def available() -> bool:
    return SSLYZE.is_file() and os.access(SSLYZE, os.X_OK)


def scan(address: str, folder: Path, sni: str | None = None) -> dict[str, dict[str, list[str]]]:
    """{version: {"accepted": [OpenSSL names], "iana": [IANA names], "tested": [OpenSSL names]}}."""
    out = folder / f"sslyze-{address.replace(':', '_')}.json"
    command = [
        str(SSLYZE), "--quiet", "--mozilla_config=disable", f"--json_out={out}",
        "--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3",
    ]
    if sni:
        command.append(f"--sni={sni}")
    command.append(address)
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())["server_scan_results"][0]
    assert result["scan_status"] == "COMPLETED", result.get("connectivity_error_trace")
    found: dict[str, dict[str, list[str]]] = {}
    for key, version in VERSIONS.items():
        attempt = result["scan_result"][key]
        assert attempt["status"] == "COMPLETED", (key, attempt.get("error_trace"))
        suites = attempt["result"]
        accepted = [c["cipher_suite"] for c in suites["accepted_cipher_suites"]]
        rejected = [c["cipher_suite"] for c in suites["rejected_cipher_suites"]]
        found[version] = {
            "accepted": [c["openssl_name"] for c in accepted],
            "iana": [c["name"] for c in accepted],
            "tested": [c["openssl_name"] for c in accepted + rejected],
        }
    return found
