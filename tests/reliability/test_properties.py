"""Property-based tests: whatever bytes or YAML reach the config and PEM loaders, the answer is a
result or a clean FopproxyError (ConfigError / CertificateError), never another exception."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fopproxy.certs import CertificateSource, parse_chain, parse_private_key, validate_certificate
from fopproxy.config import Config, load_config, parse_config
from fopproxy.errors import ConfigError, FopproxyError
from fopproxy.policy import PROFILES, select_suites
from tests.support.pki import CA, _pem_key

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

KEYS = [
    "listen", "backend", "server_name", "tls", "timeouts", "max_connections", "workers", "backlog",
    "logging", "metrics", "profile", "ciphers", "certificates", "reload_interval", "cert", "key",
    "passphrase_file", "handshake", "connect", "idle", "drain", "level", "format", "connections",
]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from([
        "127.0.0.1:8443", "[::1]:0", "0.0.0.0:99999", "unix:", "unix:/run/x.sock", "api.example.test",
        "*.example.test", "card-fop", "card-fop-tls13", "ECDHE-RSA-AES128-GCM-SHA256", "auto", "json",
        "debug", "-1", "1e309", "nan", "", " ", "\x00", "é", "localhost:443",
    ]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10), st.integers()), children, max_size=6),
    ),
    max_leaves=25,
)


def _plausible() -> st.SearchStrategy[dict]:
    """Documents close to a valid config, so the deeper validators are reached too."""
    return st.fixed_dictionaries(
        {
            "listen": SCALARS,
            "backend": SCALARS,
            "server_name": SCALARS,
            "tls": st.one_of(VALUES, st.fixed_dictionaries({
                "certificates": st.one_of(VALUES, st.lists(st.fixed_dictionaries({"cert": SCALARS, "key": SCALARS}), max_size=3)),
            }, optional={"profile": SCALARS, "ciphers": VALUES, "reload_interval": SCALARS})),
        },
        optional={k: VALUES for k in ("timeouts", "max_connections", "workers", "backlog", "logging", "metrics")},
    )


@SETTINGS
@given(raw=st.one_of(VALUES, _plausible()))
def test_parse_config_returns_config_or_config_error(raw: object, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any parsed-YAML shape: a Config, or a ConfigError whose problems are `path: message` lines."""
    try:
        result: object = parse_config(raw, Path("/nonexistent-base"))
    except ConfigError as exc:
        result = exc.problems
    if not isinstance(result, Config):
        assert result and all(isinstance(line, str) and ": " in line for line in result)


YAML_PIECES = st.sampled_from([
    "listen: 127.0.0.1:8443\n", "backend: 127.0.0.1:8080\n", "server_name: api.example.test\n",
    "tls:\n  certificates:\n    - {cert: a.pem, key: a.key}\n", "timeouts: {idle: -1}\n", "workers: auto\n",
    "&a [*a]\n", "!!python/object:os.system x\n", "{", "- - - \n", "\t", "key: 'unterminated\n",
    "? complex\n: key\n", "%YAML 1.1\n---\n", "...\n", "\ufeff", "max_connections: 1e999\n",
])


@SETTINGS
@given(text=st.one_of(st.text(max_size=300), st.lists(YAML_PIECES, max_size=8).map("".join)),
       raw_bytes=st.one_of(st.none(), st.binary(max_size=200)))
def test_load_config_returns_config_or_config_error(text: str, raw_bytes: bytes | None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any file content (text, YAML fragments, raw bytes, not UTF-8): Config or ConfigError."""
    path = tmp_path_factory.mktemp("cfg") / "proxy.yaml"
    # Lone surrogates become bytes that are not UTF-8: also a case the loader must name cleanly.
    path.write_bytes(text.encode("utf-8", "surrogatepass") if raw_bytes is None else raw_bytes)
    try:
        result: object = load_config(path)
    except ConfigError as exc:
        result = exc.problems
    assert isinstance(result, Config) or (isinstance(result, list) and result)


_CA = CA("property CA")
_CERT, _KEY = _CA.issue(["api.example.test"])
_RSA_CERT, _RSA_KEY = _CA.issue(["api.example.test"], "rsa")
from cryptography.hazmat.primitives import serialization  # noqa: E402

CERT_PEM = _CERT.public_bytes(serialization.Encoding.PEM) + _CA.cert_pem
KEY_PEM = _pem_key(_KEY)
RSA_CERT_PEM = _RSA_CERT.public_bytes(serialization.Encoding.PEM)
RSA_KEY_PEM = _pem_key(_RSA_KEY, b"secret")


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with a few byte flips, cuts, insertions or duplications."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "duplicate"]))
        if action == "flip":
            data[where] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[where : where + draw(st.integers(1, 64))]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif action == "truncate":
            del data[where:]
        else:
            data += bytes(data[where:])
    return bytes(data)


PEM_INPUTS = st.one_of(
    st.binary(max_size=400),
    mutated(CERT_PEM), mutated(KEY_PEM), mutated(RSA_CERT_PEM), mutated(RSA_KEY_PEM),
    st.text(alphabet=string.ascii_letters + string.digits + "+/=\n", max_size=300).map(
        lambda body: f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "+/=\n", max_size=300).map(
        lambda body: f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n".encode()
    ),
)


@SETTINGS
@given(data=PEM_INPUTS)
def test_parse_chain_never_raises_anything_else(data: bytes) -> None:
    try:
        chain = parse_chain(data)
    except FopproxyError:
        return
    assert isinstance(chain, list)


@SETTINGS
@given(data=PEM_INPUTS, password=st.one_of(st.none(), st.just(b"secret"), st.binary(max_size=12)))
def test_parse_private_key_never_raises_anything_else(data: bytes, password: bytes | None) -> None:
    try:
        key = parse_private_key(data, password)
    except FopproxyError:
        return
    assert hasattr(key, "public_key")


SELECTIONS = [select_suites(p, ()) for p in PROFILES.values()] + [
    select_suites(PROFILES["card-fop"], ("ECDHE-RSA-AES128-GCM-SHA256",)),
]


@SETTINGS
@given(
    cert=st.one_of(st.just(CERT_PEM), st.just(RSA_CERT_PEM), PEM_INPUTS),
    key=st.one_of(st.just(KEY_PEM), st.just(RSA_KEY_PEM), PEM_INPUTS),
    password=st.one_of(st.none(), st.just(b"secret"), st.binary(max_size=8)),
    server_name=st.one_of(st.just("api.example.test"), st.text(max_size=30), st.sampled_from(["*.example.test", "", ".", "a..b"])),
    selection=st.sampled_from(SELECTIONS),
)
def test_validate_certificate_never_raises_anything_else(cert: bytes, key: bytes, password: bytes | None, server_name: str, selection) -> None:  # type: ignore[no-untyped-def]
    source = CertificateSource(Path("/x/cert.pem"), Path("/x/key.pem"))
    try:
        loaded = validate_certificate(source, cert, key, password, server_name, selection)
    except FopproxyError:
        return
    assert loaded.chain
