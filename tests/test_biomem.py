"""native.BioReleaser: freeing an empty memory BIO's buffer, checked on real OpenSSL objects."""

from __future__ import annotations

import os
import ssl

import pytest

from fopproxy import native
from fopproxy.native import BioReleaser, bio_releaser
from tests.conftest import TLSFiles
from tests.support.memtls import handshake_in_memory


@pytest.fixture
def releaser() -> BioReleaser:
    found = bio_releaser()
    # CPython 3.11+ on OpenSSL 3 (what we ship on): the layout check must pass, or idle
    # connections would silently keep their buffers.
    assert found is not None
    return found


def test_release_frees_an_empty_bio_and_refuses_one_holding_data(releaser: BioReleaser) -> None:
    bio = ssl.MemoryBIO()
    bio.write(b"x" * 4096)
    grown = releaser.allocated(bio)
    assert grown >= 4096
    assert releaser.release(bio) is False  # data waiting: untouched
    assert releaser.allocated(bio) == grown
    assert bio.read() == b"x" * 4096
    assert releaser.release(bio) is True
    assert releaser.allocated(bio) == 0
    bio.write(b"after")
    assert bio.read() == b"after"


def test_tls_session_survives_releases_between_records(
    releaser: BioReleaser, tls_files: TLSFiles
) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_files.ecdsa.cert, tls_files.ecdsa.key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(tls_files.cafile)
    pair = handshake_in_memory(server_ctx, client_ctx)
    server, client, bios = pair.server, pair.client, pair.bios
    assert server.version() and client.version()
    for _ in range(3):
        payload = os.urandom(48 * 1024)
        sent = 0
        while sent < len(payload):
            sent += client.write(payload[sent:])
            pair.to_server()
        received = b""
        while len(received) < len(payload):
            received += server.read(65536)
        assert received == payload
        answer = os.urandom(20 * 1024)
        server.write(answer)
        pair.to_client()
        got = b""
        while len(got) < len(answer):
            got += client.read(65536)
        assert got == answer
        assert all(bio.pending == 0 for bio in bios)
        assert all(releaser.release(bio) for bio in bios)
        assert all(releaser.allocated(bio) == 0 for bio in bios)


def test_no_libcrypto_in_reach_means_no_releaser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native.binding, "loaded_library", lambda fragment: None)
    native.bio_releaser.cache_clear()
    try:
        assert native.bio_releaser() is None
    finally:
        monkeypatch.undo()
        native.bio_releaser.cache_clear()
