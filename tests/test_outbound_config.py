"""The outbound list in the config: defaults, inheritance, and each error named outbound[i].key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fopproxy.config import TcpAddress, load_config, parse_config
from fopproxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
INBOUND = {
    "listen": "0.0.0.0:8443",
    "backend": "127.0.0.1:8080",
    "server_name": "api.example.com",
    "tls": {"certificates": [{"cert": "a.pem", "key": "a.key"}]},
}


def _entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"listen": "127.0.0.1:9443", "connect": "vgw.googleapis.com:443"}
    entry.update(overrides)
    return entry


def _problems(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as failure:
        parse_config(raw, Path("/etc/fopproxy"))
    return failure.value.problems


def test_outbound_only_config_has_no_inbound_listener() -> None:
    """Defaults: name = listen address, server_name = connect's host, trust mozilla, card-fop."""
    config = parse_config({"outbound": [_entry()]}, Path("/etc/fopproxy"))
    assert config.tls is None
    assert config.listen is None
    assert not config.inbound
    (entry,) = config.outbound
    assert entry.name == "127.0.0.1:9443"
    assert entry.connect == TcpAddress("vgw.googleapis.com", 443)
    assert entry.server_name == "vgw.googleapis.com"
    assert entry.trust is None
    assert entry.selection.profile.name == "card-fop"
    assert entry.client_certificate is None
    assert (entry.timeouts.connect, entry.timeouts.handshake, entry.timeouts.idle) == (5, 10, 300)


def test_inbound_and_outbound_together_and_timeouts_inherit() -> None:
    raw = {
        **INBOUND,
        "timeouts": {"connect": 3, "idle": 60},
        "outbound": [_entry(name="google", trust="ca.pem", timeouts={"idle": 5},
                            client_certificate={"cert": "c.pem", "key": "c.key"})],
    }
    config = parse_config(raw, Path("/etc/fopproxy"))
    assert config.inbound
    (entry,) = config.outbound
    assert (entry.timeouts.connect, entry.timeouts.handshake, entry.timeouts.idle) == (3, 10, 5)
    assert entry.trust == Path("/etc/fopproxy/ca.pem")
    assert entry.client_certificate is not None
    assert entry.client_certificate.key == Path("/etc/fopproxy/c.key")


def test_nothing_to_serve() -> None:
    assert _problems({"outbound": []}) == [
        "outbound: is empty and there is no inbound listener: nothing to serve "
        "(give outbound entries, or listen, backend, server_name and tls)"
    ]


def test_partial_inbound_with_outbound_still_asks_for_the_rest() -> None:
    problems = _problems({"listen": "0.0.0.0:8443", "outbound": [_entry()]})
    assert "backend: is required" in problems
    assert "server_name: is required" in problems


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (_entry(listen="0.0.0.0:9443"), "outbound[0].listen: 0.0.0.0:9443 is not a loopback address"),
        (_entry(listen="10.1.2.3:9443"), "outbound[0].listen: 10.1.2.3:9443 is not a loopback address"),
        (_entry(connect="10.0.0.1:443"), "outbound[0].server_name: is required when connect is an IP"),
        (_entry(server_name="*.googleapis.com"), "outbound[0].server_name: must be the exact hostname"),
        (_entry(profile="modern"), "outbound[0].profile: unknown profile 'modern'"),
        (_entry(ciphers=["AES256-SHA"]), "outbound[0].ciphers: [0] 'AES256-SHA' is not a suite"),
        (_entry(verify=False), "outbound[0].verify: unknown key"),
        (_entry(timeouts={"drain": 1}), "outbound[0].timeouts.drain: unknown key"),
        (_entry(timeouts={"idle": 0}), "outbound[0].timeouts.idle: must be > 0"),
        (_entry(client_certificate={"cert": "c.pem"}), "outbound[0].client_certificate.key: is required"),
        (_entry(name="goo gle"), "outbound[0].name: 'goo gle': use at most 64"),
        (_entry(connect="vgw.googleapis.com"), "outbound[0].connect: 'vgw.googleapis.com' is not host:port"),
        (_entry(allow_remote="yes"), "outbound[0].allow_remote: expected true or false"),
    ],
)
def test_each_bad_key_is_named(entry: dict[str, Any], problem: str) -> None:
    problems = _problems({"outbound": [entry]})
    assert any(p.startswith(problem) for p in problems), problems


def test_remote_listen_allowed_when_asked() -> None:
    config = parse_config({"outbound": [_entry(listen="0.0.0.0:9443", allow_remote=True)]}, Path("/"))
    assert config.outbound[0].allow_remote


def test_addresses_and_names_are_unique() -> None:
    raw = {**INBOUND, "metrics": {"listen": "127.0.0.1:9100"},
           "outbound": [_entry(name="a"), _entry(name="a"), _entry(listen="127.0.0.1:9100")]}
    problems = _problems(raw)
    assert "outbound[1].listen: is the same address as outbound[0].listen (127.0.0.1:9443)" in problems
    assert "outbound[1].name: 'a' is already the name of outbound[0]" in problems
    assert "outbound[2].listen: is the same address as metrics.listen (127.0.0.1:9100)" in problems


def test_example_config_documents_outbound() -> None:
    """config/proxy.yaml carries a working outbound example next to the inbound listener."""
    config = load_config(REPO / "config" / "proxy.yaml")
    (entry,) = config.outbound
    assert entry.name == "google"
    assert entry.listen == TcpAddress("127.0.0.1", 9443)
    assert entry.server_name == "vgw.googleapis.com"
    assert entry.trust is None


OUTBOUND_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-5, max_value=70000), st.floats(allow_nan=True),
    st.text(max_size=30), st.lists(st.text(max_size=10), max_size=3),
    st.dictionaries(st.sampled_from(["cert", "key", "passphrase_file", "idle", "connect", "x"]),
                    st.one_of(st.text(max_size=10), st.integers(), st.none()), max_size=3),
    st.sampled_from(["127.0.0.1:9443", "[::1]:9443", "0.0.0.0:1", "vgw.googleapis.com:443",
                     "10.0.0.1:443", "mozilla", "card-fop-tls13", "ECDHE-RSA-AES128-SHA256",
                     "*.example.com", "localhost:1"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(
    ["name", "listen", "connect", "server_name", "trust", "profile", "ciphers",
     "client_certificate", "allow_remote", "timeouts", "other"]), OUTBOUND_VALUES, max_size=8),
    max_size=3))
def test_any_outbound_list_gives_a_config_or_a_config_error(entries: list[dict[str, Any]]) -> None:
    """Whatever the outbound list holds, parsing returns a Config or raises ConfigError."""
    problems: list[str] = []
    try:
        config = parse_config({"outbound": entries}, Path("/etc/fopproxy"))
    except ConfigError as exc:
        problems = exc.problems
    else:
        assert len(config.outbound) == len(entries) > 0
        return
    assert problems
    assert all(":" in problem for problem in problems)
