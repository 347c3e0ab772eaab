"""`fopproxy scan` against servers it did not write (nginx) and against fopproxy itself.

Where sslyze is installed, its accepted protocols and suites are compared with ours on the same
servers: the two scanners must agree wherever both could make the offer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from fopproxy.compliance.scan import tls12_candidates
from fopproxy.policy import CARD_FOP_TLS12_SUITES
from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support import sslyze
from tests.support.backends import ThreadedBackend, free_port
from tests.support.nginx import NGINX, SIX, Nginx
from tests.support.proxy import ProxyProcess, run_cli

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "compliance-report.schema.json").read_text())

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (.ci/setup.d/30-compliance.sh)")


def run_scan(address: str, cafile: Path | None = None, servername: str = SERVER_NAME) -> tuple[int, dict[str, Any]]:
    args = ["scan", address, "--servername", servername, "--json"]
    if cafile is not None:
        args += ["--cafile", str(cafile)]
    done = run_cli(*args, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["summary"]["exit_code"] == done.returncode
    return done.returncode, report


def statuses(report: dict[str, Any], rule: str) -> dict[str, str]:
    return {r["subject"]: r["status"] for r in report["results"] if r["rule"] == rule}


def detail(report: dict[str, Any], rule: str, subject: str | None = None) -> str:
    return next(r["detail"] for r in report["results"] if r["rule"] == rule and subject in (None, r["subject"]))


def accepted12(report: dict[str, Any]) -> set[str]:
    return {s["name"] for s in report["facts"]["tls12_suites_accepted"]}


ServerFactory = Callable[..., str]


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    started: list[Nginx] = []

    def start(certificates: list[tuple[Path, Path]], **settings: Any) -> Nginx:
        server = Nginx(tmp_path / f"nginx{len(started)}", certificates, **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def dual(tls_files: TLSFiles) -> list[tuple[Path, Path]]:
    return [(tls_files.ecdsa.cert, tls_files.ecdsa.key), (tls_files.rsa.cert, tls_files.rsa.key)]


def test_compliant_nginx_passes(nginx: Callable[..., Nginx], tls_files: TLSFiles) -> None:
    """nginx with TLS 1.2, the six suites in order and server preference: every rule passes."""
    server = nginx(dual(tls_files))
    code, report = run_scan(server.address, tls_files.cafile)
    assert code == 0, [r for r in report["results"] if r["status"] == "FAIL"]
    assert accepted12(report) == set(CARD_FOP_TLS12_SUITES)
    assert report["facts"]["server_order"] == list(CARD_FOP_TLS12_SUITES)
    assert statuses(report, "hostname_verification") == {SERVER_NAME: "PASS"}
    assert [c["key"] for c in report["facts"]["certificates"]] == ["ECDSA secp256r1", "RSA 2048"]
    assert report["facts"]["groups_accepted"] == {"TLSv1.2": ["X25519", "P-256", "P-384"]}


def test_nginx_resumption_passes_and_0rtt_fails(nginx: Callable[..., Nginx], tls_files: TLSFiles) -> None:
    """nginx resumes by ticket (PASS; by session ID only with an ssl_session_cache, which this
    one lacks); with ssl_early_data on its TLS 1.3 tickets allow 0-RTT and early_data fails; with
    it off (nginx's default) early_data passes."""
    server = nginx(dual(tls_files), protocols="TLSv1.2 TLSv1.3", extra="ssl_early_data on;")
    code, report = run_scan(server.address, tls_files.cafile)
    assert code == 1
    assert statuses(report, "resumption") == {"server": "PASS"}
    assert statuses(report, "early_data") == {"server": "FAIL"}
    assert report["facts"]["resumption"]["max_early_data"] > 0
    quiet = nginx(dual(tls_files), protocols="TLSv1.2 TLSv1.3")
    _, report = run_scan(quiet.address, tls_files.cafile)
    assert statuses(report, "early_data") == {"server": "PASS"}
    assert report["facts"]["resumption"] == {
        "session_id": "full handshake", "tickets": "resumed", "tls13_psk": "resumed",
        "max_early_data": 0,
    }


def test_nginx_accepting_tls10_is_flagged(nginx: Callable[..., Nginx], tls_files: TLSFiles) -> None:
    """TLS 1.0 enabled (with a suite it can use): the TLSv1 protocol line fails, exit 1."""
    server = nginx(dual(tls_files), protocols="TLSv1 TLSv1.2", ciphers=SIX + ":ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
    code, report = run_scan(server.address, tls_files.cafile)
    assert code == 1
    versions = statuses(report, "protocol.versions")
    assert versions["TLSv1"] == "FAIL"
    assert versions["TLSv1.1"] == "PASS"
    assert versions["TLSv1.2"] == "PASS"
    assert "ECDHE-ECDSA-AES128-SHA" in detail(report, "suites.outside")


def test_nginx_accepting_aes256_gcm_is_flagged(nginx: Callable[..., Nginx], tls_files: TLSFiles) -> None:
    """ECDHE-RSA-AES256-GCM-SHA384 on top of the six: suites.outside fails and names it."""
    server = nginx(dual(tls_files), ciphers=SIX + ":ECDHE-RSA-AES256-GCM-SHA384")
    code, report = run_scan(server.address, tls_files.cafile)
    assert code == 1
    assert statuses(report, "suites.outside")["TLS 1.2 suites"] == "FAIL"
    assert accepted12(report) - set(CARD_FOP_TLS12_SUITES) == {"ECDHE-RSA-AES256-GCM-SHA384"}
    assert statuses(report, "suites.required") == {"TLS 1.2 suites": "PASS"}


def test_nginx_serving_another_name_is_flagged(nginx: Callable[..., Nginx], tls_files: TLSFiles, ca: Any) -> None:
    """A certificate for other.example.test: the name rule and hostname verification fail."""
    other = ca.write(tls_files.folder, "other", ["other.example.test"], "ecdsa")
    server = nginx([(other.cert, other.key)])
    code, report = run_scan(server.address, tls_files.cafile)
    assert code == 1
    assert set(statuses(report, "cert.names").values()) == {"FAIL"}
    assert "other.example.test" in detail(report, "cert.names")
    assert statuses(report, "hostname_verification") == {SERVER_NAME: "FAIL"}
    assert "mismatch" in detail(report, "hostname_verification").lower()


def test_nginx_tls13_default_suites_are_flagged(nginx: Callable[..., Nginx], tls_files: TLSFiles) -> None:
    """nginx's TLS 1.3 defaults include AES256-GCM: outside our reading of the rule, a FAIL."""
    server = nginx(dual(tls_files), protocols="TLSv1.2 TLSv1.3")
    code, report = run_scan(server.address, tls_files.cafile)
    assert code == 1
    assert statuses(report, "suites.tls13") == {"TLS 1.3 suites": "FAIL"}
    assert "TLS_AES_256_GCM_SHA384" in report["facts"]["tls13_suites_accepted"]
    assert statuses(report, "protocol.versions")["TLSv1.3"] == "PASS"


def test_nginx_client_preference_is_a_warning(nginx: Callable[..., Nginx], tls_files: TLSFiles) -> None:
    """Same six suites but the client's order wins: a warning, still exit 0."""
    server = nginx(dual(tls_files), prefer_server=False)
    code, report = run_scan(server.address, tls_files.cafile)
    assert code == 0
    assert statuses(report, "server_preference") == {"TLS 1.2 suites": "WARN"}
    assert report["facts"]["server_preference"] is False


@pytest.mark.parametrize("profile", ["card-fop", "card-fop-tls13"])
def test_fopproxy_passes_its_own_scan(profile: str, tmp_path: Path, tls_files: TLSFiles, proxy_config: ConfigFactory, echo_backend: ThreadedBackend) -> None:
    """fopproxy under both profiles: exit 0; TLS 1.3 reported honestly (two suites, or off)."""
    config = proxy_config(echo_backend.address, tls={"profile": profile, "certificates": tls_files.entries()})
    with ProxyProcess(tmp_path, config) as proxy:
        code, report = run_scan(f"127.0.0.1:{proxy.port}", tls_files.cafile)
    assert code == 0, [r for r in report["results"] if r["status"] == "FAIL"]
    assert accepted12(report) == set(CARD_FOP_TLS12_SUITES)
    assert report["facts"]["server_order"] == list(CARD_FOP_TLS12_SUITES)
    protocols = {v: p["state"] for v, p in report["facts"]["protocols"].items()}
    if profile == "card-fop":
        assert protocols["TLSv1.3"] == "refused"
        assert report["facts"]["tls13_suites_accepted"] == []
    else:
        assert protocols["TLSv1.3"] == "accepted"
        assert report["facts"]["tls13_suites_accepted"] == ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"]
        assert statuses(report, "suites.tls13") == {"TLS 1.3 suites": "PASS"}
    assert protocols["TLSv1"] == protocols["TLSv1.1"] == "refused"
    served = ["TLSv1.2", "TLSv1.3"] if profile == "card-fop-tls13" else ["TLSv1.2"]
    assert report["facts"]["groups_accepted"] == {v: ["X25519", "P-256", "P-384"] for v in served}
    assert set(statuses(report, "key_exchange").values()) == {"PASS"}
    assert protocols["SSLv2"] == "untested"
    assert statuses(report, "protocol.versions")["SSLv2"] == "SKIP"


def test_text_output_and_unreachable_target(tls_files: TLSFiles, nginx: Callable[..., Nginx]) -> None:
    """The table names each protocol; a port with nothing listening exits 2 with one line."""
    server = nginx(dual(tls_files))
    done = run_cli("scan", server.address, "--servername", SERVER_NAME, "--cafile", str(tls_files.cafile))
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert any(line.startswith("PASS") and "TLSv1.1" in line and "refused" in line for line in lines)
    assert lines[-2].startswith("PASS: ")
    done = run_cli("scan", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert done.stderr.startswith("fopproxy: cannot connect to 127.0.0.1:")


# --- agreement with an independent scanner --------------------------------------------------


def assert_agrees(report: dict[str, Any], theirs: dict[str, dict[str, list[str]]]) -> None:
    """Same verdict per protocol we could test; same TLS 1.2 and 1.3 suites where both could offer."""
    for version, probe in report["facts"]["protocols"].items():
        if probe["state"] == "untested":
            continue
        assert (probe["state"] == "accepted") == bool(theirs[version]["accepted"]), (version, probe, theirs[version])
    ours12 = accepted12(report)
    offerable = {c["name"] for c in tls12_candidates()}
    assert ours12 == set(theirs["TLSv1.2"]["accepted"]) & offerable
    if report["facts"]["protocols"]["TLSv1.3"]["state"] == "accepted":
        assert set(report["facts"]["tls13_suites_accepted"]) == set(theirs["TLSv1.3"]["accepted"])


needs_sslyze = pytest.mark.skipif(not sslyze.available(), reason=f"sslyze not installed at {sslyze.SSLYZE} (.ci/setup.d/20-scanner.sh)")


@pytest.mark.scanner
@needs_sslyze
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"protocols": "TLSv1 TLSv1.2", "ciphers": SIX + ":ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"},
        {"ciphers": SIX + ":ECDHE-RSA-AES256-GCM-SHA384:AES128-GCM-SHA256"},
        {"protocols": "TLSv1.2 TLSv1.3"},
    ],
    ids=["compliant", "tls10", "aes256-and-static-rsa", "tls13-default-suites"],
)
def test_nginx_verdicts_agree_with_sslyze(settings: dict[str, str], nginx: Callable[..., Nginx], tls_files: TLSFiles, tmp_path: Path) -> None:
    """Our scan and sslyze's agree on nginx, compliant or not."""
    server = nginx(dual(tls_files), **settings)
    _code, report = run_scan(server.address, tls_files.cafile)
    assert_agrees(report, sslyze.scan(server.address, tmp_path, SERVER_NAME))


