"""An independent scanner (sslyze) sees only what the Card FOP rules allow on a running fopproxy.

This is the evidence a partner can reproduce without trusting fopproxy's own code: the proxy is
started from this checkout with an ECDSA + RSA certificate pair and scanned from the outside.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support import sslyze
from tests.support.backends import ThreadedBackend
from tests.support.expected import TLS12_SUITES_IANA, TLS13_SUITES
from tests.support.proxy import ProxyProcess

pytestmark = [
    pytest.mark.scanner,
    pytest.mark.skipif(
        not sslyze.available(),
        reason=f"sslyze binary not found at {sslyze.SSLYZE} (installed by .ci/setup.d/20-scanner.sh)",
    ),
]

SIX_IANA = set(TLS12_SUITES_IANA)
TLS13_IANA = set(TLS13_SUITES)


def scan_proxy(profile: str, tmp_path: Path, tls_files: TLSFiles, proxy_config: ConfigFactory, backend: ThreadedBackend) -> dict[str, dict[str, list[str]]]:
    config = proxy_config(backend.address, tls={"profile": profile, "certificates": tls_files.entries()})
    with ProxyProcess(tmp_path, config) as proxy:
        return sslyze.scan(f"127.0.0.1:{proxy.port}", tmp_path, SERVER_NAME)


def test_card_fop_only_tls12_and_only_the_six(tmp_path: Path, tls_files: TLSFiles, proxy_config: ConfigFactory, echo_backend: ThreadedBackend) -> None:
    """card-fop: sslyze finds TLS 1.2 only, every accepted suite among the six, and all six served."""
    found = scan_proxy("card-fop", tmp_path, tls_files, proxy_config, echo_backend)
    for version in ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.3"):
        assert found[version]["accepted"] == [], (version, found[version])
        assert found[version]["tested"], f"sslyze tested no {version} suite"
    accepted = set(found["TLSv1.2"]["iana"])
    assert accepted, "no TLS 1.2 suite accepted"
    assert accepted <= SIX_IANA, accepted - SIX_IANA
    # The dual ECDSA + RSA config serves every one of the six.
    assert accepted == SIX_IANA


def test_card_fop_tls13_adds_only_the_two_tls13_suites(tmp_path: Path, tls_files: TLSFiles, proxy_config: ConfigFactory, echo_backend: ThreadedBackend) -> None:
    """card-fop-tls13: TLS 1.3 suites ⊆ {AES_128_GCM, CHACHA20_POLY1305}; TLS 1.2 unchanged."""
    found = scan_proxy("card-fop-tls13", tmp_path, tls_files, proxy_config, echo_backend)
    for version in ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1"):
        assert found[version]["accepted"] == [], (version, found[version])
    tls13 = set(found["TLSv1.3"]["iana"])
    assert tls13, "TLS 1.3 accepted no suite under card-fop-tls13"
    assert tls13 <= TLS13_IANA, tls13 - TLS13_IANA
    assert "TLS_AES_256_GCM_SHA384" in found["TLSv1.3"]["tested"]
    accepted12 = set(found["TLSv1.2"]["iana"])
    assert accepted12 and accepted12 <= SIX_IANA
