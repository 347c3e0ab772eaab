"""Fixtures shared by unit and integration tests: a test PKI, backends, a proxy config factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import ThreadedBackend, echo_handler, free_port
from tests.support.pki import CA, Pair

SERVER_NAME = "api.example.test"


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA()


class TLSFiles:
    """An ECDSA and an RSA chain for SERVER_NAME, plus the CA file clients trust."""

    def __init__(self, folder: Path, ca: CA) -> None:
        self.folder = folder
        self.ca = ca
        folder.mkdir(parents=True, exist_ok=True)
        self.cafile = folder / "ca.pem"
        self.cafile.write_bytes(ca.cert_pem)
        self.ecdsa: Pair = ca.write(folder, "ecdsa", [SERVER_NAME], "ecdsa")
        self.rsa: Pair = ca.write(folder, "rsa", [SERVER_NAME], "rsa")

    def entries(self) -> list[dict[str, str]]:
        return [
            {"cert": str(self.ecdsa.cert), "key": str(self.ecdsa.key)},
            {"cert": str(self.rsa.cert), "key": str(self.rsa.key)},
        ]


@pytest.fixture
def tls_files(tmp_path: Path, ca: CA) -> TLSFiles:
    return TLSFiles(tmp_path / "tls", ca)


@pytest.fixture
def echo_backend() -> Iterator[ThreadedBackend]:
    with ThreadedBackend(echo_handler) as backend:
        yield backend


ConfigFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def proxy_config(tls_files: TLSFiles) -> ConfigFactory:
    """A valid config dict on a free loopback port; keyword arguments override top-level keys."""

    def make(backend: str, **overrides: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "listen": f"127.0.0.1:{free_port()}",
            "backend": backend,
            "server_name": SERVER_NAME,
            "tls": {"certificates": tls_files.entries()},
            "timeouts": {"handshake": 5, "connect": 2, "idle": 60, "drain": 10},
            "logging": {"level": "info"},
        }
        config.update(overrides)
        return config

    return make