@pytest.mark.scanner
@needs_sslyze
@pytest.mark.parametrize("profile", ["card-fop", "card-fop-tls13"])
def test_fopproxy_verdicts_agree_with_sslyze(profile: str, tmp_path: Path, tls_files: TLSFiles, proxy_config: ConfigFactory, echo_backend: ThreadedBackend) -> None:
    """Our scan and sslyze's agree on fopproxy under both profiles."""
    config = proxy_config(echo_backend.address, tls={"profile": profile, "certificates": tls_files.entries()})
    with ProxyProcess(tmp_path, config) as proxy:
        address = f"127.0.0.1:{proxy.port}"
        _code, report = run_scan(address, tls_files.cafile)
        assert_agrees(report, sslyze.scan(address, tmp_path, SERVER_NAME))


def test_local_openssl_can_offer_what_the_issue_names() -> None:
    """The scanner's candidate list holds the non-compliant suites the rules single out."""
    names = {c["name"] for c in tls12_candidates()}
    assert {"AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-GCM-SHA384", "DHE-RSA-AES128-GCM-SHA256"} <= names
    assert set(CARD_FOP_TLS12_SUITES) <= names


def test_nginx_agreeing_p521_and_x448_is_flagged(nginx: Callable[..., Nginx], tls_files: TLSFiles) -> None:
    """nginx with P-521 and X448 allowed: key_exchange fails under both versions and names them."""
    server = nginx(dual(tls_files), protocols="TLSv1.2 TLSv1.3", curves="X25519:prime256v1:secp384r1:secp521r1:X448")
    code, report = run_scan(server.address, tls_files.cafile)
    assert code == 1
    assert statuses(report, "key_exchange")["TLS 1.2 groups"] == "FAIL"
    assert statuses(report, "key_exchange")["TLS 1.3 groups"] == "FAIL"
    for version in ("TLSv1.2", "TLSv1.3"):
        assert set(report["facts"]["groups_accepted"][version]) == {"X25519", "P-256", "P-384", "P-521", "X448"}
    assert "P-521, X448" in detail(report, "key_exchange", "TLS 1.3 groups")
