"""`mode` and the `http:` section: defaults, the documented example, and precise errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fopproxy.config import HttpConfig, load_config, parse_config
from fopproxy.errors import ConfigError

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


def test_tcp_is_the_default_and_http_defaults_match_the_issue() -> None:
    config = parse_config(_base(), Path("/etc"))
    assert config.mode == "tcp"
    assert config.http == HttpConfig(max_header_bytes=16384, forwarded=True, client_cert_header=True)


def test_http_section_is_read() -> None:
    config = parse_config(
        _base(mode="http", http={"max_header_bytes": 8192, "forwarded": False, "client_cert_header": False}),
        Path("/etc"),
    )
    assert config.mode == "http"
    assert config.http == HttpConfig(8192, False, False)


def test_example_documents_every_http_key() -> None:
    """config/proxy.yaml sets mode and each http key to its default, so users find them."""
    config = load_config(REPO / "config" / "proxy.yaml")
    assert config.mode == "tcp"
    assert config.http == HttpConfig()
    raw = yaml.safe_load((REPO / "config" / "proxy.yaml").read_text())
    assert set(raw["http"]) == {"max_header_bytes", "forwarded", "client_cert_header"}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (_base(mode="https"), "mode: must be 'tcp' or 'http', got 'https'"),
        (_base(http={"max_header_bytes": 100}), "http.max_header_bytes: must be between 1024 and 1048576 bytes, got 100"),
        (_base(http={"max_header_bytes": "16k"}), "http.max_header_bytes: expected a number of bytes, got a string"),
        (_base(http={"forwarded": "yes"}), "http.forwarded: expected true or false, got a string"),
        (_base(http={"client_cert": True}), "http.client_cert: unknown key (allowed here: max_header_bytes, forwarded, client_cert_header)"),
        (_base(http=[1]), "http: expected a mapping, got a list"),
    ],
)
def test_bad_http_settings_are_named(raw: dict[str, Any], problem: str) -> None:
    assert problem in _problems(raw)
