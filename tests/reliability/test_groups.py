"""Issue 13 item 3: key exchange over X25519, P-256 and P-384 only, whatever OPENSSL_CONF says.

The allowed groups are written here literally (not imported from fopproxy.policy), and the witness
is `openssl s_client -groups G`, which offers exactly one group: a handshake that completes means
the server agreed to that group.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SERVER_NAME, ConfigFactory
from tests.support.backends import ThreadedBackend
from tests.support.proxy import ProxyProcess

ALLOWED = ("X25519", "P-256", "P-384")
REFUSED_TLS12 = ("P-521", "X448")
REFUSED_TLS13 = ("P-521", "X448", "ffdhe2048")

# An OpenSSL config that widens the system default groups: the self-check must not let it through.
WIDENING_CONF = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = system_default_section
[system_default_section]
Groups = P-521:X448:ffdhe2048:X25519:P-256:P-384
"""


def offer(port: int, version: str, group: str, env: dict[str, str] | None = None) -> str | None:
    """The protocol negotiated when only `group` is offered, or None when the handshake failed."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SERVER_NAME,
         f"-{version}", "-groups", group],
        input="", capture_output=True, text=True, timeout=30, env=env,
    )
    output = done.stdout + done.stderr
    if "Cipher is (NONE)" in output or ", Cipher is " not in output:
        return None
    return output.split("New, ", 1)[1].split(",", 1)[0]


def widening_conf(tmp_path: Path) -> Path:
    path = tmp_path / "widen.cnf"
    path.write_text(WIDENING_CONF)
    return path


@pytest.fixture(params=["card-fop", "card-fop-tls13", "card-fop-tls13+OPENSSL_CONF"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path, proxy_config: ConfigFactory,
          echo_backend: ThreadedBackend) -> Iterator[tuple[str, ProxyProcess]]:
    profile, _, conf = str(request.param).partition("+")
    config = proxy_config(echo_backend.address)
    config["tls"]["profile"] = profile
    env = {"OPENSSL_CONF": str(widening_conf(tmp_path))} if conf else None
    with ProxyProcess(tmp_path, config, env=env) as running:
        yield profile, running


def test_only_the_three_groups_are_agreed(proxy: tuple[str, ProxyProcess]) -> None:
    """Each allowed group alone completes a handshake; P-521, X448 and ffdhe2048 alone do not."""
    profile, running = proxy
    agreed: dict[tuple[str, str], str | None] = {}
    for group in (*ALLOWED, *REFUSED_TLS12):
        agreed["tls1_2", group] = offer(running.port, "tls1_2", group)
    if profile == "card-fop-tls13":
        for group in (*ALLOWED, *REFUSED_TLS13):
            agreed["tls1_3", group] = offer(running.port, "tls1_3", group)
    print(profile, agreed)
    assert {g: agreed["tls1_2", g] for g in ALLOWED} == dict.fromkeys(ALLOWED, "TLSv1.2")
    assert {g: agreed["tls1_2", g] for g in REFUSED_TLS12} == dict.fromkeys(REFUSED_TLS12)
    if profile == "card-fop-tls13":
        assert {g: agreed["tls1_3", g] for g in ALLOWED} == dict.fromkeys(ALLOWED, "TLSv1.3")
        assert {g: agreed["tls1_3", g] for g in REFUSED_TLS13} == dict.fromkeys(REFUSED_TLS13)


def test_the_widening_conf_really_widens_a_plain_server(tmp_path: Path) -> None:
    """The OPENSSL_CONF above does change what OpenSSL agrees to (so the test above can fail)."""
    script = (
        "import ssl;"
        "from fopproxy.native import shared_groups;"
        "print(','.join(shared_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.TLSVersion.TLSv1_3)))"
    )
    done = subprocess.run(
        ["python3", "-c", script], capture_output=True, text=True, timeout=60,
        env={"OPENSSL_CONF": str(widening_conf(tmp_path)), "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.strip().split(",")) == {"P-521", "X448", "ffdhe2048", *ALLOWED}
