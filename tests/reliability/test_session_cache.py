"""The server's TLS 1.2 session-ID cache is bounded: clean closes must not grow memory forever."""

from __future__ import annotations

import contextlib
import ssl

from fopproxy.policy import PROFILES, select_suites
from fopproxy.tls import SESSION_CACHE_SIZE, build_context, limit_session_cache
from tests.conftest import TLSFiles
from tests.support.memtls import handshake_in_memory
from tests.support.proxy import client_context


def _clean_session(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """One full handshake and a close_notify exchange, in memory: OpenSSL caches such sessions."""
    pair = handshake_in_memory(server, client)
    for side, deliver in ((pair.server, pair.to_client), (pair.client, pair.to_server)):
        with contextlib.suppress(ssl.SSLWantReadError):
            side.unwrap()
        deliver()


def test_session_cache_is_bounded(tls_files: TLSFiles) -> None:
    """1.5 x SESSION_CACHE_SIZE clean sessions leave at most SESSION_CACHE_SIZE cached."""
    selection = select_suites(PROFILES["card-fop"], ())
    server = build_context(selection, [(str(tls_files.ecdsa.cert), str(tls_files.ecdsa.key), None)])
    assert limit_session_cache(server) == SESSION_CACHE_SIZE
    client = client_context(tls_files.cafile)
    for _ in range(SESSION_CACHE_SIZE * 3 // 2):
        _clean_session(server, client)
    cached = server.session_stats()["number"]
    print(f"{SESSION_CACHE_SIZE * 3 // 2} clean sessions: {cached} cached (bound {SESSION_CACHE_SIZE})")
    assert SESSION_CACHE_SIZE // 2 < cached <= SESSION_CACHE_SIZE
