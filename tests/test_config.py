"""The config model: the documented example loads, and each class of error is named precisely."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fopproxy.config import TcpAddress, UnixAddress, load_config, parse_config
from fopproxy.errors import ConfigError
from tests.support.expected import TLS12_SUITES, TLS13_SUITES

REPO = Path(__file__).resolve().parents[1]


def _base(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "listen": "0.0.0.0:8443",
        "backend": "127.0.0.1:8080",
        "server_name": "api.example.com",
        "tls": {"certificates": [{"cert": "a.pem", "key": "a.key"}]},
    }
    raw.update(overrides)
    return raw


def _problems(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as failure:
        parse_config(raw, Path("/etc/fopproxy"))
    return failure.value.problems


def test_example_config_documents_and_loads_every_setting() -> None:
    """config/proxy.yaml is valid and relative certificate paths resolve beside it."""
    config = load_config(REPO / "config" / "proxy.yaml")
    assert config.listen == TcpAddress("0.0.0.0", 8443)
    assert config.tls.certificates[0].cert == REPO / "config" / "tls" / "ecdsa.pem"
    assert config.tls.selection.tls12 == TLS12_SUITES
    assert config.metrics.listen == TcpAddress("0.0.0.0", 9100)
    assert (config.tls.reload_interval, config.tls.reload_grace) == (5.0, 10.0)


def test_defaults() -> None:
    config = parse_config(_base(), Path("/etc/fopproxy"))
    assert (config.timeouts.handshake, config.timeouts.connect, config.timeouts.idle, config.timeouts.drain) == (10, 5, 300, 30)
    assert (config.max_connections, config.max_connections_set) == (10000, False)
    assert parse_config(_base(max_connections=10000), Path("/etc/fopproxy")).max_connections_set
    assert config.workers == 1
    assert config.tls.profile_name == "card-fop"
    assert config.metrics.listen is None


def test_unknown_key_is_named_with_its_path() -> None:
    assert _problems(_base(timeouts={"idel": 3})) == [
        "timeouts.idel: unknown key (allowed here: handshake, connect, idle, drain, close)"
    ]


def test_unknown_top_level_key() -> None:
    problems = _problems(_base(listne="x"))
    assert problems[0].startswith("listne: unknown key")


def test_wrong_types_are_reported_together() -> None:
    problems = _problems(_base(max_connections="many", workers=True, timeouts={"idle": "5m"}))
    assert "max_connections: expected an integer, got a string" in problems
    assert "workers: expected a number of processes or 'auto', got a boolean" in problems
    assert "timeouts.idle: expected a number of seconds, got a string" in problems


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("8443", "is not host:port"),
        ("0.0.0.0:99999", "port '99999' is not a number from 1 to 65535"),
        ("::1:8443", "put an IPv6 address in brackets"),
        ("[zz]:8443", "is not an IPv6 address"),
        ("bad_host!:8443", "neither an IP address nor a valid host name"),
    ],
)
def test_bad_listen_addresses(value: str, message: str) -> None:
    (problem,) = _problems(_base(listen=value))
    assert problem.startswith("listen: ")
    assert message in problem


def test_unix_backend_resolves_relative_to_config() -> None:
    config = parse_config(_base(backend="unix:run/api.sock"), Path("/etc/fopproxy"))
    assert config.backend == UnixAddress(Path("/etc/fopproxy/run/api.sock"))


def test_ipv6_listen() -> None:
    assert parse_config(_base(listen="[::]:8443"), Path("/")).listen == TcpAddress("::", 8443)


def test_cipher_outside_profile_is_refused() -> None:
    (problem,) = _problems(_base(tls={"ciphers": ["ECDHE-RSA-AES256-GCM-SHA384"], "certificates": [{"cert": "a", "key": "b"}]}))
    assert problem.startswith("tls.ciphers: [0] 'ECDHE-RSA-AES256-GCM-SHA384' is not a suite of profile 'card-fop'")


def test_tls13_suite_refused_under_tls12_profile() -> None:
    (problem,) = _problems(_base(tls={"ciphers": ["TLS_AES_128_GCM_SHA256"], "certificates": [{"cert": "a", "key": "b"}]}))
    assert "tls.ciphers" in problem and "not a suite of profile 'card-fop'" in problem


def test_cipher_subset_keeps_profile_order() -> None:
    raw = _base(tls={"ciphers": ["ECDHE-RSA-AES128-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"], "certificates": [{"cert": "a", "key": "b"}]})
    config = parse_config(raw, Path("/"))
    assert config.tls.selection.tls12 == ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA256")


def test_tls13_profile() -> None:
    raw = _base(tls={"profile": "card-fop-tls13", "certificates": [{"cert": "a", "key": "b"}]})
    config = parse_config(raw, Path("/"))
    assert config.tls.selection.tls13 == TLS13_SUITES


def test_unknown_profile() -> None:
    (problem,) = _problems(_base(tls={"profile": "modern", "certificates": [{"cert": "a", "key": "b"}]}))
    assert problem == "tls.profile: unknown profile 'modern' (use card-fop or card-fop-tls13)"


def test_missing_required_keys() -> None:
    problems = _problems({"listen": "0.0.0.0:1"})
    assert "backend: is required" in problems
    assert "server_name: is required" in problems
    assert any(p.startswith("tls: is required") for p in problems)


def test_certificate_entry_problems() -> None:
    problems = _problems(_base(tls={"certificates": [{"cert": "a.pem"}, "x"]}))
    assert "tls.certificates[0].key: is required" in problems
    assert "tls.certificates[1]: expected a mapping, got a string" in problems


def test_wildcard_server_name_refused() -> None:
    (problem,) = _problems(_base(server_name="*.example.com"))
    assert problem.startswith("server_name: must be the exact hostname")


def test_workers_auto_is_the_cpus_this_process_may_use() -> None:
    """auto follows the CPU affinity (taskset, a container's cpuset), not the machine's count."""
    cpus = sorted(os.sched_getaffinity(0))
    for allowed in ({cpus[0]}, set(cpus[:2])):
        code = (
            "import os, pathlib\n"
            f"os.sched_setaffinity(0, {allowed!r})\n"
            "from fopproxy.config import parse_config\n"
            f"print(parse_config({_base(workers='auto')!r}, pathlib.Path('/')).workers)\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
        assert int(result.stdout) == len(allowed)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listen: [\n")
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    assert "YAML syntax error at line" in failure.value.problems[0]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    assert "the file is empty" in failure.value.problems[0]


def test_not_a_mapping() -> None:
    assert _problems(["a"])[0] == "(top level): expected a mapping, got a list"


def test_yaml_roundtrip_of_base_is_valid() -> None:
    assert parse_config(yaml.safe_load(yaml.safe_dump(_base())), Path("/")).server_name == "api.example.com"


def test_reload_settings_default_and_override() -> None:
    """reload_interval defaults to 5 s and reload_grace to 10 s; 0 turns the grace off."""
    config = parse_config(_base(), Path("/etc/fopproxy"))
    assert (config.tls.reload_interval, config.tls.reload_grace) == (5.0, 10.0)
    tls = {"certificates": [{"cert": "a.pem", "key": "a.key"}], "reload_interval": 1, "reload_grace": 0}
    config = parse_config(_base(tls=tls), Path("/etc/fopproxy"))
    assert (config.tls.reload_interval, config.tls.reload_grace) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "tls.reload_grace: must be >= 0 and <= 3600 seconds, got -1"),
        ("10s", "tls.reload_grace: expected a number of seconds, got a string"),
        (True, "tls.reload_grace: expected a number of seconds, got a boolean"),
    ],
)
def test_bad_reload_grace(value: object, message: str) -> None:
    tls = {"certificates": [{"cert": "a.pem", "key": "a.key"}], "reload_grace": value}
    assert _problems(_base(tls=tls)) == [message]


def test_client_auth_and_proxy_protocol_default_off() -> None:
    """Both features are off unless asked for."""
    config = parse_config(_base(), Path("/etc/fopproxy"))
    assert config.tls.client_auth.mode == "off"
    assert config.proxy_protocol == "off"


def test_client_auth_section_resolves_ca_beside_the_config() -> None:
    """tls.client_auth parses into the frozen model; ca is relative to the config's folder."""
    tls = {
        "certificates": [{"cert": "a.pem", "key": "a.key"}],
        "client_auth": {"mode": "require", "ca": "tls/clients-ca.pem", "allow": {"cn": ["payments.google.com"]}},
    }
    config = parse_config(_base(tls=tls, proxy_protocol="v2"), Path("/etc/fopproxy"))
    assert config.tls.client_auth.ca == Path("/etc/fopproxy/tls/clients-ca.pem")
    assert config.tls.client_auth.allow.cn == ("payments.google.com",)
    assert config.proxy_protocol == "v2"


def test_client_auth_problems_join_the_others() -> None:
    """A client_auth mistake is reported with every other problem, naming tls.client_auth.ca."""
    tls = {"certificates": [{"cert": "a.pem", "key": "a.key"}], "client_auth": {"mode": "require"}}
    problems = _problems(_base(tls=tls, proxy_protocol="v3", workers=0))
    assert [p.split(":")[0] for p in problems] == ["tls.client_auth.ca", "workers", "proxy_protocol"]
    assert "must be off, v1 or v2, got 'v3'" in problems[-1]


def test_yaml_off_for_proxy_protocol(tmp_path: Path) -> None:
    """`proxy_protocol: off` unquoted (YAML 1.1 false) means off."""
    raw = yaml.safe_load("proxy_protocol: off\ntls: {client_auth: {mode: off}}")
    merged = _base(proxy_protocol=raw["proxy_protocol"])
    merged["tls"]["client_auth"] = raw["tls"]["client_auth"]
    config = parse_config(merged, tmp_path)
    assert (config.proxy_protocol, config.tls.client_auth.mode) == ("off", "off")
