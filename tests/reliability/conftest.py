"""Fixtures for the reliability suite: a proxy factory that always stops what it started."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ConfigFactory, TLSFiles
from tests.reliability.support import AsyncBackend, Canary, echo, raise_nofile
from tests.support.proxy import ProxyProcess, client_context

# Thousands of sockets in one test process (and in the proxy, which inherits the limit).
NOFILE = raise_nofile()

StartProxy = Callable[..., ProxyProcess]


@pytest.fixture
def start_proxy(tmp_path: Path, proxy_config: ConfigFactory) -> Iterator[StartProxy]:
    """`start_proxy(backend_address, nofile=None, **config overrides)`; stopped by PID at teardown."""
    started: list[ProxyProcess] = []

    def start(backend: str, *, nofile: int | None = None, soft_nofile_only: bool = False, folder: str | None = None, wrapper: Sequence[str] = (), **overrides: Any) -> ProxyProcess:
        where = tmp_path / (folder or f"proxy{len(started)}")
        where.mkdir(exist_ok=True)
        proxy = ProxyProcess(
            where, proxy_config(backend, **overrides), nofile=nofile, soft_nofile_only=soft_nofile_only, wrapper=wrapper
        )
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def echo_server() -> Iterator[AsyncBackend]:
    with AsyncBackend(echo) as backend:
        yield backend


@pytest.fixture
def ctx(tls_files: TLSFiles):  # type: ignore[no-untyped-def]
    return client_context(tls_files.cafile)


@pytest.fixture
def canary_for(ctx):  # type: ignore[no-untyped-def]
    """`canary_for(proxy)`: a verified echo connection held open for the whole test."""
    made: list[Canary] = []

    def make(proxy: ProxyProcess) -> Canary:
        canary = Canary(proxy.host, proxy.port, ctx)
        canary.check()
        made.append(canary)
        return canary

    yield make
    for canary in made:
        canary.close()
