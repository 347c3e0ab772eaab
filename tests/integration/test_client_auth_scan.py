"""`fopproxy scan` tells whether a server asks for a client certificate, against nginx."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SERVER_NAME, TLSFiles
from tests.integration.test_scan import run_scan
from tests.support.nginx import NGINX, Nginx
from tests.support.pki import CA

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (.ci/setup.d/30-compliance.sh)")


@pytest.mark.parametrize(
    ("verify", "state"),
    # nginx's `on` completes the TLS handshake without a certificate and refuses at the HTTP
    # layer (400 "No required SSL certificate was sent"): at the TLS layer it is optional.
    [("on", "optional"), ("optional", "optional"), ("off", "not_requested")],
)
def test_scan_reads_nginx_client_certificate_request(tmp_path: Path, tls_files: TLSFiles, verify: str, state: str) -> None:
    """nginx `ssl_verify_client on|optional|off` with two CAs: scan reports the mode and both
    names nginx sends; the row is informational (PASS) and the report still validates."""
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes(CA("clients CA old").cert_pem + CA("clients CA new").cert_pem)
    extra = f"ssl_verify_client {verify}; ssl_client_certificate {bundle};"
    server = Nginx(tmp_path / "nginx", [(tls_files.ecdsa.cert, tls_files.ecdsa.key)], server_name=SERVER_NAME, extra=extra)
    try:
        _code, report = run_scan(server.address, tls_files.cafile)
    finally:
        server.stop()
    facts = report["facts"]["client_auth"]
    assert facts["mode"] == state
    [row] = [r for r in report["results"] if r["rule"] == "client_auth"]
    assert row["status"] == "PASS"
    if state == "not_requested":
        assert facts["ca_names"] == []
    else:
        assert facts["ca_names"] == ["CN=clients CA old", "CN=clients CA new"]
        assert "CN=clients CA new" in row["detail"]
